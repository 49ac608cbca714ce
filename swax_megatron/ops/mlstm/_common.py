"""Input checks, dtype policy and state helpers shared by the mLSTM paths.

Dtype policy (all paths): float64 inputs are computed in float64; every other floating dtype
(fp32, fp16, bf16) is computed in float32. Outputs `h` come back in the dtype of `q`; states
(C, n, m) stay in the compute dtype, because a recurrent state rounded to bf16 every step drifts.
"""

from __future__ import annotations

import torch

State = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (C [B,H,Dqk,Dv], n [B,H,Dqk], m [B,H])


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _check_float(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"mlstm: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"mlstm: {name} must be a floating-point tensor, got dtype {t.dtype}")


def check_sequence_inputs(q, k, v, i, f) -> tuple[int, int, int, int, int]:
    """Validate [B,H,S,D] q/k/v and [B,H,S] gates; return (B, H, S, Dqk, Dv)."""
    for name, t in (("q", q), ("k", k), ("v", v), ("i", i), ("f", f)):
        _check_float(name, t)
    if q.dim() != 4:
        raise ValueError(f"mlstm: q must be [B, H, S, Dqk], got shape {tuple(q.shape)}")
    B, H, S, Dqk = q.shape
    if k.shape != q.shape:
        raise ValueError(f"mlstm: k must have the shape of q {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"mlstm: v must be [B, H, S, Dv] = [{B}, {H}, {S}, Dv], got {tuple(v.shape)}")
    for name, t in (("i", i), ("f", f)):
        if t.shape != q.shape[:3]:
            raise ValueError(f"mlstm: {name} must be gate pre-activations [B, H, S] = [{B}, {H}, {S}], got {tuple(t.shape)}")
    if S < 1 or Dqk < 1 or v.shape[3] < 1:
        raise ValueError(f"mlstm: empty dimension in q {tuple(q.shape)} / v {tuple(v.shape)}")
    devices = {t.device for t in (q, k, v, i, f)}
    if len(devices) != 1:
        raise ValueError(f"mlstm: q, k, v, i, f must be on one device, got {sorted(map(str, devices))}")
    return B, H, S, Dqk, v.shape[3]


def check_state(state, B: int, H: int, Dqk: int, Dv: int, what: str = "initial_state") -> None:
    if not isinstance(state, (tuple, list)) or len(state) != 3:
        raise TypeError(f"mlstm: {what} must be a tuple (C, n, m), got {type(state).__name__}")
    C, n, m = state
    for name, t in (("C", C), ("n", n), ("m", m)):
        _check_float(f"{what}.{name}", t)
    want = {"C": (B, H, Dqk, Dv), "n": (B, H, Dqk), "m": (B, H)}
    for name, t in (("C", C), ("n", n), ("m", m)):
        if tuple(t.shape) != want[name]:
            raise ValueError(f"mlstm: {what}.{name} must have shape {list(want[name])}, got {list(t.shape)}")


def zero_state(B: int, H: int, Dqk: int, Dv: int, dtype: torch.dtype, device) -> State:
    return (
        torch.zeros(B, H, Dqk, Dv, dtype=dtype, device=device),
        torch.zeros(B, H, Dqk, dtype=dtype, device=device),
        torch.zeros(B, H, dtype=dtype, device=device),
    )


def check_eps(eps) -> None:
    if not isinstance(eps, (int, float)) or eps < 0:
        raise ValueError(f"mlstm: eps must be a float >= 0, got {eps!r}")
