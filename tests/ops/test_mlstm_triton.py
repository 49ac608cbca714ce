"""Triton chunkwise mLSTM under TRITON_INTERPRET=1 (CPU) against the float64 references.

Run in its own process, because the interpreter setting is read when the kernels are imported:
    TRITON_INTERPRET=1 pytest -m triton_interpret tests/ops/test_mlstm_triton.py

Reference: swax_megatron.ops.mlstm.mlstm_recurrent(..., grad="stopgrad") in float64, i.e. the step loop with the
normaliser and every stabiliser detached: the stop-gradient convention the Triton backward implements
(normaliser and stabiliser constant in backward). The loss sums h, the final C and the final n against random weights, so the
state-gradient paths are exercised too.

Error measure: rel(a, b) = max|a - b| / max|b| over the whole tensor (b the reference; max|a - b| when b == 0).
"""

import os

import pytest
import torch

INTERP = os.environ.get("TRITON_INTERPRET") == "1"

pytestmark = [
    pytest.mark.triton_interpret,
    pytest.mark.skipif(not INTERP, reason="needs TRITON_INTERPRET=1 set before triton is imported: run "
                                          "`TRITON_INTERPRET=1 pytest -m triton_interpret` in its own process"),
]

if INTERP:
    pytest.importorskip("triton", reason="triton not installed (pip install -e '.[triton]')")
    from swax_megatron.ops.mlstm import mlstm_recurrent
    from swax_megatron.ops.mlstm.triton import mlstm_chunkwise_triton

F64 = torch.float64
TOL_FP32 = 1e-5


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().to(F64), b.detach().to(F64)
    scale = b.abs().max().item()
    err = (a - b).abs().max().item()
    return err / scale if scale > 0 else err


def make_inputs(B, H, S, DK, DV, seed=0, gates="normal", init=False):
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g, dtype=F64)  # noqa: E731
    q, k, v = r(B, H, S, DK), r(B, H, S, DK), r(B, H, S, DV)
    if gates == "normal":  # forget gates mostly near 1 so that state crosses chunks with real weight
        i, f = r(B, H, S), 3.0 + 2.0 * r(B, H, S)
    elif gates == "saturated":  # soft-capped extremes, random signs
        i = 15.0 * torch.sign(r(B, H, S))
        f = 15.0 * torch.sign(r(B, H, S))
    elif gates == "input_bias":  # the xLSTM-7B input-gate initialisation
        i, f = r(B, H, S) - 10.0, 3.0 + 2.0 * r(B, H, S)
    elif gates == "forget_zero":
        i, f = 3.0 * r(B, H, S), torch.full((B, H, S), -15.0, dtype=F64)
    elif gates == "forget_one":
        i, f = 3.0 * r(B, H, S), torch.full((B, H, S), 15.0, dtype=F64)
    else:
        raise ValueError(gates)
    state = None
    if init:
        state = (r(B, H, DK, DV), r(B, H, DK).abs(), r(B, H))
    return (q, k, v, i, f), state


def run_both(inputs, state, dtype=torch.float32, chunk_size=64, state_loss=True, **blocks):
    """(reference, triton) dicts of h, C, n, m and the gradients of q, k, v, i, f (and C0, n0, m0 with a state).

    The reference sees the inputs rounded to `dtype`, so only the kernel's arithmetic is measured."""
    g = torch.Generator().manual_seed(1234)
    base = [t.to(dtype).to(F64) for t in inputs]
    B, H, S, DK = base[0].shape
    DV = base[2].shape[-1]
    dh = torch.randn(B, H, S, DV, generator=g, dtype=F64)
    dC = torch.randn(B, H, DK, DV, generator=g, dtype=F64)
    dn = torch.randn(B, H, DK, generator=g, dtype=F64)
    out = []
    for fn, dt in ((None, F64), (mlstm_chunkwise_triton, dtype)):
        leaves = [t.to(dt).requires_grad_() for t in base]
        st, st_leaves = None, []
        if state is not None:
            sdt = F64 if dt == F64 else torch.float32
            st_leaves = [t.to(sdt).requires_grad_() for t in state]
            st = tuple(st_leaves)
        if fn is None:
            h, (C, n, m) = mlstm_recurrent(*leaves, initial_state=st, grad="stopgrad")
        else:
            h, (C, n, m) = fn(*leaves, chunk_size=chunk_size, initial_state=st, **blocks)
        loss = (h.to(F64) * dh).sum()
        if state_loss:
            loss = loss + (C.to(F64) * dC).sum() + (n.to(F64) * dn).sum()
        grads = torch.autograd.grad(loss, leaves + st_leaves)
        res = dict(h=h, C=C, n=n, m=m)
        res.update({f"d{name}": gr for name, gr in zip(["q", "k", "v", "i", "f", "C0", "n0", "m0"], grads)})
        out.append(res)
    return out


