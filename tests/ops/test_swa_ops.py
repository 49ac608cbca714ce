"""Sliding-window attention: the chunked O(S*window) path and the SDPA path equal the masked
reference in outputs and all gradients (float64), GQA, odd S; window semantics; dtypes; errors."""

import math

import pytest
import torch
from ops_testing import grads, rel_err

from swax_megatron.ops.swa import (
    choose_impl,
    sliding_window_attention,
    sliding_window_attention_chunked,
    sliding_window_attention_masked,
    sliding_window_mask,
)

TOL = 1e-12


def _qkv(B, Hq, Hkv, S, D, Dv, dtype=torch.float64, seed=0, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, S, D, generator=g, dtype=torch.float64)
    k = torch.randn(B, Hkv, S, D, generator=g, dtype=torch.float64)
    v = torch.randn(B, Hkv, S, Dv, generator=g, dtype=torch.float64)
    return [t.to(dtype).requires_grad_(requires_grad) for t in (q, k, v)]


@pytest.mark.parametrize("window", [1, 3, 16, 128, 300, None])
@pytest.mark.parametrize("S", [1, 37, 200])
@pytest.mark.parametrize("heads", [(2, 2), (4, 1), (6, 2)], ids=["MHA", "MQA", "GQA3"])
def test_chunked_and_sdpa_equal_reference(window, S, heads):
    x = _qkv(2, heads[0], heads[1], S, 8, 12, seed=S)
    ref_o = sliding_window_attention_masked(*x, window)
    ref_g = grads([ref_o], x)
    for impl in ("chunked", "sdpa", "auto"):
        o = sliding_window_attention(*x, window, impl=impl)
        assert o.shape == ref_o.shape
        assert rel_err(o, ref_o) < TOL, impl
        for name, a, b in zip("qkv", grads([o], x), ref_g):
            assert rel_err(a, b) < TOL, (impl, name)


@pytest.mark.parametrize("block_size", [1, 5, 16, 64, 256])
def test_chunked_any_block_size(block_size):
    x = _qkv(1, 4, 2, 75, 8, 8, seed=3)
    ref_o = sliding_window_attention_masked(*x, 20)
    o = sliding_window_attention_chunked(*x, 20, block_size=block_size)
    assert rel_err(o, ref_o) < TOL
    for a, b in zip(grads([o], x), grads([ref_o], x)):
        assert rel_err(a, b) < TOL


def test_gradcheck_chunked():
    x = _qkv(1, 2, 1, 9, 3, 4, seed=4)
    assert torch.autograd.gradcheck(lambda q, k, v: sliding_window_attention_chunked(q, k, v, 3, block_size=2), x)


def test_window_semantics_by_brute_force():
    # Query t sees keys max(0, t-window+1)..t: compare with a per-row softmax written out by hand.
    q, k, v = _qkv(1, 1, 1, 12, 4, 3, seed=5, requires_grad=False)
    window, scale = 5, 0.7
    o = sliding_window_attention(q, k, v, window, softmax_scale=scale, impl="chunked")
    for t in range(12):
        lo = max(0, t - window + 1)
        w = torch.softmax((k[0, 0, lo:t + 1] @ q[0, 0, t]) * scale, dim=0)
        assert rel_err(o[0, 0, t], w @ v[0, 0, lo:t + 1]) < TOL
    assert torch.equal(sliding_window_mask(4, 2), torch.tensor(
        [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]], dtype=torch.bool))


def test_window_at_least_S_is_full_causal_and_default_scale():
    x = _qkv(1, 2, 2, 50, 16, 16, seed=6, requires_grad=False)
    full = sliding_window_attention(*x, None, impl="masked")
    for impl in ("masked", "chunked", "sdpa"):
        assert rel_err(sliding_window_attention(*x, 50, impl=impl), full) < TOL
        assert rel_err(sliding_window_attention(*x, 10_000, impl=impl), full) < TOL
    scaled = sliding_window_attention(*x, None, softmax_scale=1 / math.sqrt(16), impl="chunked")
    assert rel_err(scaled, full) < TOL


