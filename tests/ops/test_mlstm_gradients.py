"""Gradients of the mLSTM paths, float64.

Conventions:
- grad="exact": plain autograd; reference = autograd of mlstm_recurrent (and of mlstm_parallel).
- grad="stopgrad": the normaliser max(|n.q|, exp(-m)) + eps and every stabiliser m are constants;
  reference = autograd of mlstm_parallel / mlstm_recurrent with those detached, and gradcheck
  against finite differences of the same cell with m and the normaliser frozen at the input.
"""

import pytest
import torch
import torch.nn.functional as F
from ops_testing import grads, mlstm_inputs, mlstm_state, rel_err

from swax_megatron.ops.mlstm import mlstm_chunkwise, mlstm_parallel, mlstm_recurrent, mlstm_step

TOL = 1e-10


@pytest.mark.parametrize("S,L", [(7, 4), (64, 16), (65, 64), (200, 64)])
def test_stopgrad_equals_parallel_with_n_and_m_detached(S, L):
    x = mlstm_inputs(2, 2, S, 8, 12, seed=S, requires_grad=True)
    ref = grads([mlstm_parallel(*x, grad="stopgrad")], x)
    got = grads([mlstm_chunkwise(*x, chunk_size=L)[0]], x)
    for name, a, b in zip("qkvif", got, ref):
        assert rel_err(a, b) < TOL, name


@pytest.mark.parametrize("S,L", [(7, 4), (65, 16), (200, 64)])
def test_exact_equals_autograd_of_recurrent_and_parallel(S, L):
    x = mlstm_inputs(2, 2, S, 8, 12, seed=S, requires_grad=True)
    ref = grads([mlstm_recurrent(*x)[0]], x)
    par = grads([mlstm_parallel(*x)], x)
    got = grads([mlstm_chunkwise(*x, chunk_size=L, grad="exact")[0]], x)
    for name, a, b, c in zip("qkvif", got, ref, par):
        assert rel_err(a, b) < TOL, name
        assert rel_err(c, b) < TOL, name


def test_the_two_conventions_really_differ():
    # dv is identical, dq/dk/di/df are not (O(1) apart): the modes are not silently the same.
    x = mlstm_inputs(1, 2, 40, 8, 8, seed=7, requires_grad=True)
    sg = grads([mlstm_chunkwise(*x, chunk_size=16)[0]], x)
    ex = grads([mlstm_chunkwise(*x, chunk_size=16, grad="exact")[0]], x)
    assert rel_err(sg[2], ex[2]) < TOL
    for j in (0, 1, 3, 4):
        assert rel_err(sg[j], ex[j]) > 1e-2


@pytest.mark.parametrize("grad", ["stopgrad", "exact"])
@pytest.mark.parametrize("S,L", [(37, 8), (64, 64)])
def test_state_gradients_match_recurrent(grad, S, L):
    # Initial state in, final state out, loss on h, C and n: every input gets the recurrent's gradient.
    x = mlstm_inputs(2, 2, S, 6, 10, seed=11, requires_grad=True)
    s0 = mlstm_state(2, 2, 6, 10, requires_grad=True)
    h_r, (C_r, n_r, _) = mlstm_recurrent(*x, initial_state=s0, grad=grad)
    h, (C, n, _) = mlstm_chunkwise(*x, chunk_size=L, initial_state=s0, grad=grad)
    # the autograd-recording forwards (Function / plain autograd) give the same values
    assert max(rel_err(h, h_r), rel_err(C, C_r), rel_err(n, n_r)) < TOL
    ref = grads([h_r, C_r, n_r], [*x, *s0])
    got = grads([h, C, n], [*x, *s0])
    for name, a, b in zip(["q", "k", "v", "i", "f", "C0", "n0", "m0"], got, ref):
        assert rel_err(a, b) < TOL, name
    assert got[7].abs().max() > 0  # m0 is differentiable in both modes (see chunk.py)


