"""Dtype policy (fp16/bf16/fp32 computed in fp32, float64 kept; h in the input dtype, states in the
compute dtype), fp32 accuracy against the float64 reference, and clear errors on bad input."""

import pytest
import torch
from ops_testing import grads, mlstm_inputs, mlstm_state, rel_err

from swax_megatron.ops.mlstm import mlstm_chunkwise, mlstm_parallel, mlstm_recurrent, mlstm_step


@pytest.mark.parametrize("grad", ["stopgrad", "exact"])
def test_fp32_close_to_float64(grad):
    x64 = mlstm_inputs(2, 2, 150, 16, 24, seed=41, requires_grad=True)
    x32 = [t.detach().float().requires_grad_() for t in x64]
    h64, s64 = mlstm_chunkwise(*x64, chunk_size=64, grad=grad)
    h32, s32 = mlstm_chunkwise(*x32, chunk_size=64, grad=grad)
    assert h32.dtype == torch.float32 and all(t.dtype == torch.float32 for t in s32)
    assert rel_err(h32, h64) < 1e-5
    assert max(rel_err(a, b) for a, b in zip(s32, s64)) < 1e-5
    for name, a, b in zip("qkvif", grads([h32], x32), grads([h64], x64)):
        assert rel_err(a, b) < 1e-4, name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_compute_in_fp32(dtype):
    x = mlstm_inputs(1, 2, 70, 8, 8, seed=42, dtype=dtype, requires_grad=True)
    h, (C, n, m) = mlstm_chunkwise(*x, chunk_size=32)
    assert h.dtype == dtype and C.dtype == n.dtype == m.dtype == torch.float32
    # Same as running the fp32 op on the (already rounded) inputs, then rounding h once.
    h32, s32 = mlstm_chunkwise(*[t.detach().float() for t in x], chunk_size=32)
    assert torch.equal(h, h32.to(dtype))
    assert torch.equal(C, s32[0])
    for t, g in zip(x, grads([h], x)):
        assert g.dtype == dtype and torch.isfinite(g).all()
    hr, sr = mlstm_recurrent(*x)
    assert hr.dtype == dtype and sr[0].dtype == torch.float32
    assert mlstm_parallel(*x).dtype == dtype
    hs, ss = mlstm_step(*[t[:, :, 0] for t in x], None)
    assert hs.dtype == dtype and ss[0].dtype == torch.float32


def test_float64_stays_float64():
    x = mlstm_inputs(1, 1, 9, 4, 4, seed=43)
    h, s = mlstm_chunkwise(*x, chunk_size=4, initial_state=mlstm_state(1, 1, 4, 4, dtype=torch.float32))
    assert h.dtype == torch.float64 and all(t.dtype == torch.float64 for t in s)


def _bad(**over):
    q, k, v, i, f = mlstm_inputs(2, 3, 10, 4, 6)
    args = dict(q=q, k=k, v=v, i=i, f=f)
    args.update(over)
    return args


@pytest.mark.parametrize("fn", [mlstm_recurrent, mlstm_chunkwise, mlstm_parallel])
@pytest.mark.parametrize("over,match", [
    (dict(q=torch.zeros(2, 3, 10)), "q must be"),
    (dict(k=torch.zeros(2, 3, 10, 5)), "k must have the shape of q"),
    (dict(v=torch.zeros(2, 3, 9, 6)), "v must be"),
    (dict(i=torch.zeros(2, 3, 10, 1)), "i must be gate pre-activations"),
    (dict(f=torch.zeros(2, 3, 11)), "f must be gate pre-activations"),
    (dict(q=torch.zeros(2, 3, 0, 4), k=torch.zeros(2, 3, 0, 4), v=torch.zeros(2, 3, 0, 6),
          i=torch.zeros(2, 3, 0), f=torch.zeros(2, 3, 0)), "empty dimension"),
])
def test_bad_shapes(fn, over, match):
    with pytest.raises(ValueError, match=match):
        fn(**_bad(**over))


def test_bad_dtype_options_and_state():
    with pytest.raises(TypeError, match="floating-point"):
        mlstm_chunkwise(**_bad(q=torch.zeros(2, 3, 10, 4, dtype=torch.long)))
    with pytest.raises(ValueError, match="grad must be"):
        mlstm_chunkwise(**_bad(), grad="approx")
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        mlstm_chunkwise(**_bad(), chunk_size=0)
    with pytest.raises(ValueError, match="eps must be"):
        mlstm_recurrent(**_bad(), eps=-1.0)
    with pytest.raises(ValueError, match=r"initial_state.C must have shape \[2, 3, 4, 6\]"):
        mlstm_chunkwise(**_bad(), initial_state=mlstm_state(2, 3, 4, 5))
    with pytest.raises(TypeError, match="tuple \\(C, n, m\\)"):
        mlstm_chunkwise(**_bad(), initial_state=torch.zeros(2, 3, 4, 6))
    q, k, v, i, f = (t[:, :, 0] for t in mlstm_inputs(2, 3, 1, 4, 6))
    with pytest.raises(ValueError, match="one token"):
        mlstm_step(q[:, :, None], k, v, i, f, None)
    with pytest.raises(ValueError, match=r"state.n must have shape \[2, 3, 4\]"):
        mlstm_step(q, k, v, i, f, (torch.zeros(2, 3, 4, 6), torch.zeros(2, 3, 5), torch.zeros(2, 3)))


def test_non_contiguous_inputs():
    # Layers hand over permuted views ([b, s, h, d] -> [b, h, s, d]).
    q, k, v, i, f = mlstm_inputs(2, 3, 70, 8, 8, seed=44)
    perm = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v)]
    gates = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (i, f)]
    assert not perm[0].is_contiguous()
    h_ref, s_ref = mlstm_recurrent(q, k, v, i, f)
    for grad in ("stopgrad", "exact"):
        h, s = mlstm_chunkwise(*perm, *gates, chunk_size=32, grad=grad)
        assert rel_err(h, h_ref) < 1e-10 and max(rel_err(a, b) for a, b in zip(s, s_ref)) < 1e-10
