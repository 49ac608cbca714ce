"""Sliding-window attention through PyTorch FlexAttention, for GPUs without Transformer Engine.

The band is a block-sparse mask: blocks wholly outside `t - window < s <= t` are skipped, so the
cost grows as S x window, like the chunked torch path, but in one fused kernel.

Two choices keep it usable at the paper's lengths and with a per-step window:

- The block structure is built from the band's geometry (`band_block_mask`), not by
  `create_block_mask`, which evaluates the mask on a dense S x S grid (peak 2.5 GiB at S=16384,
  x4 per doubling, so ~160 GiB at 131k; bench/flex_mask_memory.py). What remains is the
  BlockMask itself: torch's layout holds four [S/128, S/128] int32 index tables (16 MiB at
  131k), and building them peaks at about twice that (37 MiB). `create_block_mask` stays the
  reference the tests compare against, field by field.
- The window is a runtime value of the mask: `mask_mod` reads a 0-d tensor instead of closing over
  a Python int. A Python constant is baked into the compiled graph, so every window (the
  stochastic schedule's two, plus full causal for G layers) in each grad mode (training,
  evaluation) compiled again, and past torch's recompile limit (8) torch silently fell back to an
  unfused implementation that materialises the score matrix. With the tensor, one graph per
  (sequence length, grad mode, dtype) serves every window.

Masks are cached per (sequence length, window, device): a schedule that alternates two windows
builds two masks, once. On CUDA the kernel is `torch.compile(flex_attention)`. On CPU FlexAttention
runs its eager reference, forward only (torch raises for backward on CPU), which is what the
parity tests use.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch

from ._common import check_inputs

try:
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    HAVE_FLEX = True
except ImportError:  # torch < 2.5
    HAVE_FLEX = False

BLOCK_SIZE = 128


def band_mask_mod(window: torch.Tensor):
    """mask_mod of the causal band: key kv_idx is visible from query q_idx iff
    q_idx - window < kv_idx <= q_idx. `window` is a 0-d integer tensor read at run time (see the
    module docstring), on the device of the attention inputs."""

    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (q_idx - kv_idx < window)

    return mask_mod


def _ceil_div(a: torch.Tensor, b: int) -> torch.Tensor:
    return -((-a) // b)


def _ordered_rows(first: list, count: list, ncols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of a BlockMask index table as create_block_mask orders them (it argsorts each row of a
    0/1 block grid, descending and stable): the members ascending, then every other column
    ascending. Each row's members are up to two disjoint ascending column ranges, given as [N]
    tensors of first column and length (length 0 = empty). Returns (num_blocks [N], indices
    [N, ncols]), both int32, without building the [N, ncols] 0/1 grid."""
    (a1, l1), (a2, l2) = ((f[:, None], n[:, None]) for f, n in zip(first, count))
    total = l1 + l2
    p = torch.arange(ncols, dtype=torch.int32, device=a1.device)[None, :]
    members = torch.where(p < l1, a1 + p, a2 + (p - l1))
    # The t-th column outside the ranges: t shifted past each range it reaches, in order.
    rest = p - total
    rest = rest + torch.where(rest >= a1, l1, 0)
    rest = rest + torch.where(rest >= a2, l2, 0)
    return total[:, 0].to(torch.int32), torch.where(p < total, members, rest).to(torch.int32)


