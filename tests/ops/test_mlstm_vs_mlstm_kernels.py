"""Optional cross-check against NX-AI's mlstm_kernels pure-PyTorch kernels (the `bench` extra;
skipped when absent). Only called, never copied: its licence is the NXAI Community License.

float64 tensors run through their native kernels (no CUDA autocast is active on CPU), so the
comparison is tight: same cell, same zero initial state (m = 0), same stopgrad backward."""

import pytest
import torch
from ops_testing import grads, mlstm_inputs, mlstm_state, rel_err

from swax_megatron.ops.mlstm import mlstm_chunkwise, mlstm_step

mk = pytest.importorskip("mlstm_kernels.torch")

TOL = 1e-10


@pytest.mark.parametrize("with_state", [False, True])
def test_chunkwise_native_custbw_matches_stopgrad(with_state):
    kernel = mk.get_mlstm_kernel("chunkwise--native_custbw")
    x = mlstm_inputs(1, 2, 128, 16, 32, seed=51, requires_grad=True)
    s0 = mlstm_state(1, 2, 16, 32, requires_grad=True) if with_state else None
    kw = dict(c_initial=s0[0], n_initial=s0[1], m_initial=s0[2][..., None]) if with_state else {}
    h_ref, (C_ref, n_ref, m_ref) = kernel(*x, chunk_size=64, return_last_states=True, **kw)
    h, (C, n, m) = mlstm_chunkwise(*x, chunk_size=64, initial_state=s0)
    assert rel_err(h, h_ref) < TOL
    assert max(rel_err(C, C_ref), rel_err(n, n_ref.squeeze(-1)), rel_err(m, m_ref.reshape(m.shape))) < TOL
    inputs = x + (list(s0[:2]) if with_state else [])
    for name, a, b in zip(["q", "k", "v", "i", "f", "C0", "n0"], grads([h], inputs), grads([h_ref], inputs)):
        assert rel_err(a, b) < TOL, name


def test_step_matches_native_step():
    step = mk.get_mlstm_step_kernel("native")
    x = [t[:, :, 0] for t in mlstm_inputs(2, 2, 1, 8, 8, seed=52)]
    C0, n0, m0 = mlstm_state(2, 2, 8, 8)
    h_ref, (C_ref, n_ref, m_ref) = step(q=x[0], k=x[1], v=x[2], i=x[3][..., None], f=x[4][..., None],
                                        c=C0, n=n0, m=m0[..., None], dtype_state=torch.float64)
    h, (C, n, m) = mlstm_step(*x, (C0, n0, m0))
    assert rel_err(h, h_ref) < TOL and rel_err(C, C_ref) < TOL
    assert rel_err(n, n_ref.reshape(n.shape)) < TOL and rel_err(m, m_ref.reshape(m.shape)) < TOL
