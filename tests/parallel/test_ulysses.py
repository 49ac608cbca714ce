"""DeepSpeed Ulysses (parallel.ulysses_size): the all-to-all wrappers around each mixer equal the
unsharded mixer (outputs and input gradients, bitwise in fp64 and to round-off in fp32), and
the whole model's loss and every parameter's gradient at ulysses 2 equal one process's."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from dist import init_ulysses, run_distributed

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from swax_model_testing import merge_shards, shard_info  # noqa: E402

pytest.importorskip("deepspeed")


def _mixers(rank, dtype_name):
    from swax_megatron.models import ulysses
    from swax_megatron.ops.mlstm import mlstm_chunkwise
    from swax_megatron.ops.swa import sliding_window_attention

    dtype = getattr(torch, dtype_name)
    group = init_ulysses(2)
    u, r = group.size(), group.rank()
    g = torch.Generator().manual_seed(0)
    b, s, h, kvh, d = 2, 64, 4, 2, 8
    q = torch.randn(s, b, h, d, generator=g, dtype=dtype)
    k = torch.randn(s, b, kvh, d, generator=g, dtype=dtype)
    v = torch.randn(s, b, kvh, d, generator=g, dtype=dtype)
    gout = torch.randn(s, b, h, d, generator=g, dtype=dtype)

    def attend(qs, ks, vs):  # [s, b, h, d]
        ks, vs = (t.repeat_interleave(qs.shape[2] // ks.shape[2], dim=2) for t in (ks, vs))
        out = sliding_window_attention(*(t.permute(1, 2, 0, 3) for t in (qs, ks, vs)), 7)
        return out.permute(2, 0, 1, 3)

    full = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = attend(*full)
    (ref * gout).sum().backward()
    shard = [ulysses.shard_sequence(t, u, r, dim=0).detach().requires_grad_() for t in (q, k, v)]
    out = ulysses.attention(attend, *shard, group)
    (out * ulysses.shard_sequence(gout, u, r, dim=0)).sum().backward()
    res = {"attn_out": (out, ulysses.shard_sequence(ref, u, r, dim=0))}
    for name, a, f in zip("qkv", shard, full):
        res[f"attn_d{name}"] = (a.grad, ulysses.shard_sequence(f.grad, u, r, dim=0))

    # mLSTM cell: q, k [b, h, s, dqk], v [b, h, s, dv], gates [b, h, s]
    dqk, dv = 4, 8
    mq, mk = (torch.randn(b, h, s, dqk, generator=g, dtype=dtype) for _ in range(2))
    mv = torch.randn(b, h, s, dv, generator=g, dtype=dtype)
    mi, mf = (torch.randn(b, h, s, generator=g, dtype=dtype) + 2.0 for _ in range(2))
    mg = torch.randn(b, h, s, dv, generator=g, dtype=dtype)

    def cell(q_, k_, v_, i_, f_):
        return mlstm_chunkwise(q_, k_, v_, i_, f_, chunk_size=16)[0]

    full = [t.clone().requires_grad_() for t in (mq, mk, mv, mi, mf)]
    ref = cell(*full)
    (ref * mg).sum().backward()
    shard = [ulysses.shard_sequence(t, u, r, dim=2).detach().requires_grad_() for t in (mq, mk, mv, mi, mf)]
    out = ulysses.mlstm(cell, *shard, group)
    (out * ulysses.shard_sequence(mg, u, r, dim=2)).sum().backward()
    res["mlstm_out"] = (out, ulysses.shard_sequence(ref, u, r, dim=2))
    for name, a, f in zip(["q", "k", "v", "i", "f"], shard, full):
        res[f"mlstm_d{name}"] = (a.grad, ulysses.shard_sequence(f.grad, u, r, dim=2))
    return {k: (a.detach(), b_.detach()) for k, (a, b_) in res.items()}


@pytest.mark.parametrize("dtype,tol", [("float64", 0.0), ("float32", 1e-5)])
def test_mixers_equal_unsharded(dtype, tol):
    for rank, res in enumerate(run_distributed(_mixers, 2, dtype)):
        for name, (got, want) in res.items():
            err = (got - want).abs().max().item()
            assert err <= tol * max(1.0, want.abs().max().item()), (rank, name, err)


def test_natural_index_inverts_the_gather():
    from swax_megatron.models import ulysses

    for u in (1, 2, 3, 4):
        x = torch.arange(8 * u)
        gathered = torch.cat([ulysses.shard_sequence(x, u, r, dim=0) for r in range(u)])
        assert torch.equal(gathered[ulysses.natural_index(u, 8 * u)], x)
    with pytest.raises(ValueError, match="not divisible by 2 x ulysses_size"):
        ulysses.natural_index(2, 6)


# --- the whole model -------------------------------------------------------------------------------

def _recipe(pattern: str, overrides=()):
    from swax_megatron.config.resolve import resolve

    return resolve(str(Path(__file__).resolve().parents[2] / "recipes/tiny/base.yaml"), [
        f"model.layer_pattern={pattern}", "model.hidden_size=64", "model.num_attention_heads=4",
        "model.num_query_groups=2", "model.mlstm.num_heads=4", "model.mlstm.chunk_size=16",
        "model.swa.window=12", "train.seq_length=64", "model.vocab_size=128", *overrides]).recipe


def _model_grads(rank, u, tp, pattern):
    """Loss sum and every parameter's full gradient (summed over the Ulysses group, gathered over
    TP), for a fixed batch, at ulysses u x tensor parallel tp."""
    from megatron.core import parallel_state as ps

    from swax_megatron.models import ulysses
    from swax_megatron.models.model import swax_model_from_recipe

    init_ulysses(u, tp) if u > 1 else _init_tp(tp)
    torch.manual_seed(0)
    recipe = _recipe(pattern, [f"parallel.ulysses_size={u}", f"parallel.tensor_model_parallel_size={tp}",
                               f"slurm.gpus_per_node={u * tp}"])
    model = swax_model_from_recipe(recipe, vocab_size=128)
    model.set_swa_window(12)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 128, (2, 65), generator=g)
    x, y = tokens[:, :-1], tokens[:, 1:]
    if u > 1:
        r = ps.get_context_parallel_rank()
        x, y = ulysses.shard_sequence(x, u, r), ulysses.shard_sequence(y, u, r)
    loss = model(x, labels=y).float().sum()
    loss.backward()
    total = loss.detach().clone()
    if u > 1:
        torch.distributed.all_reduce(total, group=ps.get_context_parallel_group())
    grads = {}
    for name, p in model.named_parameters():
        grad = p.grad.detach().clone()
        if u > 1:
            torch.distributed.all_reduce(grad, group=ps.get_context_parallel_group())
        if tp > 1 and shard_info(p) is not None:
            parts = [torch.empty_like(grad) for _ in range(tp)]
            torch.distributed.all_gather(parts, grad, group=ps.get_tensor_model_parallel_group())
            grad = merge_shards(parts, shard_info(p))  # strided: SwiGLU fc1 holds [gate_r; up_r]
        grads[name] = grad
    return float(total), grads


def _init_tp(tp):
    from megatron.core import parallel_state

    from swax_megatron.parallel import cpu_compat

    cpu_compat.apply()
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp)
    cpu_compat.model_parallel_seed(1234)


@pytest.mark.parametrize("u, tp", [(2, 1), (2, 2)])  # tp 2 x ulysses 2: 1 kv group per rank, expanded
def test_model_loss_and_grads_equal_one_process(u, tp):
    pattern = "XSGX"
    ref_loss, ref = run_distributed(_model_grads, 1, 1, 1, pattern)[0]
    for rank, (loss, grads) in enumerate(run_distributed(_model_grads, u * tp, u, tp, pattern)):
        assert abs(loss - ref_loss) <= 1e-5 * abs(ref_loss), (rank, loss, ref_loss)
        assert grads.keys() == ref.keys()
        for name, gr in grads.items():
            err = (gr - ref[name]).abs().max().item()
            assert err <= 1e-5 * max(1.0, ref[name].abs().max().item()), (rank, name, err)


def _shm_op_skipped(rank):
    init_ulysses(2)
    import deepspeed.comm.comm as ds_comm
    from deepspeed.accelerator import get_accelerator

    # The name our init marks incompatible is this version's shared-memory op, and no op was built.
    return get_accelerator().create_op_builder("ShareMemCommBuilder").NAME, ds_comm.cdb.shm_comm_op


def test_deepspeed_init_skips_the_shared_memory_op_build():
    for name, op in run_distributed(_shm_op_skipped, 2):
        assert name == "deepspeed_shm_comm" and op is None