def _frozen_cell(q, k, v, i, f, C0, n0, m0, ms, norms):
    """The stabilised step loop with every m_t and normaliser given as constants (test-side code)."""
    C, n, m_prev, hs = C0, n0, m0, []
    qs = q * q.shape[-1] ** -0.5
    for t in range(q.shape[2]):
        logf = F.logsigmoid(f[:, :, t])
        fs = torch.exp(logf + m_prev - ms[..., t])
        ig = torch.exp(i[:, :, t] - ms[..., t])
        C = fs[..., None, None] * C + ig[..., None, None] * k[:, :, t, :, None] * v[:, :, t, None, :]
        n = fs[..., None] * n + ig[..., None] * k[:, :, t]
        hs.append(torch.einsum("bhd,bhde->bhe", qs[:, :, t], C) / norms[..., t, None])
        m_prev = ms[..., t]
    return torch.stack(hs, 2), C, n


def _frozen_constants(q, k, v, i, f, C0, n0, m0, eps):
    with torch.no_grad():
        C, n, m, ms, norms = C0, n0, m0, [], []
        for t in range(q.shape[2]):
            h, (C, n, m) = mlstm_step(q[:, :, t], k[:, :, t], v[:, :, t], i[:, :, t], f[:, :, t], (C, n, m), eps)
            qs = q[:, :, t] * q.shape[-1] ** -0.5
            ms.append(m)
            norms.append(torch.maximum((n * qs).sum(-1).abs(), torch.exp(-m)) + eps)
    return torch.stack(ms, -1), torch.stack(norms, -1)


def test_gradcheck_stopgrad_against_frozen_normaliser():
    # Value = the frozen cell (so finite differences see m and the normaliser as constants),
    # analytic gradient = the chunkwise stopgrad backward.
    x = mlstm_inputs(1, 2, 7, 3, 4, seed=13, requires_grad=True)
    s0 = mlstm_state(1, 2, 3, 4, requires_grad=True)
    ms, norms = _frozen_constants(*x, *s0, eps=1e-6)

    def fn(q, k, v, i, f, C0, n0, m0):
        h, (C, n, _) = mlstm_chunkwise(q, k, v, i, f, chunk_size=3, initial_state=(C0, n0, m0))
        hz, Cz, nz = _frozen_cell(q, k, v, i, f, C0, n0, m0, ms, norms)
        # value of the frozen cell, gradient of the op (the two agree in value: checked below)
        return tuple(z.detach() + (o - o.detach()) for z, o in ((hz, h), (Cz, C), (nz, n)))

    h, (C, n, _) = mlstm_chunkwise(*x, chunk_size=3, initial_state=s0)
    hz, Cz, nz = _frozen_cell(*x, *s0, ms, norms)
    assert max(rel_err(h, hz), rel_err(C, Cz), rel_err(n, nz)) < TOL
    assert torch.autograd.gradcheck(fn, (*x, *s0), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradcheck_exact():
    x = mlstm_inputs(1, 2, 7, 3, 4, seed=17, requires_grad=True)
    s0 = mlstm_state(1, 2, 3, 4, requires_grad=True)

    def fn(q, k, v, i, f, C0, n0, m0):
        h, (C, n, m) = mlstm_chunkwise(q, k, v, i, f, chunk_size=3, initial_state=(C0, n0, m0), grad="exact")
        return h, C, n, m

    assert torch.autograd.gradcheck(fn, (*x, *s0), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradcheck_step():
    x = [t[:, :, 0] for t in mlstm_inputs(1, 2, 1, 3, 4, seed=19)]
    x = [t.clone().requires_grad_() for t in x]
    s0 = mlstm_state(1, 2, 3, 4, requires_grad=True)

    def fn(*a):
        h, state = mlstm_step(*a[:5], a[5:])
        return (h, *state)

    assert torch.autograd.gradcheck(fn, (*x, *s0), eps=1e-6, atol=1e-7)