def _range(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inclusive [lo, hi] as (first, length), length 0 where hi < lo."""
    return lo, (hi - lo + 1).clamp_min(0)


def _split(outer: tuple, inner: tuple) -> list:
    """The (up to two) ranges of `outer` minus `inner` (inner inside outer, or empty)."""
    (oa, ol), (ia, il) = outer, inner
    has = il > 0
    left = (oa, torch.where(has, ia - oa, ol))
    right_first = ia + il
    right = (right_first, torch.where(has, oa + ol - right_first, 0))
    return [left, right]


def band_block_mask(seq_len: int, window: Optional[int], device="cpu", block_size: int = BLOCK_SIZE):
    """The BlockMask of a causal band of `window` tokens (None or >= seq_len: full causal), built
    from the band's geometry; equal, field by field, to

        create_block_mask(band_mask_mod(w), None, None, seq_len, seq_len, device, block_size)

    with w the window as a 0-d tensor. Query block i holds rows i*bs .. min((i+1)*bs, S) - 1,
    key block j the same columns; a block is full when all its bs x bs entries are visible (never
    a block cut by the end of the sequence: create_block_mask pads with False), partial when some are."""
    S, bs = int(seq_len), int(block_size)
    if S < 1 or bs < 1:
        raise ValueError(f"band_block_mask: seq_len and block_size must be >= 1, got {S}, {bs}")
    W = S if window is None else min(int(window), S)
    if W < 1:
        raise ValueError(f"band_block_mask: window must be >= 1 or None, got {window!r}")
    n = -(-S // bs)  # blocks per side
    whole = S // bs  # blocks not cut by the end of the sequence
    blk = torch.arange(n, device=device, dtype=torch.int32)
    first_row = blk * bs
    last_row = torch.clamp_max(first_row + bs - 1, S - 1)

    # Key blocks of query block i. Some entry visible: the keys seen by rows r0..r1 are
    # max(0, r0 - W + 1) .. r1. Every entry visible: a whole block with max key <= r0 and
    # min key >= r1 - W + 1.
    visible = _range((first_row - W + 1).clamp_min(0) // bs, blk)
    full_hi = torch.where(blk < whole, (first_row + 1) // bs - 1, -1)
    full = _range(_ceil_div(first_row + bs - W, bs).clamp_min(0), full_hi)
    kv_num, kv_idx = _ordered_rows(*zip(*_split(visible, full)), n)
    full_kv_num, full_kv_idx = _ordered_rows(*zip(full, (blk, torch.zeros_like(blk))), n)

    # Query blocks of key block j (the transpose): some entry visible for rows j*bs .. last key
    # + W - 1; every entry for whole blocks with min row >= last key and max row <= first key + W - 1.
    visible_q = _range(blk, torch.clamp_max(last_row + W - 1, S - 1) // bs)
    full_q_hi = torch.where(blk < whole, torch.clamp_max((first_row + W) // bs - 1, whole - 1), -1)
    full_q = _range(_ceil_div(first_row + bs - 1, bs), full_q_hi)
    q_num, q_idx = _ordered_rows(*zip(*_split(visible_q, full_q)), n)
    full_q_num, full_q_idx = _ordered_rows(*zip(full_q, (blk, torch.zeros_like(blk))), n)

    window_t = torch.tensor(W, dtype=torch.int32, device=device)
    lead = lambda t: t[None, None]  # noqa: E731  (batch and head dims of size 1, broadcast)
    return BlockMask(seq_lengths=(S, S), kv_num_blocks=lead(kv_num), kv_indices=lead(kv_idx),
                     full_kv_num_blocks=lead(full_kv_num), full_kv_indices=lead(full_kv_idx),
                     q_num_blocks=lead(q_num), q_indices=lead(q_idx),
                     full_q_num_blocks=lead(full_q_num), full_q_indices=lead(full_q_idx),
                     BLOCK_SIZE=(bs, bs), mask_mod=band_mask_mod(window_t))


@functools.lru_cache(maxsize=32)
def block_mask(seq_len: int, window: Optional[int], device: str):
    """The (cached) block mask of a causal band of `window` tokens; None window = causal."""
    return band_block_mask(seq_len, window, device, BLOCK_SIZE)


@functools.lru_cache(maxsize=1)
def _compiled():
    return torch.compile(flex_attention, dynamic=False)


def _flex_fn(device_type: str):
    """The compiled kernel on CUDA; FlexAttention's eager reference elsewhere."""
    return _compiled() if device_type == "cuda" else flex_attention


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
    fn = _flex_fn(q.device.type)
    return fn(q, k, v, block_mask=mask, scale=softmax_scale, enable_gqa=Hq != Hkv)
