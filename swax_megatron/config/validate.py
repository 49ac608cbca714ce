"""Checks of a typed recipe that no field's type can say: ranges, names, cross-field rules.

Each rule raises RecipeError naming the dotted key that is wrong and where it was set. The rules
are the ones a job would otherwise fail on minutes (or hours) later, or worse, run on silently:
sizes no machine can hold, zero or negative counts, patterns that do not match the layer count,
head counts that do not split over tensor parallelism, batches that do not split over data
parallelism, windows longer than the sequence, names that would escape the output folder.

Upper bounds are far above anything trainable (the paper's 7B: hidden 4096, 32 layers, sequences
of 131072 for evaluation) and exist so that a typo (`hidden_size=10**20`) is one line here, not a
crash or an allocation of gigabytes later:

    model.hidden_size, heads, query groups     <= 131,072 (MAX_WIDTH)
    model.ffn_hidden_size                      <= 1,048,576
    model.num_layers, layers of the pattern    <= 4,096 (pattern.MAX_LAYERS)
    model.vocab_size, data.tokenizer_vocab_size <= 16,777,216 (MAX_VOCAB)
    train.seq_length, every window and length  <= 16,777,216 tokens (MAX_TOKENS)
    train.steps and every step count            <= 1,000,000,000 (MAX_STEPS)
    batch sizes                                 <= 16,777,216 sequences (MAX_BATCH)
    slurm.nodes <= 65,536, gpus_per_node <= 1,024, cpus_per_task <= 4,096, signal_seconds <= 65,535
    run.seed in [0, 2**31 - 1] (numpy seeds are 32-bit; megatron adds offsets)
    run.name, slurm.job_name: one path component of [A-Za-z0-9_.+=-], starting with a letter or
    digit, at most 200 characters including a sweep entry's `__key=value` suffix (MAX_NAME)

Every float is finite (loader.coerce) and every string free of control characters (loader).
"""

from __future__ import annotations

import re
import typing
from typing import Any, Dict, List, Optional, Tuple

from ..ops.mlstm.chunk_rules import chunk_size_problem
from . import pattern as pattern_mod
from .errors import RecipeError, shorten
from .schema import Recipe

MAX_WIDTH = 1 << 17
MAX_FFN = 1 << 20
MAX_VOCAB = 1 << 24
MAX_TOKENS = 1 << 24
MAX_STEPS = 10 ** 9
MAX_BATCH = 1 << 24
MAX_COUNT = 10 ** 6  # eval iterations, checkpoints kept, array parallelism
MAX_NODES, MAX_GPUS_PER_NODE, MAX_CPUS_PER_TASK = 1 << 16, 1 << 10, 1 << 12
MAX_SIGNAL_SECONDS = 65535  # sbatch --signal's limit
MAX_SEED = 2 ** 31 - 1
MAX_NAME = 200  # a run directory is <name>-<hash8>, and a file name has at most 255 bytes

