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
        train: {seq_length: 256, global_batch_size: 4, window_schedule: {kind: list, windows: [1, 2, 3]}}
        """)
    path = write(tmp_path, "sub/b.yaml", """
        base: ../a.yaml
        model:
          mlstm: {num_heads: 4}
        train:
          window_schedule: {windows: [7]}
        """)
    r = resolve(path).recipe
    assert r.model.hidden_size == 128            # inherited
    assert r.model.mlstm.num_heads == 4          # overridden inside a merged dict
    assert r.model.mlstm.chunk_size == 32        # sibling kept
    assert r.train.window_schedule.windows == [7]  # list replaced, not appended


def test_base_list_later_wins_and_null_sets_none(tmp_path):
    write(tmp_path, "a.yaml", "model: {vocab_size: 100, hidden_size: 64}\n")
    write(tmp_path, "b.yaml", "model: {vocab_size: 200}\n")
    path = write(tmp_path, "c.yaml", "base: [a.yaml, b.yaml]\nmodel: {output_logit_soft_cap: null}\n")
    r = resolve(path).recipe
    assert (r.model.vocab_size, r.model.hidden_size, r.model.output_logit_soft_cap) == (200, 64, None)


def test_overrides_are_typed(tmp_path):
    path = write(tmp_path, "a.yaml", "{}\n")
    r = resolve(path, ["optim.lr=1e-3", "train.steps=7", "optim.warmup_steps=2", "model.tie_embeddings=true",
                       "train.window_schedule.kind=list",
                       "train.window_schedule.windows=[8, 16]", "train.window_schedule.windows.1=32",
                       "data.source=[a, b]", "model.output_logit_soft_cap=null"]).recipe
    assert r.optim.lr == pytest.approx(1e-3) and isinstance(r.optim.lr, float)
    assert r.train.steps == 7 and r.model.tie_embeddings is True
    assert r.train.window_schedule.windows == [8, 32]
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


# --- YAML 1.2 core schema ------------------------------------------------------------------------

def test_yaml12_numbers(tmp_path):
    path = write(tmp_path, "a.yaml", """
        train: {steps: 0o17, eval_every: 0x1F, log_every: +3}
        optim: {lr: 1e-3, min_lr: .5e-4, weight_decay: 1., warmup_steps: 0}
        model: {rope_base: -.5E+3}
        """)
    with pytest.raises(RecipeError, match="model.rope_base: must be > 0"):
        resolve(path)  # -.5E+3 is the float -500 (YAML 1.2), refused by the range check
    r = resolve(path, ["model.rope_base=1e4"]).recipe
    assert (r.train.steps, r.train.eval_every, r.train.log_every) == (15, 31, 3)
    assert (r.optim.lr, r.optim.min_lr, r.optim.weight_decay) == (1e-3, 0.5e-4, 1.0)
    assert r.model.rope_base == 1e4 and isinstance(r.model.rope_base, float)


def test_yaml11_only_forms_are_strings(tmp_path):
    path = write(tmp_path, "a.yaml", """
        run: {name: 1_000, description: 2024-01-01}
        slurm: {time: 24:00:00, partition: 0b101}
        """)
    r = resolve(path).recipe
    assert (r.run.name, r.run.description) == ("1_000", "2024-01-01")
    assert (r.slurm.time, r.slurm.partition) == ("24:00:00", "0b101")


def test_resolved_yaml_quotes_strings_that_look_like_numbers(tmp_path):
    # Strings YAML 1.2 or 1.1 would read as numbers (0o17, 1e3, 24:00:00) come out quoted, so
    # resolved.yaml reads back to the same recipe with either.
    path = write(tmp_path, "a.yaml", f"""
        run: {{name: '1e3', description: '0o17', output_root: {tmp_path / 'runs'}}}
        slurm: {{time: '24:00:00', account: '0x1F', partition: '1_000'}}
        """)
    r = resolve(path)
    again = resolve(os.path.join(write_resolved(r), "resolved.yaml"))
    assert again.recipe == r.recipe and again.config_hash == r.config_hash


# --- dicts merge key by key, wherever they come from ---------------------------------------------

def test_dict_override_merges_key_by_key(tmp_path):
    path = write(tmp_path, "a.yaml", """
        model:
          swa: {window: 64}
          mlstm: {num_heads: 2, chunk_size: 32}
        train: {seq_length: 256}
        """)
    base = resolve(path)
    same = resolve(path, ["model.swa={}", "model={}", "model.mlstm={num_heads: 2}"])
    assert same.recipe == base.recipe and same.config_hash == base.config_hash
    r = resolve(path, ["model.mlstm={num_heads: 4}"]).recipe
    assert (r.model.swa.window, r.model.mlstm.num_heads, r.model.mlstm.chunk_size) == (64, 4, 32)
    r = resolve(path, ["model={swa: {window: 16}}"]).recipe
    assert (r.model.swa.window, r.model.mlstm.chunk_size) == (16, 32)


def test_dict_override_origin_is_the_override(tmp_path):
    path = write(tmp_path, "a.yaml", "model: {mlstm: {num_heads: 2, chunk_size: 32}}\n")
    with pytest.raises(RecipeError) as e:
        resolve(path, ["model.mlstm={num_heads: 3}", "parallel.tensor_model_parallel_size=2",
                       "slurm.gpus_per_node=2", "train.global_batch_size=2"])
    assert str(e.value).startswith("override `model.mlstm={num_heads: 3}`: model.mlstm.num_heads:")


def test_dict_sweep_values_merge_key_by_key(tmp_path):
    path = write(tmp_path, "s.yaml", """
        model: {swa: {window: 64}, mlstm: {num_heads: 2, chunk_size: 32}}
        train: {seq_length: 256}
        sweep:
          grid:
            model.mlstm: [{}, {num_heads: 4}]
            model: [{swa: {}}]
        """)
    entries = [e.recipe for e in resolve_sweep(path)]
    assert [(m.model.swa.window, m.model.mlstm.num_heads, m.model.mlstm.chunk_size) for m in entries] \
        == [(64, 2, 32), (64, 4, 32)]
