"""Shared helpers for the ops tests (imported by module name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import torch


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (b is the reference); 0 when both are all zero."""
    a, b = a.detach().double(), b.detach().double()
    scale = b.abs().max().item()
    diff = (a - b).abs().max().item()
    return diff / scale if scale > 0 else diff


def mlstm_inputs(B, H, S, Dqk, Dv, dtype=torch.float64, seed=0, requires_grad=False, i_shift=0.0, f_shift=2.0):
    """q, k, v ~ N(0, 1); gates: i ~ 2 N(0,1) + i_shift, f ~ 2 N(0,1) + f_shift (mostly remembering)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, S, Dqk, generator=g, dtype=torch.float64)
    k = torch.randn(B, H, S, Dqk, generator=g, dtype=torch.float64)
    v = torch.randn(B, H, S, Dv, generator=g, dtype=torch.float64)
    i = 2 * torch.randn(B, H, S, generator=g, dtype=torch.float64) + i_shift
    f = 2 * torch.randn(B, H, S, generator=g, dtype=torch.float64) + f_shift
    return [t.to(dtype).requires_grad_(requires_grad) for t in (q, k, v, i, f)]


def mlstm_state(B, H, Dqk, Dv, dtype=torch.float64, seed=1, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    C = torch.randn(B, H, Dqk, Dv, generator=g, dtype=torch.float64)
    n = torch.randn(B, H, Dqk, generator=g, dtype=torch.float64)
    m = torch.randn(B, H, generator=g, dtype=torch.float64)
    return tuple(t.to(dtype).requires_grad_(requires_grad) for t in (C, n, m))


def grads(outputs, inputs, seed=2):
    """Gradients of sum(out * random) over the given outputs w.r.t. inputs (None kept as zeros)."""
    g = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.dtype)).sum() for o in outputs)
    gs = torch.autograd.grad(loss, inputs, allow_unused=True)
    return [torch.zeros_like(x) if gx is None else gx for x, gx in zip(inputs, gs)]
