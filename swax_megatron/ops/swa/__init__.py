"""Causal sliding-window attention, tensors [B, H, S, D], grouped-query heads allowed.

sliding_window_attention(q, k, v, window, softmax_scale=None, *, impl="auto"):
  window: int >= 1 (the window counts the token itself) or None (full causal).
  impl: "auto" (chunked when it is cheaper, else dense SDPA), "masked" (plain dense reference),
        "sdpa" (dense torch scaled_dot_product_attention with the band mask), "chunked" (O(S*window)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import check_inputs, compute_dtype
from .chunk import sliding_window_attention_chunked
from .naive import sliding_window_attention_masked, sliding_window_mask

IMPLS = ("auto", "masked", "sdpa", "chunked")


def sliding_window_attention_sdpa(q, k, v, window, softmax_scale=None):
    """Dense path through torch's fused attention (O(S^2) work, no S x S probabilities kept)."""
    B, Hq, Hkv, S, D, Dv = check_inputs(q, k, v, window, softmax_scale)
    cd = compute_dtype(q, k, v)
    group = Hq // Hkv
    kk, vv = k.to(cd), v.to(cd)
    if group > 1:
        kk, vv = kk.repeat_interleave(group, dim=1), vv.repeat_interleave(group, dim=1)
    if window is None or window >= S:
        out = F.scaled_dot_product_attention(q.to(cd), kk, vv, is_causal=True, scale=softmax_scale)
    else:
        mask = sliding_window_mask(S, window, q.device)
        out = F.scaled_dot_product_attention(q.to(cd), kk, vv, attn_mask=mask, scale=softmax_scale)
    return out.to(q.dtype)


def choose_impl(S: int, window: int | None) -> str:
    """The chunked path does about 2*S*window score work, the dense paths S*S (half of it masked)."""
    if window is not None and 4 * window <= S:
        return "chunked"
    return "sdpa"


def sliding_window_attention(q, k, v, window, softmax_scale=None, *, impl="auto"):
    """Causal attention of query t over keys max(0, t-window+1)..t; see the module docstring."""
    if impl not in IMPLS:
        raise ValueError(f"sliding_window_attention: impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        check_inputs(q, k, v, window, softmax_scale)
        impl = choose_impl(q.shape[2], window)
    fn = {
        "masked": sliding_window_attention_masked,
        "sdpa": sliding_window_attention_sdpa,
        "chunked": sliding_window_attention_chunked,
    }[impl]
    return fn(q, k, v, window, softmax_scale)


__all__ = [
    "sliding_window_attention",
    "sliding_window_attention_chunked",
    "sliding_window_attention_masked",
    "sliding_window_attention_sdpa",
    "sliding_window_mask",
]