def test_auto_picks_chunked_only_when_cheaper():
    assert choose_impl(8192, 128) == "chunked"
    assert choose_impl(256, 128) == "chunked"
    assert choose_impl(8192, 4096) == "chunked"
    assert choose_impl(8192, 5000) == "sdpa"
    assert choose_impl(200, 16) == "sdpa"  # short: fixed costs dominate
    assert choose_impl(8192, None) == "sdpa"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_lower_precision_inputs(dtype):
    x64 = _qkv(1, 4, 2, 130, 16, 16, seed=7)
    x = [t.detach().to(dtype).requires_grad_() for t in x64]
    ref = sliding_window_attention_masked(*[t.detach().double() for t in x], 32)
    for impl in ("masked", "sdpa", "chunked"):
        o = sliding_window_attention(*x, 32, impl=impl)
        assert o.dtype == dtype
        tol = 1e-5 if dtype == torch.float32 else 1e-2  # half: only the final rounding of o
        assert rel_err(o, ref) < tol, impl
        assert all(g.dtype == dtype and torch.isfinite(g).all() for g in grads([o], x))


def test_bad_inputs():
    q, k, v = _qkv(1, 4, 2, 10, 8, 8, requires_grad=False)
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        sliding_window_attention(q, k[:, :1].expand(1, 3, 10, 8), v[:, :1].expand(1, 3, 10, 8), 4)
    with pytest.raises(ValueError, match="window must be an int >= 1 or None"):
        sliding_window_attention(q, k, v, 0)
    with pytest.raises(ValueError, match="window must be an int >= 1 or None"):
        sliding_window_attention(q, k, v, 2.5)
    with pytest.raises(ValueError, match="impl must be one of"):
        sliding_window_attention(q, k, v, 4, impl="flash")
    with pytest.raises(ValueError, match="k must be"):
        sliding_window_attention(q, k[..., :4], v, 4)
    with pytest.raises(ValueError, match="must be \\[B, H, S, D\\]"):
        sliding_window_attention(q[0], k, v, 4)
    with pytest.raises(ValueError, match="block_size must be a positive int"):
        sliding_window_attention_chunked(q, k, v, 4, block_size=0)
    with pytest.raises(TypeError, match="floating point"):
        sliding_window_attention(q.long(), k, v, 4)


def test_auto_dispatches_to_the_chosen_path():
    x = _qkv(1, 2, 1, 300, 8, 8, seed=8, requires_grad=False)
    assert torch.equal(sliding_window_attention(*x, 16), sliding_window_attention_chunked(*x, 16))
    assert torch.equal(sliding_window_attention(*x, 200), sliding_window_attention(*x, 200, impl="sdpa"))


def test_non_contiguous_inputs():
    # The model hands over [s, b, h, d] tensors permuted to [b, h, s, d].
    g = torch.Generator().manual_seed(9)
    q, k, v = (torch.randn(128, 2, h, 8, generator=g, dtype=torch.float64).permute(1, 2, 0, 3) for h in (4, 2, 2))
    ref = sliding_window_attention_masked(q.contiguous(), k.contiguous(), v.contiguous(), 64)
    for impl in ("masked", "sdpa", "chunked"):
        assert rel_err(sliding_window_attention(q, k, v, 64, impl=impl), ref) < TOL


@pytest.mark.parametrize("segment_bytes", [1, 20_000, 100_000])
@pytest.mark.parametrize("window,block_size", [(40, 8), (3, 4), (16, 16)])
def test_chunked_segments(monkeypatch, segment_bytes, window, block_size):
    # Long sequences are processed in segments of blocks; force several (down to one block each,
    # so segments start inside the front-padded region when P > 1).
    import swax_megatron.ops.swa.chunk as chunk_mod

    monkeypatch.setattr(chunk_mod, "SEGMENT_BYTES", segment_bytes)
    x = _qkv(2, 4, 2, 101, 8, 8, seed=10)
    ref_o = sliding_window_attention_masked(*x, window)
    o = sliding_window_attention_chunked(*x, window, block_size=block_size)
    assert rel_err(o, ref_o) < TOL
    for a, b in zip(grads([o], x), grads([ref_o], x)):
        assert rel_err(a, b) < TOL
