"""Blocked causal sliding-window attention: O(S * window) time and memory.

Queries are cut into blocks of Bq rows. The keys block n may see (original positions
n*Bq - W + 1 .. n*Bq + Bq - 1) lie in key blocks n-P .. n with P = ceil((W-1)/Bq); those P+1
blocks, concatenated, form the block's tile of T = (P+1)*Bq keys. Query r of block n sees tile
column c iff that key is inside its window and is not front padding (an additive 0/-inf bias:
on CPU a float add is ~10x cheaper than masked_fill with a broadcast bool mask). Per query this
is about W + Bq scores instead of S. Grouped-query heads are stacked as extra rows of a tile, so
keys are never repeated.

The backward is written by hand (softmax-attention backward on the saved probabilities); it
folds the tile gradients back onto the key blocks with P+1 shifted in-place adds, which autograd
of the overlapping tiles would do with full-size zero-filled copies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import check_inputs, compute_dtype

DEFAULT_BLOCK = 64


def _tile_biases(NB: int, Bq: int, P: int, W: int, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Additive masks (0 or -inf) for the tile scores: the band [Bq, T] shared by every block,
    and the front-padding mask [min(P, NB), 1, 1, T] of the first blocks."""
    T = (P + 1) * Bq
    c = torch.arange(T, device=device)
    rel = c[None, :] - P * Bq - torch.arange(Bq, device=device)[:, None]  # key - query
    neg = torch.tensor(float("-inf"), dtype=dtype, device=device)
    zero = torch.zeros((), dtype=dtype, device=device)
    band = torch.where((rel <= 0) & (rel > -W), zero, neg)
    key_pos = torch.arange(min(P, NB), device=device)[:, None] * Bq - P * Bq + c[None, :]
    front = torch.where(key_pos >= 0, zero, neg)[:, None, None, :]
    return band, front


def _tiles(x: torch.Tensor, NB: int, Bq: int, P: int, tail: int) -> torch.Tensor:
    """[B, H, S, D] -> [B*H*NB, (P+1)*Bq, D]: tile n = key blocks n-P .. n (zeros before the start)."""
    B, H, _, D = x.shape
    xb = F.pad(x, (0, 0, P * Bq, tail)).reshape(B, H, P + NB, Bq, D)
    return torch.cat([xb[:, :, j:j + NB] for j in range(P + 1)], dim=3).view(B * H * NB, (P + 1) * Bq, D)


def _fold_tiles(dt: torch.Tensor, B: int, H: int, NB: int, Bq: int, P: int, S: int) -> torch.Tensor:
    """Adjoint of _tiles: [B*H*NB, (P+1)*Bq, D] -> [B, H, S, D], summing the overlaps."""
    D = dt.shape[-1]
    dt = dt.view(B, H, NB, P + 1, Bq, D)
    out = torch.zeros(B, H, P + NB, Bq, D, dtype=dt.dtype, device=dt.device)
    for j in range(P + 1):
        out[:, :, j:j + NB].add_(dt[:, :, :, j])
    return out.view(B, H, (P + NB) * Bq, D)[:, :, P * Bq:P * Bq + S]


def _rows(x: torch.Tensor, Hkv: int, NB: int, Bq: int, tail: int) -> torch.Tensor:
    """Queries [B, Hkv*G, S, D] -> [B*Hkv*NB, G*Bq, D]: the G query heads of a kv head stacked per block."""
    B, Hq, _, D = x.shape
    G = Hq // Hkv
    x = F.pad(x, (0, 0, 0, tail)).reshape(B, Hkv, G, NB, Bq, D)
    return x.transpose(2, 3).reshape(B * Hkv * NB, G * Bq, D)


def _unrows(x: torch.Tensor, B: int, Hkv: int, NB: int, Bq: int, S: int) -> torch.Tensor:
    """Adjoint layout of _rows: [B*Hkv*NB, G*Bq, D] -> [B, Hq, S, D]."""
    G, D = x.shape[1] // Bq, x.shape[-1]
    x = x.view(B, Hkv, NB, G, Bq, D).transpose(2, 3)
    return x.reshape(B, Hkv * G, NB * Bq, D)[:, :, :S]


class _SWAChunked(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, W, scale, Bq):
        B, Hq, S, _ = q.shape
        Hkv = k.shape[1]
        tail = (-S) % Bq
        NB = (S + tail) // Bq
        P = -(-(W - 1) // Bq)
        T = (P + 1) * Bq
        qt = _rows(q * scale, Hkv, NB, Bq, tail)
        kt = _tiles(k, NB, Bq, P, tail)
        vt = _tiles(v, NB, Bq, P, tail)
        band, front = _tile_biases(NB, Bq, P, W, q.dtype, q.device)
        scores = torch.bmm(qt, kt.transpose(1, 2))
        s5 = scores.view(B * Hkv, NB, -1, Bq, T).add_(band)
        if P:
            s5[:, :P].add_(front)
        p = torch.softmax(scores, dim=-1)
        del scores, s5
        o = torch.bmm(p, vt)
        ctx.save_for_backward(qt, kt, vt, p, o)
        ctx.dims = (B, Hkv, S, NB, Bq, P, tail, scale)
        return _unrows(o, B, Hkv, NB, Bq, S)

    @staticmethod
    def backward(ctx, do):
        qt, kt, vt, p, o = ctx.saved_tensors
        B, Hkv, S, NB, Bq, P, tail, scale = ctx.dims
        dot = _rows(do, Hkv, NB, Bq, tail)
        delta = (dot * o).sum(-1, keepdim=True)  # sum_c p_c dp_c, per query row
        ds = torch.bmm(dot, vt.transpose(1, 2)).sub_(delta).mul_(p)
        dq = _unrows(torch.bmm(ds, kt), B, Hkv, NB, Bq, S) * scale
        dk = _fold_tiles(torch.bmm(ds.transpose(1, 2), qt), B, Hkv, NB, Bq, P, S)
        dv = _fold_tiles(torch.bmm(p.transpose(1, 2), dot), B, Hkv, NB, Bq, P, S)
        return dq, dk, dv, None, None, None


def sliding_window_attention_chunked(q, k, v, window, softmax_scale=None, block_size=DEFAULT_BLOCK):
    """O(S * window) path; window=None (or >= S) degrades to full causal at O(S^2)."""
    B, Hq, Hkv, S, D, Dv = check_inputs(q, k, v, window, softmax_scale)
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"sliding_window_attention: block_size must be a positive int, got {block_size!r}")
    cd = compute_dtype(q, k, v)
    scale = D ** -0.5 if softmax_scale is None else float(softmax_scale)
    W = S if window is None else min(window, S)
    o = _SWAChunked.apply(q.to(cd), k.to(cd), v.to(cd), W, scale, min(block_size, S))
    return o.to(q.dtype)