# (dotted key, lowest, highest) of every int field; a list field's items each; null passes where
# the type allows it. Bounds that depend on other fields (warmup <= steps) are rules below.
INT_RANGES: List[Tuple[str, int, int]] = [
    ("run.seed", 0, MAX_SEED),
    ("model.vocab_size", 1, MAX_VOCAB),
    ("model.hidden_size", 1, MAX_WIDTH),
    ("model.num_layers", 1, pattern_mod.MAX_LAYERS),
    ("model.num_attention_heads", 1, MAX_WIDTH),
    ("model.num_query_groups", 1, MAX_WIDTH),
    ("model.ffn_hidden_size", 1, MAX_FFN),
    ("model.swa.window", 1, MAX_TOKENS),
    ("model.mlstm.num_heads", 1, MAX_WIDTH),
    ("model.mlstm.chunk_size", 1, MAX_TOKENS),
    ("parallel.tensor_model_parallel_size", 1, MAX_NODES * MAX_GPUS_PER_NODE),
    ("parallel.pipeline_model_parallel_size", 1, MAX_NODES * MAX_GPUS_PER_NODE),
    ("parallel.ulysses_size", 1, MAX_NODES * MAX_GPUS_PER_NODE),
    ("train.recompute.num_layers", 1, pattern_mod.MAX_LAYERS),
    ("train.steps", 1, MAX_STEPS),
    ("train.micro_batch_size", 1, MAX_BATCH),
    ("train.global_batch_size", 1, MAX_BATCH),
    ("train.seq_length", 1, MAX_TOKENS),
    ("train.window_schedule.short", 1, MAX_TOKENS),
    ("train.window_schedule.long", 1, MAX_TOKENS),
    ("train.window_schedule.windows", 1, MAX_TOKENS),
    ("train.log_every", 1, MAX_STEPS),
    ("train.eval_every", 1, MAX_STEPS),
    ("train.eval_iters", 0, MAX_COUNT),
    ("train.max_consecutive_nonfinite", 1, MAX_STEPS),
    ("optim.warmup_steps", 0, MAX_STEPS),
    ("data.tokenizer_vocab_size", 260, MAX_VOCAB),  # 256 byte-fallback pieces plus specials
    ("checkpoint.every_steps", 1, MAX_STEPS),
    ("checkpoint.keep_last", 1, MAX_COUNT),
    ("eval.windows", 1, MAX_TOKENS),
    ("eval.lengths", 1, MAX_TOKENS),
    ("eval.samples", 1, MAX_COUNT),
    ("eval.seed", 0, MAX_SEED),
    ("eval.batch_size", 1, MAX_BATCH),
    ("eval.ppl_length_factor", 1, 1024),
    ("eval.ppl_sequences", 1, MAX_COUNT),
    ("eval.ppl_buckets", 0, MAX_TOKENS),
    ("eval.probe_samples", 0, 1024),
    ("slurm.nodes", 1, MAX_NODES),
    ("slurm.gpus_per_node", 1, MAX_GPUS_PER_NODE),
    ("slurm.cpus_per_task", 1, MAX_CPUS_PER_TASK),
    ("slurm.array_parallelism", 1, MAX_COUNT),
    ("slurm.signal_seconds", 0, MAX_SIGNAL_SECONDS),
]

# Names that become a path component, a job name or an sbatch argument: a leading letter or
# digit (no `-` option, no `.`/`..`, no hidden file), then only characters no shell, path or
# SLURM treats specially. `=` and `+` occur in sweep suffixes (`__lr=1e+01`).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+=-]*")
_SLURM_WORD = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # partition, account, site
# What `sbatch --time` takes (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS), as launch.minutes.
_SLURM_TIME = re.compile(r"(?:[0-9]{1,4}-)?[0-9]{1,7}(?::[0-9]{1,2}){0,2}|infinite|unlimited", re.I)


class _Checker:
    def __init__(self, origins: Dict[str, str]):
        self.origins = origins

    def origin(self, path: str) -> Optional[str]:
        while path:
            if path in self.origins:
                return self.origins[path]
            path = path.rpartition(".")[0]
        return None

    def require(self, ok: bool, path: str, message: str) -> None:
        if not ok:
            raise RecipeError(message, path=path, origin=self.origin(path))


def _get(recipe: Recipe, path: str) -> Any:
    node: Any = recipe
    for part in path.split("."):
        node = getattr(node, part)
    return node


def _check_int_ranges(c: _Checker, recipe: Recipe) -> None:
    for path, lo, hi in INT_RANGES:
        value = _get(recipe, path)
        items = enumerate(value) if isinstance(value, list) else [(None, value)]
        for i, v in items:
            where = path if i is None else f"{path}.{i}"
            if v is None:
                continue
            if v < lo:
                c.require(False, where, f"must be >= {lo}{' (or null)' if _nullable(path) else ''}, "
                                        f"got {v}")
            c.require(v <= hi, where, f"must be <= {hi:,}, got {v:,}")


