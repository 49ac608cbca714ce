"""Activation recomputation (train.recompute): the gradients of every parameter and the losses are
bitwise those without it, for each selective module (core_attn, mlp, mlstm_cell) and full
recomputation by layer type with both methods, at one process and at TP=2 and PP=2; the modules
really run twice (forward, then again in backward); the recipe reaches the model; bad settings are
one clear line."""

import functools

import pytest
import torch

from dist import run_distributed
from swax_model_testing import batches, build, forward_backward, named_grads, tiny_config

PATTERN = "XSGX"  # every layer type; "XS" then "GX" on the two stages of PP=2

SETTINGS = {
    "none": {},
    "selective-core_attn": dict(recompute_granularity="selective", recompute_modules=["core_attn"]),
    "selective-mlp": dict(recompute_granularity="selective", recompute_modules=["mlp"]),
    "selective-mlstm_cell": dict(recompute_granularity="selective", recompute_modules=[],
                                 recompute_mlstm_cell=True),
    "selective-all": dict(recompute_granularity="selective",
                          recompute_modules=["core_attn", "mlp"], recompute_mlstm_cell=True),
    "full-uniform-1": dict(recompute_granularity="full", recompute_method="uniform",
                           recompute_num_layers=1),
    "full-uniform-2-SX": dict(recompute_granularity="full", recompute_method="uniform",
                              recompute_num_layers=2, recompute_layer_types="SX"),
    "full-block-1-X": dict(recompute_granularity="full", recompute_method="block",
                           recompute_num_layers=1, recompute_layer_types="X"),
    "full-block-2-SG": dict(recompute_granularity="full", recompute_method="block",
                            recompute_num_layers=2, recompute_layer_types="SG"),
}


def _count_calls(model, counts):
    """Forward calls of each layer, its MLP, its attention core and its mLSTM cell."""
    from swax_megatron.models import mlstm_layer

    def hook(key):
        return lambda *a: counts.__setitem__(key, counts.get(key, 0) + 1)

    for layer in model.decoder.layers:
        n = layer.layer_number
        layer.register_forward_pre_hook(hook(("layer", n)))
        layer.mlp.register_forward_pre_hook(hook(("mlp", n)))
        if hasattr(layer.mixer, "core_attention"):
            layer.mixer.core_attention.register_forward_pre_hook(hook(("core_attn", n)))
    _CELL["counts"] = counts
    if not hasattr(mlstm_layer.mlstm_cell, "counted"):  # once per (forked) process
        real = mlstm_layer.mlstm_cell

        def counted(*a, **k):  # the real cell, counted
            c = _CELL["counts"]
            c[("mlstm_cell", None)] = c.get(("mlstm_cell", None), 0) + 1
            return real(*a, **k)

        counted.counted = True
        mlstm_layer.mlstm_cell = counted


_CELL = {}


def _run(rank, tp, pp, names):
    from megatron.core import parallel_state as ps

    out = {}
    for name in names:
        cfg = tiny_config(PATTERN, tp=tp, pp=pp, **SETTINGS[name])
        model = build(cfg)
        counts = {}
        _count_calls(model, counts)
        losses = forward_backward(model, batches())
        grads = {n: g for n, (g, _) in named_grads(model).items()}
        out[name] = (losses, grads, counts, ps.get_pipeline_model_parallel_rank())
    return out


