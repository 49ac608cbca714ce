"""The planner's parameter counts (plan/model.py) against the megatron model itself: every paper
and model recipe built on the meta device (nothing allocated), and each rank's shard of tiny
models at TP=2 x PP=2 (real gloo ranks)."""

import glob
import os

import pytest

from dist import run_distributed
from swax_megatron.config.resolve import resolve, resolve_sweep
from swax_megatron.plan.model import Shape, model_parameters, padded_vocab, stage_parameters

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPES = sorted(glob.glob(os.path.join(ROOT, "recipes", "paper", "*.yaml"))
                 + glob.glob(os.path.join(ROOT, "recipes", "models", "*.yaml")))
SINGLE = ["parallel.tensor_model_parallel_size=1", "parallel.pipeline_model_parallel_size=1",
          "parallel.sequence_parallel=false", "parallel.ulysses_size=1"]


def _entries(path):
    return [e.recipe for e in resolve_sweep(path, SINGLE)]


def _meta_counts(rank, recipes):
    """Total parameters of each recipe's megatron model (local spec), built on the meta device."""
    import torch

    from swax_megatron.models.model import swax_model_from_recipe

    out = []
    for r in recipes:
        with torch.device("meta"):
            model = swax_model_from_recipe(r, backend="local")
        assert all(p.is_meta for p in model.parameters())
        out.append(sum(p.numel() for p in model.parameters()))
    return out


@pytest.fixture(scope="module")
def meta_counts():
    """{Shape: parameters of the megatron model}, one build per distinct model of the recipes."""
    shapes = {}
    for path in RECIPES:
        for r in _entries(path):
            shapes.setdefault(Shape.from_recipe(r), r)
    counts = run_distributed(_meta_counts, 1, list(shapes.values()), tp=1, timeout=300)[0]
    return dict(zip(shapes, counts))


def test_there_are_paper_recipes_with_every_mixer():
    patterns = {Shape.from_recipe(r).symbols for p in RECIPES for r in _entries(p)}
    assert {"S", "G", "X"} <= set("".join(patterns))
    assert any(set(p) == {"G"} for p in patterns) and any(set(p) == {"X"} for p in patterns)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: os.path.relpath(p, ROOT))
def test_parameter_count_equals_the_meta_device_model(path, meta_counts):
    for r in _entries(path):
        shape = Shape.from_recipe(r)
        counts = model_parameters(shape)
        assert counts["total"] == meta_counts[shape], (path, counts)
        assert counts["total"] == sum(v for k, v in counts.items() if k != "total")


def test_the_paper_sizes():
    one = model_parameters(Shape.from_recipe(resolve(os.path.join(ROOT, "recipes/models/swax_1p4b.yaml")).recipe))
    seven = model_parameters(Shape.from_recipe(resolve(os.path.join(ROOT, "recipes/models/swax_7b.yaml")).recipe))
    assert abs(one["total"] - 1.4e9) / 1.4e9 < 0.1 and abs(seven["total"] - 7e9) / 7e9 < 0.1


def test_vocabulary_padding_is_the_models():
    from swax_megatron.models.config import padded_vocab_size

    for v in (1, 127, 128, 129, 2048, 50257, 50304):
        assert padded_vocab(v) == padded_vocab_size(v)


TINY = os.path.join(ROOT, "recipes", "tiny", "base.yaml")
VARIANTS = {
    "rmsnorm-untied": ["model.layer_pattern=XSGX", "model.tie_embeddings=false"],
    "layernorm-bias-tied": ["model.layer_pattern=SXXG", "model.normalization=LayerNorm",
                            "model.add_qkv_bias=true", "model.tie_embeddings=true"],
    "uneven-stages": ["model.layer_pattern=X|SGX", "model.tie_embeddings=false"],
}


def _rank_counts(rank, recipe):
    from megatron.core import parallel_state

    from swax_megatron.models.model import swax_model_from_recipe

    model = swax_model_from_recipe(recipe, backend="local")
    return (parallel_state.get_pipeline_model_parallel_rank(),
            sum(p.numel() for p in model.parameters()))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_rank_holds_what_the_planner_says_at_tp2_pp2(variant):
    r = resolve(TINY, ["model.hidden_size=64", "model.vocab_size=300",
                       "parallel.tensor_model_parallel_size=2",
                       "parallel.pipeline_model_parallel_size=2", "slurm.gpus_per_node=4",
                       *VARIANTS[variant]]).recipe
    shape = Shape.from_recipe(r)
    results = run_distributed(_rank_counts, 4, r, tp=2, pp=2)
    for stage, count in results:
        assert count == stage_parameters(shape, 2, 2, stage)["total"], (variant, stage)
    # the stages add up to the model, plus the tied output layer's copy on the last stage
    whole = model_parameters(shape)["total"]
    copy = shape.vocab * shape.hidden if shape.tied else 0
    assert sum(stage_parameters(shape, 1, 2, k)["total"] for k in range(2)) == whole + copy
