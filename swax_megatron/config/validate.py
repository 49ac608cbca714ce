"""Cross-field checks of a typed recipe: what no single field's type can say.

Each rule raises RecipeError naming the dotted key that is wrong and where it was set. The rules
are the ones a job would otherwise fail on minutes (or hours) later: patterns that do not match
the layer count, head counts that do not split over tensor parallelism, batches that do not split
over data parallelism, windows longer than the sequence.
"""

from __future__ import annotations

import math
from typing import Dict, Optional

from . import pattern as pattern_mod
from .errors import RecipeError
from .schema import Recipe


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


def validate(recipe: Recipe, origins: Optional[Dict[str, str]] = None) -> None:
    c = _Checker(origins or {})
    r, m, p, t = recipe, recipe.model, recipe.parallel, recipe.train
    tp, pp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size

    # Positive sizes.
    for path, value in [
        ("model.hidden_size", m.hidden_size), ("model.num_layers", m.num_layers),
        ("model.num_attention_heads", m.num_attention_heads), ("model.mlstm.num_heads", m.mlstm.num_heads),
        ("model.mlstm.chunk_size", m.mlstm.chunk_size), ("model.swa.window", m.swa.window),
        ("parallel.tensor_model_parallel_size", tp), ("parallel.pipeline_model_parallel_size", pp),
        ("train.steps", t.steps), ("train.micro_batch_size", t.micro_batch_size),
        ("train.global_batch_size", t.global_batch_size), ("train.seq_length", t.seq_length),
        ("train.log_every", t.log_every), ("train.eval_every", t.eval_every),
        ("train.max_consecutive_nonfinite", t.max_consecutive_nonfinite),
        ("checkpoint.every_steps", r.checkpoint.every_steps), ("checkpoint.keep_last", r.checkpoint.keep_last),
        ("slurm.nodes", r.slurm.nodes), ("slurm.gpus_per_node", r.slurm.gpus_per_node),
        ("slurm.cpus_per_task", r.slurm.cpus_per_task),
    ]:
        c.require(value >= 1, path, f"must be >= 1, got {value}")
    for path, value in [("model.vocab_size", m.vocab_size), ("model.num_query_groups", m.num_query_groups),
                        ("model.ffn_hidden_size", m.ffn_hidden_size),
                        ("slurm.array_parallelism", r.slurm.array_parallelism)]:
        c.require(value is None or value >= 1, path, f"must be >= 1 (or null), got {value}")
    c.require(t.eval_iters >= 0, "train.eval_iters", f"must be >= 0, got {t.eval_iters}")

    # Layer pattern.
    try:
        layers = pattern_mod.expand(m.layer_pattern)
        stages = pattern_mod.split_for_pipeline(m.layer_pattern, pp)
    except pattern_mod.PatternError as e:
        raise RecipeError(str(e), path="model.layer_pattern", origin=c.origin("model.layer_pattern")) from None
    c.require(len(layers) == m.num_layers, "model.layer_pattern",
              f"pattern {m.layer_pattern!r} has {len(layers)} layers but model.num_layers is {m.num_layers}")
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
        c.require(t.seq_length % x.chunk_size == 0, "model.mlstm.chunk_size",
                  f"train.seq_length {t.seq_length} is not divisible by mLSTM chunk_size {x.chunk_size}")
        c.require(x.gate_soft_cap > 0, "model.mlstm.gate_soft_cap", "must be > 0")
        c.require(len(x.fgate_bias_init) == 2 and x.fgate_bias_init[0] <= x.fgate_bias_init[1],
                  "model.mlstm.fgate_bias_init", "must be [low, high] with low <= high")
    c.require(m.output_logit_soft_cap is None or m.output_logit_soft_cap > 0,
              "model.output_logit_soft_cap", "must be > 0 or null")
    c.require(m.rope_base > 0, "model.rope_base", "must be > 0")
    c.require(m.fp8 is None or t.precision in ("bf16", "auto"), "model.fp8",
              f"FP8 trains on top of bf16: set train.precision to bf16 (it is {t.precision})")
    c.require(m.fp8 is None or m.attention_backend in ("auto", "te"), "model.fp8",
              f"FP8 runs through Transformer Engine: attention_backend must be auto or te "
              f"(it is {m.attention_backend})")

    # Windows.
    ws = t.window_schedule
    c.require(0.0 <= ws.p_short <= 1.0, "train.window_schedule.p_short",
              f"probability must be in [0, 1], got {ws.p_short}")
    c.require(0.0 <= ws.anneal_fraction <= 1.0, "train.window_schedule.anneal_fraction",
              f"fraction must be in [0, 1], got {ws.anneal_fraction}")
    c.require(ws.short >= 1 and ws.long >= 1, "train.window_schedule", "windows must be >= 1")
    if ws.kind == "stochastic":
        c.require(ws.short <= ws.long, "train.window_schedule.short",
                  f"short window {ws.short} is longer than the long window {ws.long}")
    if ws.kind == "list":
        c.require(len(ws.windows) > 0, "train.window_schedule.windows", "kind `list` needs a non-empty list")
        c.require(all(w >= 1 for w in ws.windows), "train.window_schedule.windows", "windows must be >= 1")
    elif ws.windows:
        c.require(False, "train.window_schedule.windows", f"only used with kind `list` (kind is `{ws.kind}`)")
    if has_swa and ws.kind == "stochastic":
        # A window >= seq_length is full attention: legal, but then the draw changes nothing.
        c.require(ws.short < t.seq_length, "train.window_schedule.short",
                  f"short window {ws.short} is not shorter than train.seq_length {t.seq_length}: "
                  f"the stochastic schedule would have no effect")

    # Parallel layout and batches.
    world = r.world_size
    c.require(world % (tp * pp) == 0, "parallel",
              f"world size {world} (slurm.nodes x slurm.gpus_per_node) is not divisible by "
              f"tensor x pipeline parallel = {tp} x {pp}")
    dp = world // (tp * pp)
    c.require(t.global_batch_size % (t.micro_batch_size * dp) == 0, "train.global_batch_size",
              f"{t.global_batch_size} is not divisible by micro_batch_size x data parallel "
              f"= {t.micro_batch_size} x {dp}")
    c.require(not p.sequence_parallel or tp > 1, "parallel.sequence_parallel",
              "sequence parallelism needs tensor_model_parallel_size > 1")
    c.require(not p.sequence_parallel or t.seq_length % tp == 0, "parallel.sequence_parallel",
              f"train.seq_length {t.seq_length} is not divisible by tensor parallel size {tp}")

    # Optimiser and schedule.
    o = r.optim
    c.require(o.lr > 0 and math.isfinite(o.lr), "optim.lr", f"must be > 0, got {o.lr}")
    c.require(0 <= o.min_lr <= o.lr, "optim.min_lr", f"must be in [0, optim.lr], got {o.min_lr}")
    c.require(0 <= o.warmup_steps <= t.steps, "optim.warmup_steps",
              f"must be in [0, train.steps={t.steps}], got {o.warmup_steps}")
    c.require(0 <= o.beta1 < 1 and 0 <= o.beta2 < 1, "optim", "betas must be in [0, 1)")
    c.require(o.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
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
    parts = d.split.split(",")
    c.require(len(parts) == 3 and all(x.strip().replace(".", "", 1).isdigit() for x in parts)
              and sum(float(x) for x in parts) > 0, "data.split",
              f"must be three non-negative numbers like '969,30,1', got {d.split!r}")
    c.require(d.tokenizer_vocab_size >= 260, "data.tokenizer_vocab_size",
              "must be >= 260 (256 byte-fallback pieces plus specials)")

    # Checkpoints.
    ck = r.checkpoint
    c.require(ck.every_minutes is None or ck.every_minutes > 0, "checkpoint.every_minutes",
              "must be > 0 or null")
    c.require(r.slurm.signal_seconds >= 0, "slurm.signal_seconds", "must be >= 0")
