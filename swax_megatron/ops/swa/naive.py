"""Masked dense reference for causal sliding-window attention: O(S^2), for tests and short S.

Query t attends to keys max(0, t - window + 1) .. t (the window counts the token itself);
window=None, or window >= S, is full causal attention. Grouped-query attention: query head h
reads key/value head h // (Hq // Hkv)."""

from __future__ import annotations

import torch

from ._common import check_inputs, compute_dtype


def sliding_window_mask(S: int, window: int | None, device=None) -> torch.Tensor:
    """Bool [S, S]: True where query t may attend to key j."""
    t = torch.arange(S, device=device)[:, None]
    j = torch.arange(S, device=device)[None, :]
    allowed = j <= t
    if window is not None:
        allowed &= j > t - window
    return allowed


def sliding_window_attention_masked(q, k, v, window, softmax_scale=None):
    B, Hq, Hkv, S, D, Dv = check_inputs(q, k, v, window, softmax_scale)
    work_dtype = compute_dtype(q, k, v)
    scale = D ** -0.5 if softmax_scale is None else softmax_scale
    group = Hq // Hkv
    k = k.to(work_dtype).repeat_interleave(group, dim=1)
    v = v.to(work_dtype).repeat_interleave(group, dim=1)
    scores = (q.to(work_dtype) @ k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~sliding_window_mask(S, window, q.device), float("-inf"))
    return (torch.softmax(scores, dim=-1) @ v).to(q.dtype)