def check(ref, tri, tol, skip=()):
    errs = {key: rel(tri[key], ref[key]) for key in ref if key not in skip}
    for key, val in tri.items():
        assert torch.isfinite(val).all(), f"{key} has NaN/Inf"
    bad = {key: e for key, e in errs.items() if not e <= tol}
    assert not bad, f"max relative errors above {tol}: {bad} (all: { {k: f'{e:.1e}' for k, e in errs.items()} })"
    return errs


# (B, H, S, Dqk, Dv, chunk_size, block overrides): every S in {16, 64, 128, 256}, head dims {16, 32, 64}
# and 64 x 128, chunks 16..256 (chunks above 64 use the second tiling level), and forced small tiles.
SHAPES = [
    (1, 2, 16, 16, 16, 16, {}),
    (2, 2, 64, 32, 32, 16, {}),
    (1, 4, 128, 64, 64, 64, {}),
    (1, 2, 256, 16, 16, 128, {}),
    (1, 2, 256, 64, 128, 256, {}),
    (1, 2, 128, 32, 64, 64, dict(block_l=16, block_k=16, block_v=32)),
    (1, 1, 256, 48, 80, 128, dict(block_l=32, block_k=32, block_v=32)),  # head dims that are not powers of two
]


@pytest.mark.parametrize("B,H,S,DK,DV,cs,blocks", SHAPES, ids=[f"S{s[2]}-{s[3]}x{s[4]}-L{s[5]}" for s in SHAPES])
def test_fp32_matches_float64_stopgrad_reference(B, H, S, DK, DV, cs, blocks):
    inputs, _ = make_inputs(B, H, S, DK, DV, seed=S + DK)
    ref, tri = run_both(inputs, None, chunk_size=cs, **blocks)
    check(ref, tri, TOL_FP32)
    assert tri["h"].dtype == torch.float32 and tri["C"].dtype == torch.float32


@pytest.mark.parametrize("S,cs", [(1, 64), (7, 64), (65, 64), (100, 128)])
def test_odd_lengths(S, cs):
    inputs, _ = make_inputs(1, 2, S, 32, 48, seed=S)
    ref, tri = run_both(inputs, None, chunk_size=cs)
    check(ref, tri, TOL_FP32)


# Saturated gates (+-15, random signs) make |n.q| a sum of large terms of both signs that nearly cancel:
# h and its gradients are ill-conditioned there; the fp32 step loop itself is off by 1.2e-5 on this input.
EXTREME_TOL = {"saturated": 1e-4, "input_bias": TOL_FP32, "forget_zero": TOL_FP32, "forget_one": TOL_FP32}


@pytest.mark.parametrize("gates", list(EXTREME_TOL))
def test_extreme_gates(gates):
    """No NaN/Inf, and still matching. The loss is on h only: with forget gates near 0 a random gradient on
    the final C makes d log f a difference of O(1) terms that cancel to O(exp(-15)), which the stop-gradient
    identity cannot resolve in fp32 relative to that tiny scale (see the module docstring of triton/bwd.py)."""
    inputs, _ = make_inputs(1, 2, 128, 32, 32, seed=7, gates=gates)
    ref, tri = run_both(inputs, None, chunk_size=64, state_loss=False, block_l=32)
    check(ref, tri, EXTREME_TOL[gates])


