"""Bad recipe input: one line on stderr naming the problem, exit code 2, nothing written.

Each case is (label, recipe text or None, overrides, text the message must contain[, command]).
The base recipe is a small valid one, so each case breaks exactly one thing. The command is
`recipe resolve`, or `recipe sweep --count` for a text starting with `sweep`; a fifth element
names it explicitly ("resolve" or "count").
"""

import os
import subprocess
import sys
import textwrap

import pytest

from swax_megatron.cli import main

GOOD = """\
run: {name: t}
model:
  hidden_size: 64
  num_layers: 4
  num_attention_heads: 4
  layer_pattern: "XS*2"
  mlstm: {num_heads: 2, chunk_size: 32}
train:
  seq_length: 256
  steps: 10
  global_batch_size: 4
  micro_batch_size: 2
  window_schedule: {kind: stochastic, short: 16, long: 64}
optim: {warmup_steps: 2}
slurm: {nodes: 1, gpus_per_node: 2}
"""

CASES = [
    # Unknown keys at every nesting level (file and override).
    ("top-level typo", "modle: {hidden_size: 3}\n", [], "modle: unknown key in a recipe (did you mean `model`"),
    ("section typo", "train: {stepz: 3}\n", [], "train.stepz: unknown key in section `train` (did you mean `steps`"),
    ("nested typo", "model: {mlstm: {chunksize: 64}}\n", [], "model.mlstm.chunksize: unknown key"),
    ("deep typo", "train: {window_schedule: {p_shrot: 0.5}}\n", [], "train.window_schedule.p_shrot"),
    ("override typo", None, ["optim.lrr=1e-3"], "optim.lrr: unknown key in section `optim` (did you mean `lr`"),
    ("override unknown section", None, ["optimizer.lr=1"], "optimizer: unknown key"),
    ("override nested typo", None, ["model.swa.windw=3"], "model.swa.windw: unknown key"),
    # Wrong types.
    ("string for int", "train: {steps: many}\n", [], "train.steps: expected int, got str 'many'"),
    ("float for int", "model: {hidden_size: 64.5}\n", [], "model.hidden_size: expected int, got float"),
    ("bool for int", "train: {steps: true}\n", [], "train.steps: expected int, got bool"),
    ("list for scalar", "optim: {lr: [1, 2]}\n", [], "optim.lr: expected float, got a list"),
    ("scalar for section", "model: 3\n", [], "model: expected mapping, got int"),
    ("yes for bool", "parallel: {sequence_parallel: yes}\n", [], "parallel.sequence_parallel: `yes` is ambiguous"),
    ("on for string", "run: {name: on}\n", [], "run.name: `on` is ambiguous in YAML"),
    ("bad literal", "model: {normalization: RMSnorm}\n", [], "model.normalization: expected 'RMSNorm' | 'LayerNorm', got str 'RMSnorm' (did you mean `RMSNorm`"),
    ("bad list item", "eval: {niah_lengths: [1024, big]}\n", [], "eval.niah_lengths.1: expected int"),
    ("override bad type", None, ["train.micro_batch_size=two"], "train.micro_batch_size: expected int"),
    # YAML-level problems.
    ("duplicate key", "train: {steps: 3}\ntrain: {steps: 4}\n", [], "duplicate key `train`"),
    ("nested duplicate key", "model:\n  hidden_size: 64\n  hidden_size: 128\n", [], "duplicate key `hidden_size`"),
    ("invalid yaml", "model: {hidden_size: 64\n", [], "invalid YAML"),
    ("not a mapping", "- a\n- b\n", [], "a recipe must be a mapping"),
    # Pattern and model consistency.
    ("bad pattern symbol", "model: {layer_pattern: XQ*2}\n", [], "model.layer_pattern: layer pattern 'XQ*2': unknown symbol 'Q'"),
    ("pattern length", "model: {layer_pattern: XS}\n", [], "pattern 'XS' has 2 layers but model.num_layers is 4"),
    ("heads vs tp", None, ["parallel.tensor_model_parallel_size=2", "model.num_attention_heads=3", "model.hidden_size=96"],
     "model.num_attention_heads: 3 attention heads are not divisible by tensor parallel size 2"),
    ("mlstm heads vs tp", None, ["parallel.tensor_model_parallel_size=2", "model.mlstm.num_heads=1"],
     "model.mlstm.num_heads: 1 mLSTM heads are not divisible by tensor parallel size 2"),
    ("kv heads vs tp", None, ["parallel.tensor_model_parallel_size=2", "model.num_query_groups=1"],
     "model.num_query_groups: 1 query groups (kv heads) are not divisible"),
    ("pp empty stage", None, ["parallel.pipeline_model_parallel_size=2", "model.layer_pattern=XSXS||"],
     "empty pipeline stage between '|' markers"),
    ("pp uneven", None, ["parallel.pipeline_model_parallel_size=3", "slurm.gpus_per_node=3", "train.global_batch_size=6"],
     "4 layers do not split evenly into 3 pipeline stages"),
    ("pp stage markers vs pp", None, ["model.layer_pattern=XS|XS"], "has 2 stages ('|' markers) but pipeline_model_parallel_size is 1"),
    ("seq vs chunk", None, ["train.seq_length=250"], "train.seq_length 250 is not divisible by mLSTM chunk_size 32"),
    ("world vs tp", None, ["parallel.tensor_model_parallel_size=4", "model.mlstm.num_heads=4"],
     "world size 2 (slurm.nodes x slurm.gpus_per_node) is not divisible"),
    ("batch vs dp", None, ["train.global_batch_size=6"], "train.global_batch_size: 6 is not divisible by micro_batch_size x data parallel = 2 x 2"),
    ("sequence parallel without tp", None, ["parallel.sequence_parallel=true"], "needs tensor_model_parallel_size > 1"),
    ("probability range", None, ["train.window_schedule.p_short=1.5"], "p_short: probability must be in [0, 1], got 1.5"),
    ("anneal range", None, ["train.window_schedule.anneal_fraction=-0.1"], "anneal_fraction: fraction must be in [0, 1]"),
    ("short window too long", None, ["train.window_schedule.short=512", "train.window_schedule.long=512"],
     "short window 512 is not shorter than train.seq_length 256"),
    ("fp8 on fp32", None, ["model.fp8=hybrid", "train.precision=fp32"], "model.fp8: FP8 trains on top of bf16"),
    ("fp8 without te", None, ["model.fp8=e4m3", "model.attention_backend=flex"], "attention_backend must be auto or te"),
    ("bad attention backend", None, ["model.attention_backend=flash"], "model.attention_backend: expected 'auto' | 'te' | 'flex' | 'torch'"),
    ("list schedule empty", None, ["train.window_schedule.kind=list"], "kind `list` needs a non-empty list"),
    ("negative lr", None, ["optim.lr=-1e-3"], "optim.lr: must be > 0"),
    ("warmup too long", None, ["optim.warmup_steps=20"], "optim.warmup_steps: must be in [0, train.steps=10]"),
    ("zero steps", None, ["train.steps=0"], "train.steps: must be >= 1, got 0"),
    ("weights mismatch", None, ["data.source=[a, b]", "data.weights=[1.0]"], "data.weights: 1 weights for 2 sources"),
    ("bad split", None, ["data.split=90,10"], "data.split: must be three non-negative numbers"),
    # Overrides themselves.
    ("override without =", None, ["train.steps"], "override `train.steps` must look like dotted.key=value"),
    ("override empty segment", None, ["train..steps=3"], "empty key segment"),
    ("override list index out of range", None, ["eval.niah_lengths.9=3"], "list index `9` out of range"),
    ("override bad yaml", None, ["optim.lr=[1,"], "invalid YAML"),
    ("override base", None, ["base=x.yaml"], "`base` cannot be overridden"),
    # Inheritance.
    ("missing base", "base: nowhere.yaml\n", [], "base recipe `nowhere.yaml` not found"),
    ("base wrong type", "base: 3\n", [], "`base` must be a path or a list of paths"),
    ("base cycle", "CYCLE", [], "`base:` inheritance cycle"),
    # Sweeps.
    ("sweep typo", "sweep: {gird: {optim.lr: [1, 2]}}\n", [], "sweep.gird: unknown key in section `sweep` (did you mean `grid`"),
    ("sweep empty values", "sweep: {grid: {optim.lr: []}}\n", [], "sweep values must be a non-empty list"),
    ("sweep bad key", "sweep: {grid: {optim.lrr: [1, 2]}}\n", [], "optim.lrr: unknown key"),
    ("sweep zip lengths", "sweep: {zip: {optim.lr: [1, 2], train.steps: [3]}}\n", [], "zip lists must have equal lengths"),
    ("missing recipe file", "MISSING", [], "recipe file not found"),
    # YAML 1.2 core schema: no octal by leading zero, no sexagesimal, binary or digit separators.
    ("leading zero int", "train: {steps: 0100}\n", [],
     "train.steps: `0100` is ambiguous in YAML (octal 64 in YAML 1.1, 100 in YAML 1.2): write 100"),
    ("leading zero override", None, ["train.steps=0100"], "train.steps: `0100` is ambiguous in YAML"),
    ("leading zero in a list", "eval: {niah_lengths: [1024, 04096]}\n", [], "eval.niah_lengths.1: `04096` is ambiguous"),
    ("leading zero for a string", "run: {name: 0100}\n", [], "run.name: `0100` is ambiguous in YAML"),
    ("leading zero negative", None, ["run.seed=-010"], "run.seed: `-010` is ambiguous in YAML (octal -8 in YAML 1.1, -10"),
    ("leading zero nullable", None, ["eval.window=08"], "eval.window: `08` is ambiguous in YAML (a string in YAML 1.1, 8"),
    ("sexagesimal", "train: {steps: 1:40}\n", [], "train.steps: expected int, got str '1:40' (YAML 1.1 would read 100"),
    ("sexagesimal override", None, ["train.steps=1:40"], "train.steps: expected int, got str '1:40'"),
    ("binary", None, ["train.steps=0b101"], "train.steps: expected int, got str '0b101' (YAML 1.1 would read 5"),
    ("underscore int", None, ["train.steps=1_000"], "train.steps: expected int, got str '1_000' (YAML 1.1 would read 1000"),
    ("underscore float", None, ["optim.lr=1_0.5e-3"], "optim.lr: expected float, got str '1_0.5e-3'"),
    ("signed hex", None, ["train.steps=-0x1F"], "train.steps: expected int, got str '-0x1F'"),
    ("date is a string", "run: {seed: 2024-01-01}\n", [], "run.seed: expected int, got str '2024-01-01'"),
    ("nan sign", None, ["optim.eps=-.nan"], "optim.eps: expected float, got str '-.nan'"),
    # Dict overrides merge key by key, so a mapping cannot smuggle in a bad key either.
    ("dict override typo", None, ["model.swa={windw: 3}"], "model.swa.windw: unknown key"),
    ("dict override bad type", None, ["model.mlstm={num_heads: two}"], "model.mlstm.num_heads: expected int"),
    ("dict sweep value typo", "sweep: {grid: {model.swa: [{window: 8}, {widow: 9}]}}\n", [],
     "sweep entry 1: model.swa.widow: unknown key"),
]


