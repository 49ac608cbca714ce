"""One training step on 2 gloo ranks (fork harness): a NaN/Inf loss or grad norm skips the
update without touching weights or optimizer state; NaN weights are never checkpointed."""

import math

import pytest
import torch

from dist import run_distributed

VOCAB = 512
TINY = ["model.hidden_size=64", "model.num_layers=2", "model.layer_pattern=XS",
        "model.num_attention_heads=4", "model.num_query_groups=2", "model.mlstm.num_heads=2",
        "model.mlstm.chunk_size=32", "train.seq_length=64", "train.micro_batch_size=2",
        "train.global_batch_size=4", "optim.warmup_steps=2", "train.steps=10"]


def _engine(extra):
    from swax_megatron.config.resolve import resolve
    from swax_megatron.training.engine import build_engine

    recipe = resolve("recipes/tiny/swax.yaml", TINY + list(extra)).recipe
    return build_engine(recipe, VOCAB, torch.device("cpu"))


def _batches(seed):
    from megatron.core import parallel_state as ps

    # Different data on the two DP ranks, the same on TP peers.
    g = torch.Generator().manual_seed(seed * 100 + ps.get_data_parallel_rank())
    t = torch.randint(0, VOCAB, (2, 65), generator=g)
    return [{"tokens": t[:, :-1], "labels": t[:, 1:], "loss_mask": torch.ones(2, 64)}]


def _snapshot(e):
    params = [p.detach().clone() for p in e.model.parameters()]
    state = []
    for opt in getattr(e.optimizer, "chained_optimizers", [e.optimizer]):
        for s in opt.optimizer.state.values():
            state.append({k: v.clone() for k, v in s.items()})
    return params, state


def _same(a, b):
    pa, sa = a
    pb, sb = b
    return (len(pa) == len(pb) and all(torch.equal(x, y) for x, y in zip(pa, pb))
            and len(sa) == len(sb)
            and all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
                    for x, y in zip(sa, sb)))


def _nan_steps(rank, extra):
    from swax_megatron.training.engine import train_step

    e = _engine(extra)
    step = lambda seed: train_step(e, _batches(seed), window=16, lr=1e-3,  # noqa: E731
                                   weight_decay=0.1)
    first = step(0)
    before = _snapshot(e)

    # A NaN loss: the output layer emits NaN for one step.
    hook = e.model.output_layer.register_forward_hook(
        lambda mod, inp, out: (out[0] * float("nan"), out[1]))
    nan_loss = step(1)
    hook.remove()
    after_nan = _snapshot(e)

    # A finite loss with an infinite gradient (one weight's gradient blows up).
    p = next(e.model.parameters())
    hook = p.register_hook(lambda g: g * float("inf"))
    inf_grad = step(2)
    hook.remove()
    after_inf = _snapshot(e)

    good = step(3)
    return {"first": first.updated, "nan": (nan_loss.updated, nan_loss.loss),
            "inf": (inf_grad.updated, inf_grad.loss, inf_grad.grad_norm),
            "reasons": (first.skip_reason, nan_loss.skip_reason, inf_grad.skip_reason),
            "unchanged_nan": _same(before, after_nan), "unchanged_inf": _same(before, after_inf),
            "good": good.updated, "changed_after": not _same(before, _snapshot(e)),
            "good_loss": good.loss}


@pytest.mark.parametrize("tp, extra", [
    (1, []),
    (2, ["parallel.tensor_model_parallel_size=2", "parallel.use_distributed_optimizer=true"]),
], ids=["dp2", "tp2-distopt"])
def test_nonfinite_loss_or_grad_norm_skips_the_update(tp, extra):
    out = run_distributed(_nan_steps, 2, extra, tp=tp, timeout=120)
    for r in out:
        assert r["first"] and r["good"] and r["changed_after"]
        assert r["nan"][0] is False and math.isnan(r["nan"][1])
        assert r["inf"][0] is False and math.isfinite(r["inf"][1]) and not math.isfinite(r["inf"][2])
        assert r["unchanged_nan"] and r["unchanged_inf"]  # weights and Adam state untouched
        assert r["reasons"] == (None, "nonfinite", "nonfinite")
        assert math.isfinite(r["good_loss"])
    assert out[0]["good_loss"] == out[1]["good_loss"]  # every rank agrees on the loss


def _save_blocked(rank, root):
    from swax_megatron.training.checkpoint import CheckpointManager, TrainState
    from swax_megatron.training.engine import train_step

    e = _engine([])
    manager = CheckpointManager(root, keep_last=2)
    fresh = manager.save(1, e.model, e.optimizer, TrainState(step=1), {})
    train_step(e, _batches(0), window=16, lr=1e-3, weight_decay=0.1)
    if rank == 1:  # NaN on one rank only: every rank must refuse
        with torch.no_grad():
            next(e.model.parameters())[0, 0] = float("nan")
    nan = manager.save(2, e.model, e.optimizer, TrainState(step=2), {})
    return fresh, nan


def test_no_checkpoint_of_nan_weights_or_before_the_first_update(tmp_path):
    for fresh, nan in run_distributed(_save_blocked, 2, str(tmp_path / "ckpt"), tp=1):
        assert fresh[0] is None and "no optimizer update yet" in fresh[1]
        assert nan[0] is None and "NaN/Inf" in nan[1]
    assert not (tmp_path / "ckpt").exists()  # nothing written, no `latest`
