"""Dense causal sliding-window attention through torch's fused scaled_dot_product_attention:
O(S^2) work, no S x S probabilities kept for backward. The faster choice for short sequences
and for windows close to S."""

from __future__ import annotations

import torch.nn.functional as F

from ._common import check_inputs, compute_dtype
from .naive import sliding_window_mask


def sliding_window_attention_sdpa(q, k, v, window, softmax_scale=None):
    B, Hq, Hkv, S, D, Dv = check_inputs(q, k, v, window, softmax_scale)
    work_dtype = compute_dtype(q, k, v)
    group = Hq // Hkv
    kk, vv = k.to(work_dtype), v.to(work_dtype)
    if group > 1:
        kk, vv = kk.repeat_interleave(group, dim=1), vv.repeat_interleave(group, dim=1)
    if window is None or window >= S:
        out = F.scaled_dot_product_attention(q.to(work_dtype), kk, vv, is_causal=True, scale=softmax_scale)
    else:
        mask = sliding_window_mask(S, window, q.device)
        out = F.scaled_dot_product_attention(q.to(work_dtype), kk, vv, attn_mask=mask, scale=softmax_scale)
    return out.to(q.dtype)
