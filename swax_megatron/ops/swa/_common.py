"""Input checks and dtype policy for sliding-window attention (same policy as mLSTM: float64
stays float64, every other float dtype is computed in float32; the output has q's dtype)."""

from __future__ import annotations

import torch


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def check_inputs(q, k, v, window, softmax_scale) -> tuple[int, int, int, int, int, int]:
    """Validate q [B,Hq,S,D], k [B,Hkv,S,D], v [B,Hkv,S,Dv]; return (B, Hq, Hkv, S, D, Dv)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"sliding_window_attention: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"sliding_window_attention: {name} must be floating point, got dtype {t.dtype}")
        if t.dim() != 4:
            raise ValueError(f"sliding_window_attention: {name} must be [B, H, S, D], got shape {tuple(t.shape)}")
    B, Hq, S, D = q.shape
    Hkv = k.shape[1]
    if k.shape != (B, Hkv, S, D):
        raise ValueError(f"sliding_window_attention: k must be [B={B}, Hkv, S={S}, D={D}], got {tuple(k.shape)}")
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(f"sliding_window_attention: v must be [B={B}, Hkv={Hkv}, S={S}, Dv], got {tuple(v.shape)}")
    if Hkv == 0 or Hq % Hkv != 0:
        raise ValueError(f"sliding_window_attention: query heads ({Hq}) must be a multiple of key/value heads ({Hkv})")
    if S == 0:
        raise ValueError("sliding_window_attention: empty sequence (S = 0)")
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise ValueError(f"sliding_window_attention: window must be an int >= 1 or None (full causal), got {window!r}")
    if softmax_scale is not None and not isinstance(softmax_scale, (int, float)):
        raise TypeError(f"sliding_window_attention: softmax_scale must be a float or None, got {type(softmax_scale).__name__}")
    if len({t.device for t in (q, k, v)}) != 1:
        raise ValueError("sliding_window_attention: q, k, v must be on one device")
    return B, Hq, Hkv, S, D, v.shape[3]