def _expected_calls(name, micro=2):
    """Forward calls per module key at one process: 2 per micro-batch where recomputed."""
    s = SETTINGS[name]
    twice = set()
    if s.get("recompute_granularity") == "selective":
        for m in s["recompute_modules"]:
            twice |= {(m, n) for n, sym in enumerate(PATTERN, 1)
                      if m == "mlp" or (m == "core_attn" and sym in "SG")}
        if s.get("recompute_mlstm_cell"):
            twice.add(("mlstm_cell", None))
    elif s.get("recompute_granularity") == "full":
        from swax_megatron.models.block import recompute_groups

        plan = recompute_groups(PATTERN, s.get("recompute_layer_types", "SGX"),
                                s["recompute_method"], s["recompute_num_layers"])
        for start, end, recomputed in plan:
            for i in range(start, end):
                if recomputed:
                    n, sym = i + 1, PATTERN[i]
                    twice |= {("layer", n), ("mlp", n)}
                    twice |= {("core_attn", n)} if sym in "SG" else set()
    calls = {}
    for n, sym in enumerate(PATTERN, 1):
        keys = [("layer", n), ("mlp", n)] + ([("core_attn", n)] if sym in "SG" else [])
        for key in keys:
            calls[key] = micro * (2 if key in twice else 1)
    cells = PATTERN.count("X")
    x_twice = sum(1 for n, sym in enumerate(PATTERN, 1) if sym == "X" and (
        ("layer", n) in twice or ("mlstm_cell", None) in twice))
    calls[("mlstm_cell", None)] = micro * (cells + x_twice)
    return calls


@pytest.fixture(scope="module")
def single():
    (res,) = run_distributed(functools.partial(_run, tp=1, pp=1, names=list(SETTINGS)), 1, tp=1)
    return res


@pytest.mark.parametrize("name", [n for n in SETTINGS if n != "none"])
def test_gradients_equal_without_recompute(single, name):
    ref_losses, ref_grads, ref_counts, _ = single["none"]
    losses, grads, counts, _ = single[name]
    assert losses == ref_losses
    assert grads.keys() == ref_grads.keys() and len(grads) > 20
    for n, g in ref_grads.items():
        assert g.abs().max() > 0, n
        assert torch.equal(grads[n], g), (name, n)
    assert ref_counts == _expected_calls("none")
    assert counts == _expected_calls(name), name  # recomputed modules ran twice


@pytest.mark.parametrize("tp, pp", [(2, 1), (1, 2)], ids=["tp2", "pp2"])
def test_gradients_equal_without_recompute_in_parallel(tp, pp):
    names = ["none", "selective-all", "full-uniform-2-SX", "full-block-1-X"]
    per_rank = run_distributed(functools.partial(_run, tp=tp, pp=pp, names=names), tp * pp,
                               tp=tp, pp=pp)
    for res in per_rank:
        ref_losses, ref_grads, _, _ = res["none"]
        for name in names[1:]:
            losses, grads, counts, _ = res[name]
            assert losses == ref_losses
            assert grads.keys() == ref_grads.keys()
            for n, g in ref_grads.items():
                assert torch.equal(grads[n], g), (name, n)
            assert any(v > 2 for v in counts.values()) or name == "full-block-1-X"


def test_recompute_groups():
    from swax_megatron.models.block import recompute_groups

    # uniform: runs of the chosen types, num_layers at a time; another type ends a run.
    assert recompute_groups("XSGX", "SGX", "uniform", 1) == [
        (0, 1, True), (1, 2, True), (2, 3, True), (3, 4, True)]
    assert recompute_groups("XSXSX", "SGX", "uniform", 2) == [
        (0, 2, True), (2, 4, True), (4, 5, True)]
    assert recompute_groups("XSGXS", "SX", "uniform", 2) == [
        (0, 2, True), (2, 3, False), (3, 5, True)]
    # block: the stage's first num_layers layers of the chosen types, one by one.
    assert recompute_groups("XSXSX", "X", "block", 2) == [
        (0, 1, True), (1, 2, False), (2, 3, True), (3, 4, False), (4, 5, False)]
    assert recompute_groups("SS", "X", "block", 3) == [(0, 1, False), (1, 2, False)]


def test_recipe_reaches_the_model():
    from swax_megatron.config.resolve import resolve
    from swax_megatron.models.config import swax_config_kwargs

    def kw(*overrides):
        return swax_config_kwargs(resolve("recipes/tiny/swax.yaml", list(overrides)).recipe, 512)

    none = kw()
    assert none["recompute_granularity"] is None and none["recompute_modules"] == []
    sel = kw("train.recompute.granularity=selective")  # default modules core_attn, mlstm_cell
    assert (sel["recompute_granularity"], sel["recompute_modules"], sel["recompute_mlstm_cell"],
            sel["recompute_method"], sel["recompute_num_layers"]) == (
        "selective", ["core_attn"], True, None, None)
    full = kw("train.recompute.granularity=full", "train.recompute.method=block",
              "train.recompute.num_layers=2", "train.recompute.layer_types=[X]")
    assert (full["recompute_granularity"], full["recompute_method"],
            full["recompute_num_layers"], full["recompute_layer_types"],
            full["recompute_mlstm_cell"]) == ("full", "block", 2, "X", False)


