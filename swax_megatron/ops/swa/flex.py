"""Sliding-window attention through PyTorch FlexAttention, for GPUs without Transformer Engine.

The band is a block-sparse mask: blocks wholly outside `t - window < s <= t` are skipped, so the
cost grows as S x window, like the chunked torch path, but in one fused kernel. Building a block
mask costs a pass over all blocks, so masks are cached per (sequence length, window, device): a
stochastic schedule that alternates two windows builds two masks, once.

On CUDA the kernel is `torch.compile(flex_attention)` (compiled once per window: the window is a
constant of the mask). On CPU FlexAttention runs its eager reference, forward only (torch raises
for backward on CPU), which is what the parity test uses.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch

from ._common import check_inputs

try:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    HAVE_FLEX = True
except ImportError:  # torch < 2.5
    HAVE_FLEX = False

BLOCK_SIZE = 128


def _band(window: int):
    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (q_idx - kv_idx < window)

    return mask_mod


@functools.lru_cache(maxsize=32)
def block_mask(seq_len: int, window: Optional[int], device: str):
    """The (cached) block mask of a causal band of `window` tokens; None window = causal."""
    window = seq_len if window is None else min(window, seq_len)
    return create_block_mask(_band(window), None, None, seq_len, seq_len, device=device,
                             BLOCK_SIZE=BLOCK_SIZE)


@functools.lru_cache(maxsize=1)
def _compiled():
    return torch.compile(flex_attention, dynamic=False)


def flex_sliding_window_attention(q, k, v, window, softmax_scale=None):
    """Same contract as `sliding_window_attention` ([B, H, S, D], GQA, window None = causal)."""
    if not HAVE_FLEX:
        raise ImportError("FlexAttention needs torch >= 2.5 (torch.nn.attention.flex_attention)")
    _, Hq, Hkv, S, _, _ = check_inputs(q, k, v, window, softmax_scale)
    if q.device.type == "cpu" and any(t.requires_grad for t in (q, k, v)):
        if torch.is_grad_enabled():
            raise NotImplementedError("FlexAttention has no backward on CPU; use the torch "
                                      "attention backend (model.attention_backend: torch)")
        q, k, v = q.detach(), k.detach(), v.detach()  # torch refuses even a no_grad forward
    mask = block_mask(S, window, str(q.device))
    fn = _compiled() if q.device.type == "cuda" else flex_attention
    out = fn(q, k, v, block_mask=mask, scale=softmax_scale, enable_gqa=Hq != Hkv)
    return out
