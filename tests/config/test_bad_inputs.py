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
    ("bad list item", "train: {window_schedule: {kind: list, windows: [16, big]}}\n", [],
     "train.window_schedule.windows.1: expected int"),
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
    # FP8: Transformer Engine's GEMM shape rules, per TP rank, before a GPU ever sees them.
    ("fp8 hidden size", None, ["model.fp8=hybrid", "train.precision=bf16", "model.hidden_size=72"],
     "model.hidden_size: FP8 (delayed scaling) needs GEMM dimensions divisible by 16: the hidden size is 72"),
    ("fp8 mlstm projection per rank", None, ["model.fp8=hybrid", "train.precision=bf16",
                                              "model.mlstm.qk_dim_factor=0.375",
                                              "parallel.tensor_model_parallel_size=2"],
     "model.mlstm.num_heads: FP8 (delayed scaling) needs GEMM dimensions divisible by 16: "
     "the mLSTM q/k/v/o projection per TP rank is 88"),
    ("fp8 mxfp8 blocks", None, ["model.fp8=hybrid", "train.precision=bf16", "model.fp8_recipe=mxfp8",
                                "model.hidden_size=80", "model.num_attention_heads=5"],
     "model.hidden_size: FP8 (mxfp8 scaling) needs GEMM dimensions divisible by 32: the hidden size is 80"),
    ("fp8 attention without fp8", None, ["model.fp8_attention=true"],
     "model.fp8_attention: FP8 attention needs model.fp8"),
    ("fp8 attention mxfp8", None, ["model.fp8=hybrid", "train.precision=bf16", "model.fp8_attention=true",
                                   "model.fp8_recipe=mxfp8"], "needs fp8_recipe delayed or tensorwise (it is mxfp8)"),
    ("chunk the GPU kernel refuses", None, ["model.mlstm.chunk_size=48"],
     "model.mlstm.chunk_size: chunk_size must be a power of two >= 16 for the triton mLSTM kernel (kernel 'auto' runs it on CUDA), got 48"),
    ("chunk triton refuses", None, ["model.mlstm.kernel=triton", "model.mlstm.chunk_size=8"],
     "power of two >= 16 for the triton mLSTM kernel, got 8"),
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
    ("override list index out of range", None, ["model.mlstm.fgate_bias_init.9=3"], "list index `9` out of range"),
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
    ("leading zero in a list", "train: {window_schedule: {kind: list, windows: [16, 032]}}\n", [],
     "train.window_schedule.windows.1: `032` is ambiguous"),
    ("leading zero for a string", "run: {name: 0100}\n", [], "run.name: `0100` is ambiguous in YAML"),
    ("leading zero negative", None, ["run.seed=-010"], "run.seed: `-010` is ambiguous in YAML (octal -8 in YAML 1.1, -10"),
    ("leading zero nullable", None, ["model.vocab_size=08"], "model.vocab_size: `08` is ambiguous in YAML (a string in YAML 1.1, 8"),
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
    # Numbers out of their field's range: zero, negative, NaN, inf, or beyond any machine.
    ("eval window: no such key", None, ["eval.window=0"], "eval.window: unknown key"),
    ("model window zero", None, ["model.swa.window=0"], "model.swa.window: must be >= 1, got 0"),
    ("model window negative", None, ["model.swa.window=-5"], "model.swa.window: must be >= 1, got -5"),
    ("exit after negative", None, ["train.exit_after_minutes=-1"], "train.exit_after_minutes: must be > 0 or null, got -1.0"),
    ("exit after zero", None, ["train.exit_after_minutes=0"], "train.exit_after_minutes: must be > 0 or null, got 0.0"),
    ("exit after inf", None, ["train.exit_after_minutes=.inf"], "train.exit_after_minutes: must be a finite number, got inf"),
    ("every minutes zero", None, ["checkpoint.every_minutes=0"], "checkpoint.every_minutes: must be > 0 or null"),
    ("eps nan", None, ["optim.eps=.nan"], "optim.eps: must be a finite number, got nan"),
    ("eps nan in file", "optim: {eps: .NaN}\n", [], "bad.yaml:2: optim.eps: must be a finite number, got nan"),
    ("eps zero", None, ["optim.eps=0"], "optim.eps: must be > 0, got 0.0"),
    ("lr inf", None, ["optim.lr=.inf"], "optim.lr: must be a finite number, got inf"),
    ("lr overflow", None, ["optim.lr=1e400"], "optim.lr: must be a finite number, got inf"),
    ("clip inf", None, ["optim.clip_grad=.inf"], "optim.clip_grad: must be a finite number"),
    ("weight decay nan", None, ["optim.weight_decay=.nan"], "optim.weight_decay: must be a finite number"),
    ("list item nan", None, ["model.mlstm.fgate_bias_init.0=.nan"], "model.mlstm.fgate_bias_init.0: must be a finite number"),
    ("list window zero", None, ["train.window_schedule.kind=list", "train.window_schedule.windows=[16, 0]"],
     "train.window_schedule.windows"),
    ("rope base inf", None, ["model.rope_base=.inf"], "model.rope_base: must be a finite number, got inf"),
    ("init std zero", None, ["model.init_method_std=0"], "model.init_method_std: must be > 0, got 0.0"),
    ("init std nan", None, ["model.init_method_std=.nan"], "model.init_method_std: must be a finite number"),
    ("norm eps negative", None, ["model.norm_epsilon=-1e-6"], "model.norm_epsilon: must be > 0, got -1e-06"),
    ("mlstm norm eps zero", None, ["model.mlstm.norm_epsilon=0"], "model.mlstm.norm_epsilon: must be > 0"),
    ("igate nan", None, ["model.mlstm.igate_bias_init=.nan"], "model.mlstm.igate_bias_init: must be a finite number"),
    ("fgate inf", None, ["model.mlstm.fgate_bias_init=[3.0, .inf]"], "model.mlstm.fgate_bias_init.1: must be a finite number"),
    ("qk factor inf", None, ["model.mlstm.qk_dim_factor=.inf"], "model.mlstm.qk_dim_factor: must be a finite number"),
    ("soft cap inf", None, ["model.output_logit_soft_cap=.inf"], "model.output_logit_soft_cap: must be a finite number"),
    ("gate soft cap zero", None, ["model.mlstm.gate_soft_cap=0"], "model.mlstm.gate_soft_cap: must be > 0"),
    ("p_short nan", None, ["train.window_schedule.p_short=.nan"], "train.window_schedule.p_short: must be a finite number"),
    ("weights inf", None, ["data.source=[a, b]", "data.weights=[1.0, .inf]"], "data.weights.1: must be a finite number"),
    ("eval iters negative", None, ["train.eval_iters=-1"], "train.eval_iters: must be >= 0, got -1"),
    ("seed negative", None, ["run.seed=-1"], "run.seed: must be >= 0, got -1"),
    ("seed beyond 31 bits", None, ["run.seed=4294967296"], "run.seed: must be <= 2,147,483,647, got 4,294,967,296"),
    ("signal seconds", None, ["slurm.signal_seconds=100000"], "slurm.signal_seconds: must be <= 65,535"),
    ("signal seconds negative", None, ["slurm.signal_seconds=-1"], "slurm.signal_seconds: must be >= 0"),
    ("keep last zero", None, ["checkpoint.keep_last=0"], "checkpoint.keep_last: must be >= 1, got 0"),
    ("tokenizer vocab small", None, ["data.tokenizer_vocab_size=100"], "data.tokenizer_vocab_size: must be >= 260"),
    ("short window zero", None, ["train.window_schedule.short=0"], "train.window_schedule.short: must be >= 1, got 0"),
    ("window list zero", None, ["train.window_schedule.kind=list", "train.window_schedule.windows=[16, 0]"],
     "train.window_schedule.windows.1: must be >= 1, got 0"),
    ("split unicode digit", None, ["data.split=1,2,\u00b3"], "data.split: must be three non-negative numbers"),
    ("split exponent", None, ["data.split=1e400,1,1"], "data.split: must be three non-negative numbers"),
    ("empty source prefix", None, ["data.source=[a, '']"], "data.source: a dataset prefix must not be empty"),
    # Sizes no machine has, and integers no field can hold: one line, before any allocation.
    ("hidden size 10**20", None, ["model.hidden_size=100000000000000000000"],
     "model.hidden_size: `100000000000000000000` is out of range: a recipe integer is 64-bit"),
    ("hidden size 10**18", None, ["model.hidden_size=1000000000000000000"],
     "model.hidden_size: must be <= 131,072, got 1,000,000,000,000,000,000"),
    ("int64 max", None, ["train.steps=9223372036854775807"], "train.steps: must be <= 1,000,000,000"),
    ("int64 max plus one", None, ["train.steps=9223372036854775808"], "train.steps: `9223372036854775808` is out of range"),
    ("steps 10**400", None, ["train.steps=1" + "0" * 400], "train.steps: `10000000000000000000...000000000000 (401 characters)` is out of range"),
    ("steps 5000 digits", None, ["train.steps=" + "7" * 5000], "train.steps: `77777777777777777777...777777777777 (5000 characters)` is out of range"),
    ("steps 5000 digits in file", "train: {steps: " + "7" * 5000 + "}\n", [], "bad.yaml:2: train.steps: `777"),
    ("float for int 5000 digits", None, ["optim.lr=" + "7" * 5000], "optim.lr: `777"),
    ("string for 5000 digits", None, ["run.name=" + "7" * 5000], "run.name: `777"),
    ("leading zero 5000 digits", None, ["train.steps=0" + "7" * 5000], "train.steps: `0777"),
    ("hex too large", None, ["train.steps=0x" + "F" * 17], "is out of range: a recipe integer is 64-bit"),
    ("steps too many", None, ["train.steps=10000000000"], "train.steps: must be <= 1,000,000,000, got 10,000,000,000"),
    ("seq too long", None, ["train.seq_length=1073741824"], "train.seq_length: must be <= 16,777,216"),
    ("layers too many", None, ["model.num_layers=100000"], "model.num_layers: must be <= 4,096"),
    ("heads too many", None, ["model.num_attention_heads=1000000"], "model.num_attention_heads: must be <= 131,072"),
    ("ffn too wide", None, ["model.ffn_hidden_size=10000000"], "model.ffn_hidden_size: must be <= 1,048,576"),
    ("vocab too big", None, ["model.vocab_size=100000000"], "model.vocab_size: must be <= 16,777,216"),
    ("batch too big", None, ["train.global_batch_size=1000000000"], "train.global_batch_size: must be <= 16,777,216"),
    ("nodes too many", None, ["slurm.nodes=100000"], "slurm.nodes: must be <= 65,536"),
    ("tp absurd", None, ["parallel.tensor_model_parallel_size=1000000000000"], "parallel.tensor_model_parallel_size: must be <="),
    ("pattern 10**20 repeats", None, ["model.layer_pattern=XS*99999999999999999999"],
     "model.layer_pattern: layer pattern 'XS*99999999999999999999': repeat count 99999999999999999999 is larger than the 4096 layers"),
    ("pattern 3e9 repeats", None, ["model.layer_pattern=X*3000000000"], "repeat count 3000000000 is larger than the 4096 layers"),
    ("pattern 5000-digit repeats", None, ["model.layer_pattern=X*" + "9" * 5000], "repeat count 99999999999999999999... is larger"),
    ("pattern too many layers", None, ["model.layer_pattern=XS*2048|XS*2048"], "layer pattern 'XS*2048|XS*2048' has 8192 layers (at most 4096)"),
    ("pattern unicode digits", None, ["model.layer_pattern=XS*\u0663"], "cannot parse"),
    ("sweep too large", "sweep: {grid: {train.steps: [%s], optim.warmup_steps: [%s]}}\n" % (
        ", ".join(str(i) for i in range(1, 201)), ", ".join(str(i) for i in range(100))), [],
     "sweep: sweep has 200 x 100 = 20,000 entries (at most 10,000)"),
    # YAML documents that expand without bound.
    ("alias bomb", "sweep:\n  grid:\n    data.source: [&a [x, x, x, x, x, x, x, x, x, x]]\n" + "".join(
        f"    optim.lr{i}: [&{c} [{', '.join(['*' + p] * 10)}]]\n"
        for i, (p, c) in enumerate(zip("abcdefgh", "bcdefghi"))), [],
     "YAML aliases expand the document to"),
    ("recursive alias", "x: &a [1, *a]\n", [], "refers to a node that contains it"),
    ("deep nesting", "x: " + "[" * 40 + "]" * 40 + "\n", [], "bad.yaml: the document nests 41 levels deep (at most 32)"),
    ("very deep nesting", "x: " + "[" * 5000 + "]" * 5000 + "\n", [], "bad.yaml: the document nests more than 32 levels deep"),
    ("alias chain depth", "x: [&a [1]]\n" + "".join(f"y{i}: &a{i} [*{'a' if i == 0 else f'a{i - 1}'}]\n" for i in range(40)),
     [], "the document nests"),
    # Control characters: in the file, escaped in a quoted string, in an override value or key.
    ("NUL in file", "run: {description: a\x00b}\n", [], "bad.yaml:2: invalid YAML: unacceptable character '\\x00'"),
    ("BEL in file", "run:\n  description: a\x07b\n", [], "bad.yaml:3: invalid YAML: unacceptable character '\\x07'"),
    ("escaped control in file", 'run: {name: "a\\x07b"}\n', [], "bad.yaml:2: run.name: contains the control character '\\x07' at position 1"),
    ("escaped newline in name", 'run: {name: "a\\nb"}\n', [], "run.name: contains the control character '\\n'"),
    ("escaped NUL in description", 'run: {description: "a\\0b"}\n', [], "run.description: contains the control character '\\x00'"),
    ("override control char", None, ["run.description=a\x07b"], "override `run.description=a\\x07b`:1: invalid YAML: unacceptable character '\\x07'"),
    ("override escaped tab", None, ['run.name="a\\tb"'], "run.name: contains the control character '\\t'"),
    ("override list item control", None, ['slurm.extra_args=["--x\\x1b[2J"]'], "slurm.extra_args.0: contains the control character '\\x1b'"),
    ("override key control char", None, ["run.na\x07me=x"], "run.na\\x07me: unknown key"),
    ("override newline", None, ["run.name=a\nb: c"], "override `run.name=a\\nb: c`:2: invalid YAML"),
    # Overrides that index into something that is not a list or section.
    ("index into list item", None, ["model.mlstm.fgate_bias_init.0.x=5"],
     "model.mlstm.fgate_bias_init.0: cannot set `model.mlstm.fgate_bias_init.0.x`: "
     "`model.mlstm.fgate_bias_init.0` is float 3.0, not a section or a list"),
    ("index into scalar field", None, ["train.steps.x=5"], "train.steps: cannot set `train.steps.x`: `train.steps` is int 10"),
    ("non-digit list index", None, ["model.mlstm.fgate_bias_init.x=5"],
     "model.mlstm.fgate_bias_init.x: `x` is not a list index (0..1)"),
    ("unicode digit list index", None, ["model.mlstm.fgate_bias_init.\u00b2=5"], "`\u00b2` is not a list index"),
    ("5000-digit list index", None, ["model.mlstm.fgate_bias_init." + "9" * 5000 + "=5"], "is not a list index"),
    # Names that become paths, job names and sbatch arguments.
    ("run name traversal", None, ["run.name=../../x"], "run.name: '../../x' is not a plain name"),
    ("run name empty", None, ["run.name=''"], "run.name: must not be empty"),
    ("run name empty value", None, ["run.name="], "run.name: must not be empty"),
    ("run name slash", None, ["run.name=a/b"], "run.name: 'a/b' is not a plain name"),
    ("run name option", None, ["run.name=-rf"], "run.name: '-rf' is not a plain name"),
    ("run name dot", None, ["run.name=."], "run.name: '.' is not a plain name"),
    ("run name hidden", None, ["run.name=.x"], "run.name: '.x' is not a plain name"),
    ("run name space", None, ["run.name=a b"], "run.name: 'a b' is not a plain name"),
    ("run name unicode", None, ["run.name=caf\u00e9"], "is not a plain name"),
    ("run name too long", None, ["run.name=" + "a" * 201], "run.name: 'aaaaaaaaaaaaaaaaaaaa...aaaaaaaaaaaa (201 characters)' is 201 characters (at most 200; sweep entries add `__key=value` suffixes)"),
    ("sweep suffix too long", "run: {name: %s}\nsweep: {grid: {train.window_schedule.long: [32, 64]}}\n" % ("a" * 195), [],
     "bad.yaml:2: run.name: 'aaaaaaaaaaaaaaaaaaaa...aaa__long=32 (204 characters)' is 204 characters", "count"),
    ("job name traversal", None, ["slurm.job_name=../x"], "slurm.job_name: '../x' is not a plain name"),
    ("job name shell", None, ["slurm.job_name=a;rm"], "slurm.job_name: 'a;rm' is not a plain name"),
    ("partition with space", None, ["slurm.partition=gpu --x"], "slurm.partition: 'gpu --x' is not a SLURM partition name"),
    ("partition list hole", None, ["slurm.partition=a,,b"], "slurm.partition: must not be empty"),
    ("account traversal", None, ["slurm.account=../x"], "slurm.account: '../x' is not a SLURM account name"),
    ("site traversal", None, ["slurm.site=../../etc/passwd"], "slurm.site: '../../etc/passwd' is not a site profile name"),
    ("site empty", None, ["slurm.site="], "slurm.site: must not be empty"),
    ("time word", None, ["slurm.time=soon"], "slurm.time: 'soon' is not a SLURM time"),
    ("time option", None, ["slurm.time=1 --x"], "slurm.time: '1 --x' is not a SLURM time"),
    ("extra arg not an option", None, ["slurm.extra_args=[--exclusive, train.sh]"],
     "slurm.extra_args.1: 'train.sh' is not an sbatch option"),
    # A sweep file is resolved as one of its entries, never as the un-swept base.
    ("sweep without index", "sweep: {grid: {train.window_schedule.long: [32, 64]}}\n", [],
     "bad.yaml: recipe has a sweep block of 2 entries: choose one with `swax recipe sweep", "resolve"),
    ("empty sweep block", "sweep:\n", [], "bad.yaml:2: sweep: empty sweep block", "resolve"),
    ("empty sweep block count", "sweep:\n", [], "bad.yaml:2: sweep: empty sweep block"),
    ("empty sweep mapping", "sweep: {}\n", [], "sweep: empty sweep block", "resolve"),
    ("empty sweep grid", "sweep: {grid: {}}\n", [], "sweep has no grid, zip or seeds", "resolve"),
    ("sweep not a mapping", "sweep: [1]\n", [], "sweep: must be a mapping with grid / zip / seeds", "resolve"),
    ("sweep seeds too large", "sweep: {seeds: [1, 99999999999999999999]}\n", [], "seeds must be integers"),
    # Explicit tags and YAML 1.1 types: one line from the loader, never PyYAML's traceback.
    ("tagged int not an int", None, ["train.steps=!!int abc"], "invalid YAML: `abc` is not a YAML 1.2 integer"),
    ("tagged int underscore", None, ["train.steps=!!int 1_000"], "invalid YAML: `1_000` is not a YAML 1.2 integer"),
    ("tagged int empty", "train: {steps: !!int }\n", [], "bad.yaml:2: invalid YAML: `` is not a YAML 1.2 integer"),
    ("tagged float not a float", None, ["optim.lr=!!float abc"], "invalid YAML: `abc` is not a YAML 1.2 float"),
    ("tagged bool not a bool", None, ["model.tie_embeddings=!!bool maybe"], "invalid YAML: `maybe` is not a YAML 1.2 boolean"),
    ("binary tag", None, ["run.name=!!binary aGVsbG8="], "invalid YAML: tag !!binary is not a recipe type"),
    ("timestamp tag", "run: {description: !!timestamp 2001-99-99}\n", [], "bad.yaml:2: invalid YAML: tag !!timestamp is not a recipe type"),
    ("set tag", None, ["data.source=!!set {a}"], "invalid YAML: tag !!set is not a recipe type"),
    ("python tag", None, ["run.name=!!python/object/apply:os.system [ls]"], "invalid YAML: could not determine a constructor"),
    ("map tag on a list", None, ["model=!!map [1]"], "invalid YAML: expected a mapping node, but found sequence"),
    ("merge of a scalar", "model: {<<: 5}\n", [], "invalid YAML: expected a mapping or list of mappings for merging"),
    ("yes as a key", "model: {yes: 1}\n", [], "bad.yaml:2: key `yes` is ambiguous in YAML (a boolean in YAML 1.1): quote it"),
    ("int as a key", "model: {1: 1}\n", [], "bad.yaml:2: keys must be strings, got 1"),
    ("surrogate key", 'model: {"\\ud800": 1}\n', [], "bad.yaml:2: model.\\ud800: unknown key in section `model`"),
    ("surrogate string", 'run: {description: "\\ud800"}\n', [], "run.description: contains the control character '\\ud800'"),
    ("base is not a recipe", "base: /dev/zero\n", [], "/dev/zero: larger than 16,777,216 characters: not a recipe"),
    ("base with NUL", 'base: "a\\0b"\n', [], "base recipe `a\\x00b` not found"),
    ("dict sweep value typo", "sweep: {grid: {model.swa: [{window: 8}, {widow: 9}]}}\n", [],
     "sweep entry 1: model.swa.widow: unknown key"),
    # The eval section (`swax eval`): task names from swax_megatron.eval, ranges, depths in percent.
    ("eval unknown task", None, ["eval.tasks=[niah_single_9]"], "eval.tasks.0: unknown evaluation task 'niah_single_9'"),
    ("eval task twice", None, ["eval.tasks=[mqar, mqar]"], "eval.tasks.1: task 'mqar' is listed twice"),
    ("eval no tasks", None, ["eval.tasks=[]"], "eval.tasks: must list at least one task"),
    ("eval task not a string", None, ["eval.tasks=[[mqar]]"], "eval.tasks.0: expected str"),
    ("eval window zero", None, ["eval.windows=[64, 0]"], "eval.windows.1: must be >= 1"),
    ("eval windows empty", None, ["eval.windows=[]"], "eval.windows: must list at least one window"),
    ("eval length zero", None, ["eval.lengths=[0]"], "eval.lengths.0: must be >= 1, got 0"),
    ("eval lengths empty", None, ["eval.lengths=[]"], "eval.lengths: must list at least one context length"),
    ("eval length huge", None, ["eval.lengths=[100000000]"], "eval.lengths.0: must be <= 16,777,216"),
    ("eval depth fraction above 100", None, ["eval.depths=[50, 101]"],
     "eval.depths.1: depth is a percentage of the context: must be in [0, 100], got 101.0"),
    ("eval depth negative", None, ["eval.depths=[-1]"], "eval.depths.0: depth is a percentage"),
    ("eval depth nan", None, ["eval.depths=[.nan]"], "eval.depths.0: must be a finite number"),
    ("eval depths empty", None, ["eval.depths=[]"], "eval.depths: must list at least one depth"),
    ("eval samples zero", None, ["eval.samples=0"], "eval.samples: must be >= 1, got 0"),
    ("eval seed negative", None, ["eval.seed=-1"], "eval.seed: must be >= 0, got -1"),
    ("eval batch zero", None, ["eval.batch_size=0"], "eval.batch_size: must be >= 1, got 0"),
    ("eval ppl factor zero", None, ["eval.ppl_length_factor=0"], "eval.ppl_length_factor: must be >= 1, got 0"),
    ("eval ppl factor huge", None, ["train.seq_length=65536", "eval.ppl_length_factor=512"],
     "eval.ppl_length_factor: 512 x train.seq_length 65536 = 33,554,432 tokens is over 16,777,216"),
    ("eval ppl factor over range", None, ["eval.ppl_length_factor=2000"], "eval.ppl_length_factor: must be <= 1,024"),
    ("eval ppl sequences zero", None, ["eval.ppl_sequences=0"], "eval.ppl_sequences: must be >= 1, got 0"),
    ("eval ppl buckets not increasing", None, ["eval.ppl_buckets=[0, 64, 64]"],
     "eval.ppl_buckets: bucket edges must be at least two increasing token positions"),
    ("eval ppl buckets one edge", None, ["eval.ppl_buckets=[0]"], "eval.ppl_buckets: bucket edges must be at least two"),
    ("eval ppl buckets negative", None, ["eval.ppl_buckets=[-1, 8]"], "eval.ppl_buckets.0: must be >= 0 (or null), got -1"),
    ("eval ppl buckets past the end", None, ["eval.ppl_buckets=[5000, 6000]"],
     "eval.ppl_buckets: the first edge 5000 is beyond the sequence length 2048"),
    ("eval typo", None, ["eval.sample=3"], "eval.sample: unknown key"),
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
    assert len(CASES) >= 200  # issue 10: every bad input of the class, not only those first found


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


def test_alias_bomb_is_refused_quickly(tmp_path):
    """A few hundred bytes of nested aliases (10**9 nodes expanded) made `--count` hang."""
    lines = ["sweep:", "  grid:", "    data.source: [&a [x, x, x, x, x, x, x, x, x, x]]"]
    for i, (p, c) in enumerate(zip("abcdefgh", "bcdefghi")):
        lines.append(f"    k{i}: [&{c} [{', '.join(['*' + p] * 10)}]]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    assert bomb.stat().st_size < 700
    proc = subprocess.run([sys.executable, "-m", "swax_megatron.cli", "recipe", "sweep", str(bomb), "--count"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "YAML aliases expand the document to 1,234,567,922 nodes" in proc.stderr
