"""Causal sliding-window attention, tensors [B, H, S, D], grouped-query heads allowed.

sliding_window_attention(q, k, v, window, softmax_scale=None, *, impl="auto"):
  window: int >= 1, the number of keys a query sees counting itself (query t attends to keys
          max(0, t - window + 1) .. t), or None for full causal attention; window >= S is full causal.
  softmax_scale: defaults to D ** -0.5.
  impl: "auto"    the chunked path where it is cheaper (choose_impl), else "sdpa";
        "masked"  naive.py, the plain dense reference;
        "sdpa"    sdpa.py, dense through torch's fused attention with the band mask;
        "chunked" chunk.py, O(S * window) blocks with a hand-written backward.
GQA: k/v may have fewer heads; query head h reads key/value head h // (Hq // Hkv).
float64 is computed in float64, other float dtypes in float32; the output has q's dtype.
"""

from __future__ import annotations

from ._common import check_inputs
from .chunk import sliding_window_attention_chunked
from .naive import sliding_window_attention_masked, sliding_window_mask
from .sdpa import sliding_window_attention_sdpa

IMPLS = ("auto", "masked", "sdpa", "chunked")


def choose_impl(S: int, window: int | None) -> str:
    """Chunked work is about S * (window + 64) scores, dense S * S; measured on CPU (fp32, D=64)
    the chunked path wins from S = 2 * window on, once S is large enough (>= 256) that its fixed
    per-call cost no longer dominates."""
    if window is not None and S >= 256 and 2 * window <= S:
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
    "choose_impl",
    "sliding_window_attention",
    "sliding_window_attention_chunked",
    "sliding_window_attention_masked",
    "sliding_window_attention_sdpa",
    "sliding_window_mask",
]
