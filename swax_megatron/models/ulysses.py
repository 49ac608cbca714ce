"""DeepSpeed Ulysses sequence parallelism around the mixers (`parallel.ulysses_size` > 1).

Megatron's context-parallel group is the Ulysses group. Megatron then already does what a
sequence-sharded model needs besides the mixers: the pipeline schedule sizes its messages by
seq / cp, DDP and the optimizer reduce gradients over the data x context ranks, checkpoints treat
context ranks as replicas, and RoPE gives each rank the positions of its share. The share follows
megatron's convention (`megatron.core.utils.get_batch_on_this_cp_rank`): the sequence cut in 2u
chunks, rank r holding chunks r and 2u-1-r.

Around each mixer DeepSpeed's `DistributedAttention` swaps sequence sharding for head sharding
with all-to-alls (4 per call forward, 4 backward): the mixer then sees the whole sequence for
1/u of its heads, so the sliding window needs no halo exchange and the mLSTM recurrence runs
unchanged. The gathered sequence arrives in rank order, [c0, c_{2u-1}, c1, c_{2u-2}, ...]; it is
put in natural order before the mixer (a window and a recurrence need it) and back after.
Every mixer op is per head, so the result equals the unsharded computation.
"""

from __future__ import annotations

from typing import Callable, List, Optional

import torch

# Pinned (pyproject): `__compatible_ops__` below is a private name of this version.
DEEPSPEED_VERSION = "0.19.8"


def ulysses_group() -> Optional[torch.distributed.ProcessGroup]:
    """Megatron's context-parallel group when it has more than one rank, else None."""
    from megatron.core import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        return None
    if parallel_state.get_context_parallel_world_size() <= 1:
        return None
    return parallel_state.get_context_parallel_group()


def init_deepspeed_comm() -> None:
    """deepspeed.comm on top of the existing torch.distributed world (DistributedAttention's
    all-to-alls go through it). On a CPU accelerator its init would JIT-compile a shared-memory
    all-reduce op Ulysses never uses (about 70 s cold, and a failure without g++): that op is
    marked incompatible first, in the lazily built table of compatible ops, without building the
    rest of the table (reading it probes every op with compiler runs that print link errors)."""
    import os

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        import deepspeed.ops

        vars(deepspeed.ops).setdefault("__compatible_ops__", {})["deepspeed_shm_comm"] = False
    import deepspeed

    deepspeed.init_distributed(dist_backend=torch.distributed.get_backend())


def chunk_order(u: int) -> List[int]:
    """The chunks (of 2u) in the order an all-to-all gathers them: rank r's r and 2u-1-r."""
    out = []
    for r in range(u):
        out += [r, 2 * u - 1 - r]
    return out


def natural_index(u: int, seq: int, device=None) -> torch.Tensor:
    """Index i such that gathered[i] is the sequence in natural order (seq divisible by 2u)."""
    if seq % (2 * u):
        raise ValueError(f"sequence length {seq} is not divisible by 2 x ulysses_size = {2 * u}")
    c = seq // (2 * u)
    where = {chunk: slot for slot, chunk in enumerate(chunk_order(u))}
    return torch.cat([torch.arange(where[k] * c, (where[k] + 1) * c, device=device) for k in range(2 * u)])


def shard_sequence(x: torch.Tensor, u: int, rank: int, dim: int = 1) -> torch.Tensor:
    """This rank's share of a full-sequence tensor (megatron's layout): chunks rank, 2u-1-rank."""
    chunks = x.chunk(2 * u, dim=dim)
    return torch.cat([chunks[rank], chunks[2 * u - 1 - rank]], dim=dim)


class _Natural:
    """Runs `fn` on natural-order, full-sequence tensors [s, b, heads, d]; returns [s, b, heads, d]
    in gathered order again."""

    def __init__(self, fn: Callable, u: int):
        self.fn, self.u = fn, u

    def __call__(self, *tensors, **kwargs):
        idx = natural_index(self.u, tensors[0].shape[0], tensors[0].device)
        out = self.fn(*(t.index_select(0, idx) for t in tensors), **kwargs)
        back = torch.empty_like(idx)
        back[idx] = torch.arange(idx.numel(), device=idx.device)
        return out.index_select(0, back)


def _distributed(fn: Callable, group) -> Callable:
    from deepspeed.sequence.layer import DistributedAttention

    # scatter heads (dim 2), gather sequence (dim 0) of [s, b, heads, d] tensors.
    da = DistributedAttention(_Natural(fn, group.size()), group, scatter_idx=2, gather_idx=0)
    return lambda q, k, v: da(q, k, v, 1)  # batch_dim_idx=1: sequence-first layout


def attention(fn: Callable, q, k, v, group) -> torch.Tensor:
    """Core attention under Ulysses. q [s/u, b, h, d], k/v [s/u, b, g, d] (this rank's share of the
    sequence); fn(q, k, v) attends over whole sequences [s, b, h/u, d] -> [s, b, h/u, d]. Returns
    [s/u, b, h, d]. Key/value groups not divisible by u are expanded to the query heads first."""
    u = group.size()
    h, g = q.shape[2], k.shape[2]
    if h % u:
        raise ValueError(f"{h} attention heads on this rank are not divisible by ulysses_size {u}")
    if g % u:
        k, v = (t.repeat_interleave(h // g, dim=2) for t in (k, v))
    return _distributed(fn, group)(q, k, v)


def mlstm(cell: Callable, q, k, v, i, f, group) -> torch.Tensor:
    """The mLSTM cell under Ulysses. q, k [b, h, s/u, dqk], v [b, h, s/u, dv], gate pre-activations
    i, f [b, h, s/u]; cell(q, k, v, i, f) -> h over whole sequences in the same layouts. Returns
    h [b, h, s/u, dv]. The gates ride along with v as two extra channels (one all-to-all)."""
    dv = v.shape[-1]
    vif = torch.cat([v, i.unsqueeze(-1).to(v.dtype), f.unsqueeze(-1).to(v.dtype)], dim=-1)
    if i.dtype != v.dtype or f.dtype != v.dtype:
        raise ValueError(f"mLSTM gates ({i.dtype}, {f.dtype}) and values ({v.dtype}) must share a dtype")

    def local(qs, ks, vs):  # [s, b, h/u, d] -> [s, b, h/u, dv]
        qb, kb, vb = (t.permute(1, 2, 0, 3) for t in (qs, ks, vs))
        out = cell(qb, kb, vb[..., :dv], vb[..., dv], vb[..., dv + 1])
        return out.permute(2, 0, 1, 3)

    seq_first = [t.permute(2, 0, 1, 3) for t in (q, k, vif)]
    return _distributed(local, group)(*seq_first).permute(1, 2, 0, 3)
