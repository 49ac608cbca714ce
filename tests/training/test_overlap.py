"""Overlapped communication (parallel.overlap_grad_reduce / overlap_param_gather) gives bitwise
the results of the non-overlapped run: losses, gradient norms, updated weights and Adam state over
several steps on 2 gloo ranks, with several DDP buckets (so the reductions really are launched
bucket by bucket from the backward hooks), two micro-batches per rank, a NaN step skipped in the
middle, and a checkpoint-style read of the weights (engine.gathered_params) after an update.

One stated exception: megatron's DDP puts all parameters in one bucket when the reduce is not
overlapped (bucket_size applies only with overlap_grad_reduce), and the distributed optimizer
shards each bucket over the DP ranks. With DP > 1 and several buckets the gradient norm then
adds its per-shard squares in another order: the runs agree to float32 round-off (the norm to
1e-6, the weights to 1e-5 relative), and bitwise when the model fits one bucket (below megatron's
default of 40M parameters per bucket)."""

import math

import pytest
import torch

from dist import run_distributed

VOCAB = 512
TINY = ["model.hidden_size=64", "model.num_layers=2", "model.layer_pattern=XS",
        "model.num_attention_heads=4", "model.num_query_groups=2", "model.mlstm.num_heads=2",
        "model.mlstm.chunk_size=32", "train.seq_length=64", "train.micro_batch_size=2",
        "train.global_batch_size=8", "optim.warmup_steps=2", "train.steps=10"]
BUCKET = 5_000  # parameters per DDP bucket: the tiny model (~0.2M) spans several buckets
STEPS = 5
NAN_STEP = 2

LAYOUTS = {
    "dp2": [],
    "dp2-distopt": ["parallel.use_distributed_optimizer=true"],
    "pp2": ["parallel.pipeline_model_parallel_size=2"],
    "tp2-distopt": ["parallel.tensor_model_parallel_size=2",
                    "parallel.use_distributed_optimizer=true"],
    "pp2xdp2-distopt": ["parallel.pipeline_model_parallel_size=2",
                        "parallel.use_distributed_optimizer=true"],
}


def _recipe(extra):
    from swax_megatron.config.resolve import resolve

    return resolve("recipes/tiny/swax.yaml", TINY + list(extra)).recipe