@pytest.mark.parametrize("overrides, message", [
    (["train.recompute.granularity=selective", "train.recompute.modules=[layernorm]"],
     "train.recompute.modules.0: unknown module 'layernorm'; expected one of core_attn, mlp, "
     "mlstm_cell"),
    (["train.recompute.granularity=selective", "train.recompute.modules=[]"],
     "selective recomputation needs at least one module"),
    (["train.recompute.modules=[mlp, mlp]"], "module 'mlp' is listed twice"),
    (["train.recompute.layer_types=[Y]"], "unknown layer type 'Y'; expected S, G or X"),
    (["train.recompute.granularity=full", "train.recompute.layer_types=[G]"],
     "full recomputation of layer types ['G'] but pattern"),
    (["train.recompute.granularity=full", "train.recompute.num_layers=3",
      "parallel.pipeline_model_parallel_size=2"],
     "3 layers per recompute unit, but a pipeline stage has at most 2 layers"),
])
def test_bad_settings_are_one_line(overrides, message):
    from swax_megatron.config.errors import RecipeError
    from swax_megatron.config.resolve import resolve

    with pytest.raises(RecipeError) as e:
        resolve("recipes/tiny/swax.yaml", ["model.layer_pattern=XS*2", "model.num_layers=4",
                                           *overrides])
    assert message in str(e.value) and "\n" not in str(e.value)


def _ulysses_grads(rank, names):
    """Per setting: this rank's loss and parameter gradients at ulysses 2 (recomputation then
    repeats the mixers' all-to-alls in backward)."""
    from megatron.core import parallel_state as ps

    from swax_megatron.config.resolve import resolve
    from swax_megatron.models import ulysses
    from swax_megatron.models.model import swax_model_from_recipe
    from dist import init_ulysses

    init_ulysses(2)
    overrides = {"none": [],
                 "selective-all": ["train.recompute.granularity=selective",
                                   "train.recompute.modules=[core_attn,mlp,mlstm_cell]"],
                 "full-uniform-2": ["train.recompute.granularity=full",
                                    "train.recompute.num_layers=2"]}
    out = {}
    for name in names:
        recipe = resolve("recipes/tiny/base.yaml", [
            "model.layer_pattern=XSGX", "model.num_layers=4", "model.hidden_size=64",
            "model.num_attention_heads=4", "model.num_query_groups=2", "model.mlstm.num_heads=4",
            "model.mlstm.chunk_size=16", "model.swa.window=12", "train.seq_length=64",
            "model.vocab_size=128", "parallel.ulysses_size=2", "slurm.gpus_per_node=2",
            *overrides[name]]).recipe
        torch.manual_seed(0)
        model = swax_model_from_recipe(recipe, vocab_size=128)
        model.set_swa_window(12)
        tokens = torch.randint(0, 128, (2, 65), generator=torch.Generator().manual_seed(1))
        r = ps.get_context_parallel_rank()
        x, y = (ulysses.shard_sequence(t, 2, r) for t in (tokens[:, :-1], tokens[:, 1:]))
        loss = model(x, labels=y).float().sum()
        loss.backward()
        out[name] = (float(loss), {n: p.grad.clone() for n, p in model.named_parameters()})
    return out


def test_gradients_equal_without_recompute_under_ulysses():
    pytest.importorskip("deepspeed")
    names = ["none", "selective-all", "full-uniform-2"]
    for res in run_distributed(_ulysses_grads, 2, names):
        ref_loss, ref = res["none"]
        for name in names[1:]:
            loss, grads = res[name]
            assert loss == ref_loss and grads.keys() == ref.keys()
            for n, g in ref.items():
                assert torch.equal(grads[n], g), (name, n)
