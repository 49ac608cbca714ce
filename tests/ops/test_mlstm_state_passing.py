"""State passing, float64: one pass == chunked prefill with the carried state == prefill + steps,
for outputs, final states and (training across segments) gradients."""

import pytest
import torch
from ops_testing import grads, mlstm_inputs, rel_err

from swax_megatron.ops.mlstm import mlstm_chunkwise, mlstm_recurrent, mlstm_step

TOL = 1e-10
S = 200


def _segments(x, cuts):
    bounds = [0, *cuts, S]
    return [[t[:, :, a:b] for t in x] for a, b in zip(bounds[:-1], bounds[1:])]


@pytest.mark.parametrize("cuts,chunks", [((64, 130), (64, 16, 32)), ((1, 2, 99), (8, 1, 64, 64))])
def test_one_pass_equals_chunked_prefill(cuts, chunks):
    x = mlstm_inputs(2, 2, S, 8, 12, seed=21)
    h_ref, s_ref = mlstm_chunkwise(*x, chunk_size=64)
    state, hs = None, []
    for seg, L in zip(_segments(x, cuts), chunks):
        h, state = mlstm_chunkwise(*seg, chunk_size=L, initial_state=state)
        hs.append(h)
    assert rel_err(torch.cat(hs, 2), h_ref) < TOL
    assert max(rel_err(a, b) for a, b in zip(state, s_ref)) < TOL


def test_prefill_then_steps_equals_one_pass():
    x = mlstm_inputs(2, 2, S, 8, 12, seed=22)
    h_ref, s_ref = mlstm_recurrent(*x)
    P = 150
    h, state = mlstm_chunkwise(*[t[:, :, :P] for t in x], chunk_size=64)
    hs = [h]
    for t in range(P, S):
        h_t, state = mlstm_step(*[a[:, :, t] for a in x], state)
        hs.append(h_t[:, :, None])
    assert rel_err(torch.cat(hs, 2), h_ref) < TOL
    assert max(rel_err(a, b) for a, b in zip(state, s_ref)) < TOL


def test_step_from_none_is_the_zero_state():
    x = mlstm_inputs(1, 2, 1, 4, 4, seed=23)
    h, st = mlstm_step(*[t[:, :, 0] for t in x], None)
    h_r, st_r = mlstm_recurrent(*x)
    assert rel_err(h, h_r[:, :, 0]) < TOL
    assert max(rel_err(a, b) for a, b in zip(st, st_r)) < TOL


@pytest.mark.parametrize("grad", ["stopgrad", "exact"])
def test_gradients_through_carried_state_equal_one_pass(grad):
    # Training with the state carried across segments (truncation-free): same gradients as one pass.
    x = mlstm_inputs(2, 2, S, 8, 12, seed=24, requires_grad=True)
    h_ref, (C_ref, n_ref, _) = mlstm_chunkwise(*x, chunk_size=32, grad=grad)
    ref = grads([h_ref, C_ref, n_ref], x)
    state, hs = None, []
    for seg in _segments(x, (70, 128)):
        h, state = mlstm_chunkwise(*seg, chunk_size=32, initial_state=state, grad=grad)
        hs.append(h)
    got = grads([torch.cat(hs, 2), state[0], state[1]], x)
    for name, a, b in zip("qkvif", got, ref):
        assert rel_err(a, b) < TOL, name