def _batches(step):
    from megatron.core import parallel_state as ps

    # Two micro-batches per rank, different on the two DP ranks, the same on TP/PP peers.
    g = torch.Generator().manual_seed(step * 100 + ps.get_data_parallel_rank())
    out = []
    for _ in range(4 // ps.get_data_parallel_world_size()):
        t = torch.randint(0, VOCAB, (2, 65), generator=g)
        out.append({"tokens": t[:, :-1], "labels": t[:, 1:], "loss_mask": torch.ones(2, 64)})
    return out


def _state(e):
    params = {n: p.detach().clone() for n, p in e.model.named_parameters()}
    adam = []
    for opt in getattr(e.optimizer, "chained_optimizers", [e.optimizer]):
        for s in opt.optimizer.state.values():
            adam.append({k: v.clone() for k, v in s.items()})
    return params, adam


def _train(rank, extra, overlap, bucket_size):
    from megatron.core import parallel_state as ps

    from swax_megatron.training.engine import build_engine, gathered_params, train_step

    flags = [f"parallel.overlap_grad_reduce={overlap}", f"parallel.overlap_param_gather={overlap}"]
    e = build_engine(_recipe([*extra, *flags]), VOCAB, torch.device("cpu"), bucket_size=bucket_size)
    buckets = len(e.ddp.bucket_groups)
    history = []
    for step in range(STEPS):
        hook = None
        if step == NAN_STEP and ps.is_pipeline_last_stage():
            hook = e.model.output_layer.register_forward_hook(
                lambda mod, inp, out: (out[0] * float("nan"), out[1]))
        r = train_step(e, _batches(step), window=16, lr=1e-3, weight_decay=0.1)
        if hook is not None:
            hook.remove()
        history.append((r.loss, r.grad_norm, r.updated))
    # With the overlapped parameter gather the update of the last step reached only this rank's
    # shard of the weights so far; a checkpoint reads them under gathered_params.
    before = {n: p.detach().clone() for n, p in e.model.named_parameters()}
    with gathered_params(e):
        params, adam = _state(e)
    # The next step trains on the gathered weights and still matches.
    last = train_step(e, _batches(STEPS), window=16, lr=1e-3, weight_decay=0.1)
    history.append((last.loss, last.grad_norm, last.updated))
    stale = any(not torch.equal(before[n], params[n]) for n in params)
    with gathered_params(e):
        final = _state(e)[0]
    return {"history": history, "params": params, "adam": adam, "buckets": buckets,
            "stale_before_gather": stale, "final": final,
            "hooks": bool(getattr(e.ddp, "use_forward_hook", False))}


def _equal(x, y, exact):
    if exact:
        return torch.equal(x, y)
    return torch.allclose(x, y, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("layout, bucket_size, exact", [
    ("dp2", BUCKET, True), ("pp2", BUCKET, True), ("tp2-distopt", BUCKET, True),
    ("dp2-distopt", None, True), ("dp2-distopt", BUCKET, False), ("pp2xdp2-distopt", None, True)],
    ids=["dp2", "pp2", "tp2-distopt", "dp2-distopt-1bucket", "dp2-distopt-buckets",
         "pp2xdp2-distopt"])
def test_overlap_equals_no_overlap(layout, bucket_size, exact):
    tp = 2 if "tp2" in layout else 1
    pp = 2 if "pp2" in layout else 1
    world = 4 if "xdp2" in layout else 2
    off = run_distributed(_train, world, LAYOUTS[layout], False, None, tp=tp, pp=pp, timeout=180)
    on = run_distributed(_train, world, LAYOUTS[layout], True, bucket_size, tp=tp, pp=pp,
                         timeout=180)
    distopt = "distopt" in layout
    # Without the overlap one bucket per buffer (PP: the embedding and output layer have their
    # own); with it and a small bucket_size several (megatron splits only the first stage).
    off_buckets, on_buckets = [r["buckets"] for r in off], [r["buckets"] for r in on]
    if bucket_size is None:
        assert on_buckets == off_buckets
    else:
        assert max(on_buckets) > max(off_buckets), "several buckets: a per-bucket overlap"
    for rank, (a, b) in enumerate(zip(off, on)):
        assert b["hooks"] == distopt and not a["hooks"]  # the param-gather pre-hooks
        updated = [u for _, _, u in a["history"]]
        assert updated == [i != NAN_STEP for i in range(STEPS + 1)]
        assert math.isnan(a["history"][NAN_STEP][0])
        assert [h[2] for h in b["history"]] == updated
        for (la, na, _), (lb, nb, _) in zip(a["history"], b["history"]):
            assert (la == lb or math.isnan(la) and math.isnan(lb)), (rank, la, lb)
            assert (na == nb if exact else na == pytest.approx(nb, rel=1e-6)) or (
                math.isnan(na) and math.isnan(nb)), (rank, na, nb)
        for key in ("params", "final"):
            assert a[key].keys() == b[key].keys()
            for n in a[key]:
                assert _equal(a[key][n], b[key][n], exact), (rank, key, n)
        if exact:  # (several buckets: the Adam state is sharded by bucket, another layout)
            assert len(a["adam"]) == len(b["adam"])
            for x, y in zip(a["adam"], b["adam"]):
                assert all(torch.equal(x[k], y[k]) for k in x)
        # Only the overlapped gather leaves other ranks' shards stale until a forward or the
        # explicit gather (which is why saves take gathered_params).
        assert not a["stale_before_gather"]
        # Stale wherever the distributed optimizer shards the weights over 2 DP ranks.
        assert b["stale_before_gather"] == (distopt and "dp2" in layout)


def test_overlap_rule():
    from swax_megatron.training.engine import overlap

    assert overlap(_recipe([]).parallel) == (True, False)  # defaults, no distributed optimizer
    assert overlap(_recipe(["parallel.use_distributed_optimizer=true"]).parallel) == (True, True)
    assert overlap(_recipe(["parallel.overlap_grad_reduce=false",
                            "parallel.overlap_param_gather=false",
                            "parallel.use_distributed_optimizer=true"]).parallel) == (False, False)