@pytest.mark.parametrize("gates", ["forget_zero", "saturated"])
def test_masked_lanes_compute_no_overflow(gates):
    """Masked lanes (keys after the query on diagonal blocks, rows past S) take the exponent -inf instead
    of an exp that overflows and a select that hides it (fine on a GPU until someone multiplies instead of
    selecting). The interpreter computes with numpy, so numpy's floating-point errors, raised here, catch
    any inf or NaN formed anywhere in the kernels. S=100 leaves a ragged last block; forget gates near 0
    make b_t - b_j, for j after t, a sum of +15s."""
    import numpy as np

    inputs, _ = make_inputs(1, 2, 100, 16, 32, seed=8, gates=gates)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        ref, tri = run_both(inputs, None, chunk_size=64, state_loss=False, block_l=32)
    check(ref, tri, EXTREME_TOL[gates])


def test_initial_state_and_state_gradients():
    inputs, state = make_inputs(1, 2, 100, 32, 64, seed=3, init=True)
    ref, tri = run_both(inputs, state, chunk_size=32)
    check(ref, tri, TOL_FP32)


def test_two_halves_with_carried_state_equal_one_pass():
    """Prefill in two calls carrying (C, n, m) == one call, for outputs, final state and every gradient."""
    inputs, _ = make_inputs(1, 2, 192, 32, 32, seed=11)
    x = [t.float() for t in inputs]
    g = torch.Generator().manual_seed(5)
    dh = torch.randn(1, 2, 192, 32, generator=g)
    dC = torch.randn(1, 2, 32, 32, generator=g)
    results = []
    for split in (None, 80):
        leaves = [t.clone().requires_grad_() for t in x]
        if split is None:
            h, (C, n, m) = mlstm_chunkwise_triton(*leaves, chunk_size=64)
        else:
            first = [t[:, :, :split] for t in leaves]
            second = [t[:, :, split:] for t in leaves]
            h1, st = mlstm_chunkwise_triton(*first, chunk_size=64)
            h2, (C, n, m) = mlstm_chunkwise_triton(*second, chunk_size=64, initial_state=st)
            h = torch.cat([h1, h2], dim=2)
        loss = (h * dh).sum() + (C * dC).sum()
        results.append([h, C, n, m, *torch.autograd.grad(loss, leaves)])
    names = ["h", "C", "n", "m", "dq", "dk", "dv", "di", "df"]
    errs = {name: rel(a, b) for name, a, b in zip(names, results[1], results[0])}
    assert all(e <= TOL_FP32 for e in errs.values()), errs


def test_float64_is_exact():
    """In float64 the kernels reproduce the step loop to rounding: the algebra, masks and tiling are right."""
    inputs, state = make_inputs(1, 2, 100, 16, 32, seed=2, init=True)
    ref, tri = run_both(inputs, state, dtype=F64, chunk_size=64, block_l=32, block_v=16)
    check(ref, tri, 1e-12)


def test_fp16_smoke():
    inputs, _ = make_inputs(1, 2, 128, 64, 64, seed=4)
    ref, tri = run_both(inputs, None, dtype=torch.float16, chunk_size=64)
    check(ref, tri, 2e-2)
    assert tri["h"].dtype == torch.float16 and tri["dq"].dtype == torch.float16


def test_bf16_interpreter_upcast_smoke():
    """The interpreter cannot multiply bf16 (triton#11584): the kernels up-cast there; results stay sane."""
    inputs, _ = make_inputs(1, 1, 64, 32, 32, seed=6)
    ref, tri = run_both(inputs, None, dtype=torch.bfloat16, chunk_size=32)
    check(ref, tri, 3e-2)


def test_bad_input_errors():
    (q, k, v, i, f), _ = make_inputs(1, 1, 16, 16, 16)
    q, k, v, i, f = (t.float() for t in (q, k, v, i, f))
    with pytest.raises(NotImplementedError, match="mlstm_chunkwise"):
        mlstm_chunkwise_triton(q, k, v, i, f, grad="exact")
    with pytest.raises(ValueError, match="grad"):
        mlstm_chunkwise_triton(q, k, v, i, f, grad="nope")
    with pytest.raises(ValueError, match="chunk_size"):
        mlstm_chunkwise_triton(q, k, v, i, f, chunk_size=48)
    with pytest.raises(TypeError, match="dtype"):
        mlstm_chunkwise_triton(q, k.half(), v, i, f)
    with pytest.raises(ValueError, match="gate pre-activations"):
        mlstm_chunkwise_triton(q, k, v, i[..., :-1], f)