def _setup(tmp_path, text):
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    if text == "MISSING":
        return str(tmp_path / "nope.yaml")
    if text == "CYCLE":
        (tmp_path / "a.yaml").write_text("base: b.yaml\n")
        (tmp_path / "b.yaml").write_text("base: a.yaml\n")
        return str(tmp_path / "a.yaml")
    if text is None:
        return str(good)
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: good.yaml\n" + text if not text.startswith(("- ", "base:")) else text)
    return str(bad)


def test_good_recipe_is_good(tmp_path, capsys):
    assert main(["recipe", "resolve", _setup(tmp_path, None)]) == 0


def test_case_count():
    assert len(CASES) >= 30


def test_case_labels_are_unique():
    labels = [c[0] for c in CASES]
    assert len(set(labels)) == len(labels)


@pytest.mark.parametrize("label,text,overrides,expected,command",
                         [c if len(c) == 5 else (*c, None) for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(tmp_path, capsys, monkeypatch, label, text, overrides, expected, command):
    path = _setup(tmp_path, text)
    monkeypatch.chdir(tmp_path)
    before = sorted(os.listdir(tmp_path))
    if command is None:
        command = "count" if text is not None and text.startswith("sweep") else "resolve"
    args = (["recipe", "sweep", path, *overrides, "--count"] if command == "count"
            else ["recipe", "resolve", path, *overrides])
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1, err
    assert lines[0].startswith("swax: error: ")
    assert expected in lines[0], lines[0]
    assert sorted(os.listdir(tmp_path)) == before  # nothing written


def test_console_script_exit_code(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {stepz: 1}\n")
    proc = subprocess.run([sys.executable, "-m", "swax_megatron.cli", "recipe", "resolve", str(bad)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "train.stepz: unknown key" in proc.stderr
    assert proc.stdout == ""


def test_usage_error_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["recipe", "sweep", "x.yaml"])
    assert e.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1
