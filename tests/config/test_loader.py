"""Recipe loading semantics: inheritance, overrides, YAML strictness, sweeps, hashing."""

import os
import textwrap

import pytest

from swax_megatron.config.errors import RecipeError
from swax_megatron.config.resolve import resolve, resolve_sweep, write_resolved


def write(tmp_path, name, text):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_base_deep_merges_dicts_and_replaces_lists(tmp_path):
    write(tmp_path, "a.yaml", """
        model:
          hidden_size: 128
          mlstm: {num_heads: 2, chunk_size: 32}
        eval:
          niah_lengths: [1, 2, 3]
        train: {seq_length: 256, global_batch_size: 4}
        """)
    path = write(tmp_path, "sub/b.yaml", """
        base: ../a.yaml
        model:
          mlstm: {num_heads: 4}
        eval:
          niah_lengths: [7]
        """)
    r = resolve(path).recipe
    assert r.model.hidden_size == 128            # inherited
    assert r.model.mlstm.num_heads == 4          # overridden inside a merged dict
    assert r.model.mlstm.chunk_size == 32        # sibling kept
    assert r.eval.niah_lengths == [7]            # list replaced, not appended


def test_base_list_later_wins_and_null_sets_none(tmp_path):
    write(tmp_path, "a.yaml", "model: {vocab_size: 100, hidden_size: 64}\n")
    write(tmp_path, "b.yaml", "model: {vocab_size: 200}\n")
    path = write(tmp_path, "c.yaml", "base: [a.yaml, b.yaml]\nmodel: {output_logit_soft_cap: null}\n")
    r = resolve(path).recipe
    assert (r.model.vocab_size, r.model.hidden_size, r.model.output_logit_soft_cap) == (200, 64, None)


def test_overrides_are_typed(tmp_path):
    path = write(tmp_path, "a.yaml", "{}\n")
    r = resolve(path, ["optim.lr=1e-3", "train.steps=7", "optim.warmup_steps=2", "model.tie_embeddings=true",
                       "eval.niah_lengths=[8, 16]", "eval.niah_lengths.1=32",
                       "data.source=[a, b]", "model.output_logit_soft_cap=null"]).recipe
    assert r.optim.lr == pytest.approx(1e-3) and isinstance(r.optim.lr, float)
    assert r.train.steps == 7 and r.model.tie_embeddings is True
    assert r.eval.niah_lengths == [8, 32]
    assert r.data.source == ["a", "b"] and r.model.output_logit_soft_cap is None


def test_exponent_floats_in_files(tmp_path):
    path = write(tmp_path, "a.yaml", "optim: {lr: 1e-3, min_lr: 1E-4, eps: 1.0e-8}\n")
    o = resolve(path).recipe.optim
    assert (o.lr, o.min_lr, o.eps) == (1e-3, 1e-4, 1e-8)


def test_int_is_accepted_for_float_but_not_the_reverse(tmp_path):
    path = write(tmp_path, "a.yaml", "optim: {lr: 1}\n")
    assert resolve(path).recipe.optim.lr == 1.0
    with pytest.raises(RecipeError, match="train.steps: expected int, got float"):
        resolve(path, ["train.steps=10.5"])


def test_hash_ignores_run_local_fields_only(tmp_path):
    path = write(tmp_path, "a.yaml", "{}\n")
    h = resolve(path).config_hash
    assert resolve(path, ["run.output_root=/elsewhere", "slurm.partition=gpu",
                          "checkpoint.every_steps=7", "parallel.tensor_model_parallel_size=2",
                          "slurm.gpus_per_node=2"]).config_hash == h
    assert resolve(path, ["optim.lr=1e-3"]).config_hash != h
    # A default spelled out hashes like the default left implicit.
    assert resolve(path, ["model.ffn_hidden_size=704", "model.num_query_groups=4"]).config_hash == h


def test_sweep_expansion_order_names_and_seeds(tmp_path):
    path = write(tmp_path, "s.yaml", """
        run: {name: abl}
        sweep:
          grid:
            train.window_schedule.long: [64, 128]
            optim.lr: [1e-3, 2e-3]
          zip:
            model.mlstm.num_heads: [2, 4]
            model.mlstm.chunk_size: [32, 64]
          seeds: [1, 2]
        train: {seq_length: 256}
        """)
    entries = resolve_sweep(path)
    assert len(entries) == 2 * 2 * 2 * 2
    first, last = entries[0].recipe, entries[-1].recipe
    assert (first.train.window_schedule.long, first.optim.lr, first.model.mlstm.num_heads,
            first.run.seed) == (64, 1e-3, 2, 1)
    assert (last.train.window_schedule.long, last.optim.lr, last.model.mlstm.chunk_size,
            last.run.seed) == (128, 2e-3, 64, 2)
    assert entries[1].recipe.run.seed == 2  # seeds innermost
    assert entries[0].recipe.run.name == "abl__long=64__lr=0.001__num_heads=2__chunk_size=32__seed=1"
    assert len({e.run_dir for e in entries}) == 16
    assert [e.run_dir for e in resolve_sweep(path)] == [e.run_dir for e in entries]  # deterministic
    assert resolve(path, sweep_index=5).run_dir == entries[5].run_dir


def test_sweep_override_applies_to_all_entries_and_cannot_touch_swept_keys(tmp_path):
    path = write(tmp_path, "s.yaml", "sweep: {grid: {optim.lr: [1e-3, 2e-3]}}\n")
    assert {e.recipe.train.steps for e in resolve_sweep(path, ["train.steps=9", "optim.warmup_steps=0"])} == {9}
    with pytest.raises(RecipeError, match="conflicts with swept key `optim.lr`"):
        resolve_sweep(path, ["optim.lr=5e-3"])


def test_write_resolved_round_trips(tmp_path):
    path = write(tmp_path, "a.yaml", f"run: {{output_root: {tmp_path / 'runs'}}}\n")
    r = resolve(path)
    run_dir = write_resolved(r)
    assert run_dir == r.run_dir and os.path.basename(run_dir).endswith(r.config_hash[:8])
    again = resolve(os.path.join(run_dir, "resolved.yaml"))
    assert again.config_hash == r.config_hash
    assert [p for p in os.listdir(run_dir)] == ["resolved.yaml"]  # no temp files left