def _nullable(path: str) -> bool:
    section, _, name = path.rpartition(".")
    return type(None) in typing.get_args(typing.get_type_hints(type(_get(Recipe(), section)))[name])


def _check_name(c: _Checker, path: str, value: Optional[str], rx: re.Pattern, what: str) -> None:
    if value is None:
        return
    c.require(value != "", path, "must not be empty")
    c.require(len(value) <= MAX_NAME, path,
              f"{shorten(value, 40)!r} is {len(value)} characters (at most {MAX_NAME}"
              + ("; sweep entries add `__key=value` suffixes)" if path == "run.name" else ")"))
    c.require(rx.fullmatch(value) is not None, path, f"{value!r} is not {what}")


def _check_names(c: _Checker, r: Recipe) -> None:
    name_rule = "a plain name: a letter or digit, then letters, digits and _ . + = -"
    _check_name(c, "run.name", r.run.name, _NAME, name_rule)
    s = r.slurm
    _check_name(c, "slurm.job_name", s.job_name, _NAME, name_rule)
    _check_name(c, "slurm.account", s.account, _SLURM_WORD, "a SLURM account name")
    _check_name(c, "slurm.site", s.site, _SLURM_WORD,
                "a site profile name (slurm/site/<site>.env)")
    if s.partition is not None:
        for part in s.partition.split(","):  # sbatch takes a comma-separated list
            _check_name(c, "slurm.partition", part, _SLURM_WORD, "a SLURM partition name")
    c.require(_SLURM_TIME.fullmatch(s.time) is not None, "slurm.time",
              f"{shorten(s.time, 40)!r} is not a SLURM time (MM, HH:MM:SS or D-HH:MM:SS)")
    for i, arg in enumerate(s.extra_args):
        # sbatch takes the first word that is not an option as the script to run.
        c.require(arg.startswith("-"), f"slurm.extra_args.{i}",
                  f"{shorten(arg, 40)!r} is not an sbatch option (--name=value)")


# Transformer Engine's FP8 GEMMs need every matrix dimension divisible by 16 (TE checks 8 on the
# leading and 16 on the last dimension of each operand, and each dimension is the last one in
# some GEMM of forward or backward), 32 under MXFP8 (its scaling blocks).
FP8_MULTIPLE = {"delayed": 16, "tensorwise": 16, "blockwise": 16, "mxfp8": 32}


