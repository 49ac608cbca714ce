"""Every recipe in recipes/ resolves: a typo in any shipped recipe fails CI."""

import glob
import os

import pytest

from swax_megatron.config.errors import RecipeError
from swax_megatron.config.loader import read_raw
from swax_megatron.config.resolve import resolve, resolve_sweep

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPES = sorted(glob.glob(os.path.join(ROOT, "recipes", "**", "*.yaml"), recursive=True))


def test_recipes_exist():
    assert len(RECIPES) >= 15


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: os.path.relpath(p, ROOT))
def test_recipe_resolves(path):
    entries = resolve_sweep(path)
    assert entries
    for r in entries:
        assert len(r.config_hash) == 64
        assert r.recipe.model.ffn_hidden_size is not None
    if read_raw(path).sweep is None:
        assert resolve(path).config_hash == entries[0].config_hash
        with pytest.raises(RecipeError, match="recipe has no sweep block"):
            resolve(path, sweep_index=0)
    else:
        # A sweep file is one of its entries or nothing: never the un-swept base.
        with pytest.raises(RecipeError, match=f"recipe has a sweep block of {len(entries)} entries"):
            resolve(path)
        assert [resolve(path, sweep_index=i).run_dir for i in range(len(entries))] \
            == [r.run_dir for r in entries]


def test_some_recipes_are_sweeps():
    assert sum(read_raw(p).sweep is not None for p in RECIPES) >= 3


def test_paper_recipes_say_what_the_paper_says():
    r = resolve(os.path.join(ROOT, "recipes/paper/swax_1p4b_stochastic.yaml")).recipe
    assert (r.model.num_layers, r.model.hidden_size, r.model.layer_pattern) == (24, 2048, "XS*12")
    ws = r.train.window_schedule
    assert (ws.kind, ws.short, ws.long, ws.p_short, ws.anneal_fraction) == ("stochastic", 128, 2048, 0.5, 0.1)
    assert r.train.seq_length == 16384
    tokens = r.train.steps * r.train.global_batch_size * r.train.seq_length
    assert abs(tokens - 150e9) / 150e9 < 0.01
    r7 = resolve(os.path.join(ROOT, "recipes/paper/swax_7b_stochastic.yaml")).recipe
    assert (r7.model.num_layers, r7.model.hidden_size) == (32, 4096)
    assert r7.train.window_schedule.p_short == 0.75
    windows = [e.recipe.train.window_schedule.long
               for e in resolve_sweep(os.path.join(ROOT, "recipes/paper/window_sweep_1p4b.yaml"))]
    assert windows == [128, 256, 512, 1024, 2048]


def test_the_7b_fp8_recipe_meets_te_fp8_shape_rules():
    # SWAX-7B at TP 4: 2 mLSTM heads per rank of q/k/v/o 2 x 256 + 2 x 512 rows = 3072 (the gate
    # rows, 2 per head, have their own projection that never runs in FP8: models/specs.py).
    from swax_megatron.config.pattern import expand
    from swax_megatron.config.validate import FP8_MULTIPLE, fp8_gemm_dims

    r = resolve(os.path.join(ROOT, "recipes", "paper", "swax_7b_stochastic_fp8.yaml")).recipe
    dims = {what: size for _, what, size in fp8_gemm_dims(r, expand(r.model.layer_pattern))}
    assert dims["mLSTM q/k/v/o projection per TP rank"] == 3072
    assert all(size % FP8_MULTIPLE[r.model.fp8_recipe] == 0 for size in dims.values()), dims
