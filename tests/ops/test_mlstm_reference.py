"""float64 forward parity: recurrent (ground truth) == chunkwise == parallel, outputs and states."""

import pytest
import torch
from ops_testing import mlstm_inputs, mlstm_state, rel_err

from swax_megatron.ops.mlstm import mlstm_chunkwise, mlstm_parallel, mlstm_recurrent

TOL = 1e-10
SHAPES = [(2, 3, 16, 24), (1, 2, 32, 32)]  # (B, H, Dqk, Dv): Dqk != Dv and equal


@pytest.mark.parametrize("S", [1, 7, 63, 64, 65, 200])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}H{}qk{}v{}".format(*s))
def test_recurrent_chunkwise_parallel_agree(S, shape):
    B, H, Dqk, Dv = shape
    q, k, v, i, f = mlstm_inputs(B, H, S, Dqk, Dv, seed=S)
    h_r, (C_r, n_r, m_r) = mlstm_recurrent(q, k, v, i, f)
    assert rel_err(mlstm_parallel(q, k, v, i, f), h_r) < TOL
    for L in (1, 16, 64, 128):
        for grad in ("stopgrad", "exact"):
            h, (C, n, m) = mlstm_chunkwise(q, k, v, i, f, chunk_size=L, grad=grad)
            assert h.shape == (B, H, S, Dv) and C.shape == (B, H, Dqk, Dv)
            assert n.shape == (B, H, Dqk) and m.shape == (B, H)
            errs = [rel_err(h, h_r), rel_err(C, C_r), rel_err(n, n_r), rel_err(m, m_r)]
            assert max(errs) < TOL, (L, grad, errs)


@pytest.mark.parametrize("S,L", [(65, 16), (200, 64), (9, 4)])
def test_chunkwise_with_initial_state(S, L):
    q, k, v, i, f = mlstm_inputs(2, 2, S, 8, 12, seed=3)
    state = mlstm_state(2, 2, 8, 12)
    h_r, s_r = mlstm_recurrent(q, k, v, i, f, initial_state=state)
    h, s = mlstm_chunkwise(q, k, v, i, f, chunk_size=L, initial_state=state)
    assert rel_err(h, h_r) < TOL
    assert max(rel_err(a, b) for a, b in zip(s, s_r)) < TOL


def test_eps_matters_and_is_honoured():
    # eps enters the normaliser: a large eps must change h the same way in every path.
    q, k, v, i, f = mlstm_inputs(1, 2, 40, 8, 8, seed=4)
    h_r, _ = mlstm_recurrent(q, k, v, i, f, eps=0.5)
    h_c, _ = mlstm_chunkwise(q, k, v, i, f, chunk_size=16, eps=0.5)
    assert rel_err(h_c, h_r) < TOL
    assert rel_err(mlstm_parallel(q, k, v, i, f, eps=0.5), h_r) < TOL
    assert rel_err(mlstm_recurrent(q, k, v, i, f)[0], h_r) > 1e-3


def test_recurrent_matches_unstabilised_definition():
    # Independent check of the ground truth: the plain (unstabilised) cell of the xLSTM paper (arXiv 2405.04517, eq. 19-27)
    # with eps = 0, on short sequences where exp() does not overflow.
    q, k, v, i, f = mlstm_inputs(1, 2, 12, 4, 5, seed=5)
    h_r, (C_r, n_r, m_r) = mlstm_recurrent(q, k, v, i, f, eps=0.0)
    C = torch.zeros(1, 2, 4, 5, dtype=torch.float64)
    n = torch.zeros(1, 2, 4, dtype=torch.float64)
    for t in range(12):
        fg, ig = torch.sigmoid(f[:, :, t]), torch.exp(i[:, :, t])
        C = fg[..., None, None] * C + ig[..., None, None] * k[:, :, t, :, None] * v[:, :, t, None, :]
        n = fg[..., None] * n + ig[..., None] * k[:, :, t]
        qs = q[:, :, t] / 2.0
        h = torch.einsum("bhd,bhde->bhe", qs, C) / (n * qs).sum(-1).abs().clamp_min(1.0)[..., None]
        assert rel_err(h_r[:, :, t], h) < 1e-12
    assert rel_err(C_r * torch.exp(m_r)[..., None, None], C) < 1e-12
    assert rel_err(n_r * torch.exp(m_r)[..., None], n) < 1e-12