def fp8_gemm_dims(r: Recipe, layers: str) -> List[Tuple[str, str, int]]:
    """(key to blame, what, size) of every dimension a TE FP8 GEMM sees on one TP rank. The
    mLSTM gate projection (2 rows per head) is left out: it never runs in FP8 (models/specs.py)."""
    m, p, t = r.model, r.parallel, r.train
    tp = p.tensor_model_parallel_size
    dims = [("model.hidden_size", "hidden size", m.hidden_size),
            ("model.ffn_hidden_size", "MLP width per TP rank", m.ffn_hidden_size // tp)]
    if any(s in layers for s in "SG"):
        heads, groups = m.num_attention_heads, m.num_query_groups or m.num_attention_heads
        d = m.hidden_size // heads
        dims += [("model.num_attention_heads", "attention q/k/v projection per TP rank",
                  (heads + 2 * groups) * d // tp),
                 ("model.num_attention_heads", "attention heads' width per TP rank", heads * d // tp)]
    if "X" in layers:
        dqk, dv = m.mlstm.head_dims(m.hidden_size)
        local = m.mlstm.num_heads // tp
        dims += [("model.mlstm.num_heads", "mLSTM q/k/v/o projection per TP rank",
                  local * (2 * dqk + 2 * dv)),
                 ("model.mlstm.num_heads", "mLSTM heads' value width per TP rank", local * dv)]
    tokens = t.micro_batch_size * t.seq_length // (tp if p.sequence_parallel else 1)
    dims.append(("train.micro_batch_size", "tokens per micro-batch per TP rank", tokens))
    return dims


def _check_fp8_shapes(c: "_Checker", r: Recipe, layers: str) -> None:
    multiple = FP8_MULTIPLE[r.model.fp8_recipe]
    for key, what, size in fp8_gemm_dims(r, layers):
        c.require(size % multiple == 0, key,
                  f"FP8 ({r.model.fp8_recipe} scaling) needs GEMM dimensions divisible by "
                  f"{multiple}: the {what} is {size}")


def validate(recipe: Recipe, origins: Optional[Dict[str, str]] = None) -> None:
    c = _Checker(origins or {})
    r, m, p, t = recipe, recipe.model, recipe.parallel, recipe.train
    tp, pp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size

    # Ranges first: the rules below may then do arithmetic and expand the pattern safely.
    _check_int_ranges(c, r)
    _check_names(c, r)

    # Layer pattern.
    try:
        layers = pattern_mod.expand(m.layer_pattern)
        stages = pattern_mod.split_for_pipeline(m.layer_pattern, pp)
    except pattern_mod.PatternError as e:
        raise RecipeError(str(e), path="model.layer_pattern", origin=c.origin("model.layer_pattern")) from None
    c.require(len(layers) == m.num_layers, "model.layer_pattern",
              f"pattern {pattern_mod.shown(m.layer_pattern)} has {len(layers)} layers but model.num_layers is {m.num_layers}")
    c.require(all(stages), "parallel.pipeline_model_parallel_size",
              f"{pp} pipeline stages leave a stage without layers")
    has_attn, has_mlstm, has_swa = any(s in layers for s in "SG"), "X" in layers, "S" in layers

    # Attention heads.
    if has_attn:
        heads = m.num_attention_heads
        groups = m.num_query_groups or heads
        c.require(m.hidden_size % heads == 0, "model.num_attention_heads",
                  f"hidden_size {m.hidden_size} is not divisible by {heads} attention heads")
        c.require(heads % groups == 0, "model.num_query_groups",
                  f"{heads} attention heads are not divisible by {groups} query groups")
        c.require(heads % tp == 0, "model.num_attention_heads",
                  f"{heads} attention heads are not divisible by tensor parallel size {tp}")
        c.require(groups % tp == 0, "model.num_query_groups",
                  f"{groups} query groups (kv heads) are not divisible by tensor parallel size {tp}")
    # mLSTM heads and dims.
    if has_mlstm:
        x = m.mlstm
        c.require(x.num_heads % tp == 0, "model.mlstm.num_heads",
                  f"{x.num_heads} mLSTM heads are not divisible by tensor parallel size {tp}")
        for name, factor in (("qk_dim_factor", x.qk_dim_factor), ("v_dim_factor", x.v_dim_factor)):
            dim = m.hidden_size * factor
            c.require(factor > 0 and dim == int(dim) and int(dim) % x.num_heads == 0,
                      f"model.mlstm.{name}",
                      f"hidden_size x {name} = {dim:g} must be a positive multiple of "
                      f"{x.num_heads} mLSTM heads")
        # The op that will run decides (ops/mlstm/chunk_rules.py), so a chunk size the GPU kernel
        # refuses fails here, not at the first GPU step.
        problem = chunk_size_problem(x.kernel, x.chunk_size, t.seq_length)
        c.require(problem is None, "model.mlstm.chunk_size", str(problem))
    x = m.mlstm
    c.require(x.gate_soft_cap > 0, "model.mlstm.gate_soft_cap", f"must be > 0, got {x.gate_soft_cap}")
    c.require(len(x.fgate_bias_init) == 2 and x.fgate_bias_init[0] <= x.fgate_bias_init[1],
              "model.mlstm.fgate_bias_init", "must be [low, high] with low <= high")
    c.require(x.norm_epsilon > 0, "model.mlstm.norm_epsilon", f"must be > 0, got {x.norm_epsilon}")
    c.require(m.norm_epsilon > 0, "model.norm_epsilon", f"must be > 0, got {m.norm_epsilon}")
    c.require(m.init_method_std > 0, "model.init_method_std", f"must be > 0, got {m.init_method_std}")
    c.require(m.output_logit_soft_cap is None or m.output_logit_soft_cap > 0,
              "model.output_logit_soft_cap", "must be > 0 or null")
    c.require(m.rope_base > 0, "model.rope_base", "must be > 0")
    c.require(m.fp8 is None or t.precision in ("bf16", "auto"), "model.fp8",
              f"FP8 trains on top of bf16: set train.precision to bf16 (it is {t.precision})")
    c.require(m.fp8 is None or m.attention_backend in ("auto", "te"), "model.fp8",
              f"FP8 runs through Transformer Engine: attention_backend must be auto or te "
              f"(it is {m.attention_backend})")
    c.require(not m.fp8_attention or m.fp8 is not None, "model.fp8_attention",
              "FP8 attention needs model.fp8 (hybrid or e4m3)")
    # megatron hands fp8_dpa to these two TE recipes only (fp8_utils.get_fp8_recipe).
    c.require(not m.fp8_attention or m.fp8_recipe in ("delayed", "tensorwise"),
              "model.fp8_attention", f"FP8 attention needs fp8_recipe delayed or tensorwise "
              f"(it is {m.fp8_recipe})")
    if m.fp8 is not None:
        _check_fp8_shapes(c, r, layers)

    # Windows.
    ws = t.window_schedule
    c.require(0.0 <= ws.p_short <= 1.0, "train.window_schedule.p_short",
              f"probability must be in [0, 1], got {ws.p_short}")
    c.require(0.0 <= ws.anneal_fraction <= 1.0, "train.window_schedule.anneal_fraction",
              f"fraction must be in [0, 1], got {ws.anneal_fraction}")
    if ws.kind == "stochastic":
        c.require(ws.short <= ws.long, "train.window_schedule.short",
                  f"short window {ws.short} is longer than the long window {ws.long}")
    if ws.kind == "list":
        c.require(len(ws.windows) > 0, "train.window_schedule.windows", "kind `list` needs a non-empty list")
    elif ws.windows:
        c.require(False, "train.window_schedule.windows", f"only used with kind `list` (kind is `{ws.kind}`)")
    if has_swa and ws.kind == "stochastic":
        # A window >= seq_length is full attention: legal, but then the draw changes nothing.
        c.require(ws.short < t.seq_length, "train.window_schedule.short",
                  f"short window {ws.short} is not shorter than train.seq_length {t.seq_length}: "
                  f"the stochastic schedule would have no effect")

    # Parallel layout and batches.
    world = r.world_size
    ulysses = p.ulysses_size
    c.require(world % (tp * pp * ulysses) == 0, "parallel",
              f"world size {world} (slurm.nodes x slurm.gpus_per_node) is not divisible by "
              f"tensor x pipeline x ulysses = {tp} x {pp} x {ulysses}")
    dp = max(1, world // (tp * pp * ulysses))
    c.require(t.global_batch_size % (t.micro_batch_size * dp) == 0, "train.global_batch_size",
              f"{t.global_batch_size} is not divisible by micro_batch_size x data parallel "
              f"= {t.micro_batch_size} x {dp}")
    c.require(not p.sequence_parallel or tp > 1, "parallel.sequence_parallel",
              "sequence parallelism needs tensor_model_parallel_size > 1")
    c.require(not p.sequence_parallel or t.seq_length % (tp * ulysses) == 0, "parallel.sequence_parallel",
              f"train.seq_length {t.seq_length} is not divisible by tensor x ulysses size {tp} x {ulysses}")
    if ulysses > 1:  # models/ulysses.py: whole sequences for a share of each mixer's heads
        c.require(t.seq_length % (2 * ulysses) == 0, "parallel.ulysses_size",
                  f"train.seq_length {t.seq_length} is not divisible by 2 x ulysses_size = {2 * ulysses} "
                  f"(megatron's context-parallel layout: 2 chunks per rank)")
        if has_attn:
            c.require(m.num_attention_heads % (tp * ulysses) == 0, "parallel.ulysses_size",
                      f"{m.num_attention_heads} attention heads are not divisible by tensor x ulysses "
                      f"= {tp} x {ulysses}")
            c.require(m.attention_backend != "te", "parallel.ulysses_size",
                      "Ulysses wraps the local attention kernels: set model.attention_backend to flex, "
                      "torch or auto (Transformer Engine's own context parallelism is not wired)")
            c.require(m.fp8 is None, "parallel.ulysses_size",
                      "FP8 runs through Transformer Engine's attention, which Ulysses does not wrap")
        if has_mlstm:
            c.require(m.mlstm.num_heads % (tp * ulysses) == 0, "parallel.ulysses_size",
                      f"{m.mlstm.num_heads} mLSTM heads are not divisible by tensor x ulysses "
                      f"= {tp} x {ulysses}")

    _check_recompute(c, r, layers, stages)

    # Optimiser and schedule.
    o = r.optim
    c.require(o.lr > 0, "optim.lr", f"must be > 0, got {o.lr}")
    c.require(0 <= o.min_lr <= o.lr, "optim.min_lr", f"must be in [0, optim.lr], got {o.min_lr}")
    c.require(0 <= o.warmup_steps <= t.steps, "optim.warmup_steps",
              f"must be in [0, train.steps={t.steps}], got {o.warmup_steps}")
    c.require(0 <= o.beta1 < 1 and 0 <= o.beta2 < 1, "optim", "betas must be in [0, 1)")
    c.require(o.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
    c.require(o.eps > 0, "optim.eps", f"must be > 0, got {o.eps}")
    c.require(o.clip_grad >= 0, "optim.clip_grad", "must be >= 0 (0 disables clipping)")
    c.require(0 < o.decay_fraction <= 1, "optim.decay_fraction", "must be in (0, 1]")

    # Data.
    d = r.data
    if isinstance(d.source, list):
        c.require(len(d.source) > 0, "data.source", "needs at least one dataset prefix")
        if d.weights is not None:
            c.require(len(d.weights) == len(d.source), "data.weights",
                      f"{len(d.weights)} weights for {len(d.source)} sources")
    else:
        c.require(d.source.startswith("embedded:"), "data.source",
                  "must be `embedded:<name>` or a list of indexed-dataset prefixes")
        c.require(d.weights is None, "data.weights", "only used with a list of sources")
    if d.weights is not None:
        c.require(all(w >= 0 for w in d.weights) and sum(d.weights) > 0, "data.weights",
                  "must be non-negative with a positive sum")
    c.require(all(s != "" for s in (d.source if isinstance(d.source, list) else [d.source])),
              "data.source", "a dataset prefix must not be empty")
    # [0-9], not str.isdigit(): that also takes '²', which float() refuses.
    parts = [x.strip() for x in d.split.split(",")]
    c.require(len(parts) == 3 and all(re.fullmatch(r"[0-9]{1,15}(?:\.[0-9]{0,15})?", x) for x in parts)
              and sum(float(x) for x in parts) > 0, "data.split",
              f"must be three non-negative numbers like '969,30,1', got {shorten(d.split, 40)!r}")

    # Checkpoints.
    ck = r.checkpoint
    c.require(ck.every_minutes is None or ck.every_minutes > 0, "checkpoint.every_minutes",
              "must be > 0 or null")
    c.require(t.exit_after_minutes is None or t.exit_after_minutes > 0, "train.exit_after_minutes",
              f"must be > 0 or null, got {t.exit_after_minutes}")

    _check_eval(c, r)


# train.recompute.modules: megatron's core_attn (S/G attention core) and mlp (every layer's MLP),
# and the X mixer's mlstm_cell (models/mlstm_layer.py).
RECOMPUTE_MODULES = ("core_attn", "mlp", "mlstm_cell")


def _check_recompute(c: _Checker, r: Recipe, layers: str, stages: List[str]) -> None:
    rc = r.train.recompute
    for i, name in enumerate(rc.modules):
        c.require(name in RECOMPUTE_MODULES, f"train.recompute.modules.{i}",
                  f"unknown module {shorten(name, 40)!r}; expected one of "
                  f"{', '.join(RECOMPUTE_MODULES)}")
        c.require(name not in rc.modules[:i], f"train.recompute.modules.{i}",
                  f"module {name!r} is listed twice")
    for i, symbol in enumerate(rc.layer_types):
        c.require(symbol in ("S", "G", "X"), f"train.recompute.layer_types.{i}",
                  f"unknown layer type {shorten(symbol, 40)!r}; expected S, G or X")
        c.require(symbol not in rc.layer_types[:i], f"train.recompute.layer_types.{i}",
                  f"layer type {symbol!r} is listed twice")
    if rc.granularity == "selective":
        c.require(len(rc.modules) > 0, "train.recompute.modules",
                  "selective recomputation needs at least one module")
    if rc.granularity == "full":
        kinds = [s for s in rc.layer_types if s in layers]
        c.require(len(kinds) > 0, "train.recompute.layer_types",
                  f"full recomputation of layer types {rc.layer_types} but pattern "
                  f"{pattern_mod.shown(r.model.layer_pattern)} has none of them")
        longest = max(len(s) for s in stages)
        c.require(rc.num_layers <= longest, "train.recompute.num_layers",
                  f"{rc.num_layers} layers per recompute unit, but a pipeline stage has at most "
                  f"{longest} layers")


def _check_eval(c: _Checker, r: Recipe) -> None:
    """The eval section (`swax eval`): known task names, depths in percent, sane buckets."""
    from ..eval.names import EVAL_TASKS, PROBE_TASKS  # plain Python: no torch

    e = r.eval
    c.require(e.probe_task in PROBE_TASKS, "eval.probe_task",
              f"unknown probe task {shorten(e.probe_task, 40)!r}; expected one of {', '.join(PROBE_TASKS)}")
    c.require(e.windows is None or len(e.windows) > 0, "eval.windows",
              "must list at least one window (or be null: model.swa.window)")
    c.require(len(e.tasks) > 0, "eval.tasks", "must list at least one task")
    for i, name in enumerate(e.tasks):
        c.require(name in EVAL_TASKS, f"eval.tasks.{i}",
                  f"unknown evaluation task {shorten(name, 40)!r}; expected one of {', '.join(EVAL_TASKS)}")
        c.require(name not in e.tasks[:i], f"eval.tasks.{i}", f"task {name!r} is listed twice")
    c.require(len(e.lengths) > 0, "eval.lengths", "must list at least one context length")
    for i, depth in enumerate(e.depths):
        c.require(0.0 <= depth <= 100.0, f"eval.depths.{i}",
                  f"depth is a percentage of the context: must be in [0, 100], got {depth}")
    c.require(len(e.depths) > 0, "eval.depths", "must list at least one depth")
    ppl_length = e.ppl_length_factor * r.train.seq_length
    c.require(ppl_length <= MAX_TOKENS, "eval.ppl_length_factor",
              f"{e.ppl_length_factor} x train.seq_length {r.train.seq_length} = {ppl_length:,} tokens "
              f"is over {MAX_TOKENS:,}")
    if e.ppl_buckets is not None:
        b = e.ppl_buckets
        c.require(len(b) >= 2 and all(y > x for x, y in zip(b, b[1:])), "eval.ppl_buckets",
                  f"bucket edges must be at least two increasing token positions, got {b}")
        c.require(b[0] < ppl_length, "eval.ppl_buckets",
                  f"the first edge {b[0]} is beyond the sequence length {ppl_length} "
                  f"(eval.ppl_length_factor x train.seq_length)")
