"""Every valid TP x PP x Ulysses x DP layout of a recipe on N GPUs: memory per GPU by component,
pipeline bubble, and tokens/day at an assumed MFU; the best few first.

Rules a layout must meet (world = tp x pp x ulysses x dp): the recipe at that layout passes
config/validate.py (attention and mLSTM heads divisible by tp x ulysses, kv groups by tp, the
sequence by tp x ulysses and 2 x ulysses, the layer pattern split into pp stages, the global
batch a multiple of micro batch x dp, no Transformer Engine attention or FP8 under Ulysses),
with sequence parallelism on whenever tp > 1 (it only saves memory); and tp stays within one
node (tensor parallelism all-reduces every layer: NVLink, not the network).

Memory per GPU, for the pipeline stage that needs the most (mixed precision as the engine sets
up megatron's DDP and optimizer, training/engine.py: gradients reduced in fp32):
  weights      params x 2 bytes (bf16/fp16) or 4 (fp32)
  gradients    params x 4 (megatron's fp32 gradient buffer)
  optimizer    Adam: fp32 master weights (bf16/fp16 only) + two moments; SGD: master weights
               (bf16/fp16) + momentum; divided by dp x ulysses (the ranks that hold the same
               weights) with the distributed optimizer
  activations  per microbatch (model.py), times the microbatches a stage holds at once under
               1F1B: min(pp - stage, microbatches); plus the largest backward transient
A layout fits when that total is at most `usable` x the GPU's memory (default 0.9: CUDA context,
NCCL buffers and allocator fragmentation take the rest).

Time: the recipe's model FLOPs per token (training/flops.py, window-aware, averaged over the
window schedule) run at `mfu` x peak on every GPU while it computes; the pipeline idles for a
bubble of (pp - 1) / (microbatches + pp - 1) of the step, and recomputation adds the forward
FLOPs it repeats. Communication is not modelled: among layouts with equal predictions, the one
with the least model parallelism (tp x pp x ulysses) ranks first.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

from ..config.errors import RecipeError
from ..config.pattern import split_for_pipeline
from ..config.validate import validate
from ..training import flops as flops_mod
from .model import Kernels, Recompute, Shape, stage_activations, stage_parameters

GRANULARITIES = ("none", "selective", "full")
SECONDS_PER_DAY = 86400
FP32_MASTER = 4  # bytes per parameter of the optimizer's fp32 copy of bf16/fp16 weights


@dataclass(frozen=True)
class Cluster:
    gpus: int
    gpu_memory: float  # bytes
    gpu_flops: float  # dense peak FLOP/s at the recipe's precision
    mfu: float = 0.4
    gpus_per_node: int = 8
    usable: float = 0.9


def window_mix(schedule) -> Dict[int, float]:
    """The S-layer windows of a training run and the fraction of steps at each (the expected
    cost of a stochastic schedule; train.window_schedule)."""
    if schedule.kind == "fixed":
        return {schedule.long: 1.0}
    if schedule.kind == "list":
        mix: Dict[int, float] = {}
        for w in schedule.windows:
            mix[w] = mix.get(w, 0.0) + 1.0 / len(schedule.windows)
        return mix
    short = schedule.p_short * (1.0 - schedule.anneal_fraction)
    if schedule.short == schedule.long:
        return {schedule.long: 1.0}
    return {schedule.short: short, schedule.long: 1.0 - short}


def train_flops_per_token(shape: Shape, seq: int, mix: Dict[int, float]) -> Dict[str, float]:
    """Model FLOPs per token (forward + backward), by component, averaged over the windows."""
    d = _dims(shape)
    out: Dict[str, float] = {}
    for window, weight in mix.items():
        for k, v in flops_mod.forward_flops_per_token(d, seq, window).items():
            out[k] = out.get(k, 0.0) + weight * flops_mod.TRAIN_FACTOR * v
    return out


def _dims(shape: Shape) -> flops_mod.ModelDims:
    return flops_mod.ModelDims(hidden=shape.hidden, ffn=shape.ffn, vocab=shape.vocab,
                               symbols=shape.symbols, heads=shape.heads, groups=shape.groups,
                               head_dim=shape.head_dim, mlstm_heads=shape.mlstm_heads,
                               dqk=shape.dqk, dv=shape.dv, chunk=shape.chunk)


def recompute_flops_per_token(shape: Shape, seq: int, mix: Dict[int, float],
                              recompute: Recompute) -> float:
    """Forward FLOPs per token that recomputation runs a second time (whole model)."""
    if recompute.granularity == "none":
        return 0.0
    d = _dims(shape)
    total = 0.0
    for window, weight in mix.items():
        per_layer = {"S": flops_mod.attention_flops(d, seq, window),
                     "G": flops_mod.attention_flops(d, seq, None), "X": flops_mod.mlstm_flops(d, seq)}
        core = {"S": flops_mod.attention_core_flops(d, seq, window),
                "G": flops_mod.attention_core_flops(d, seq, None),
                "X": flops_mod.mlstm_cell_flops(d, seq)}
        for sym in shape.symbols:
            if recompute.granularity == "full":
                if sym in recompute.layer_types:
                    total += weight * (per_layer[sym] + flops_mod.mlp_flops(d))
            else:
                if ("mlstm_cell" if sym == "X" else "core_attn") in recompute.modules:
                    total += weight * core[sym]
                if "mlp" in recompute.modules:
                    total += weight * flops_mod.mlp_flops(d)
    return total


@dataclass
class Layout:
    tp: int
    pp: int
    ulysses: int
    dp: int
    microbatches: int
    recompute: str  # the cheapest granularity that fits; "none" also when nothing fits
    fits: bool
    memory: Dict[str, float]  # bytes per GPU (worst stage), by component, with the dist. optimizer
    memory_by_recompute: Dict[str, float]  # total bytes per GPU for none / selective / full
    memory_without_distributed_optimizer: float
    activations_by_type: Dict[str, float]  # bytes per GPU (worst stage, all in-flight microbatches)
    bubble: float  # fraction of the step the pipeline idles
    tokens_per_day: float
    days: float  # for the recipe's train.steps
    notes: List[str] = field(default_factory=list)

    @property
    def model_parallel(self) -> int:
        return self.tp * self.pp * self.ulysses

    def as_dict(self) -> dict:
        return asdict(self)


def _divisors(n: int) -> List[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


def candidate(recipe, tp: int, pp: int, ulysses: int, cluster: Cluster):
    """The recipe at this layout on this cluster: sequence parallelism where tp > 1, the
    distributed optimizer, the cluster's nodes."""
    r = copy.deepcopy(recipe)
    p = r.parallel
    p.tensor_model_parallel_size, p.pipeline_model_parallel_size, p.ulysses_size = tp, pp, ulysses
    p.sequence_parallel = tp > 1
    p.use_distributed_optimizer = True
    per_node = cluster.gpus_per_node if cluster.gpus % cluster.gpus_per_node == 0 else 1
    r.slurm.nodes, r.slurm.gpus_per_node = cluster.gpus // per_node, per_node
    return r


def layout_problem(recipe, shape: Shape, tp: int, pp: int, ulysses: int, cluster: Cluster) -> Optional[str]:
    """Why (tp, pp, ulysses) is not a valid layout for this recipe on this cluster; None if it is.
    The recipe rules are config/validate.py's (heads by tp x ulysses for both mixers, kv groups
    by tp, the sequence, the pipeline stages, the batch): the recipe at this layout must pass
    them; the planner adds that tensor parallelism stays within a node."""
    world = cluster.gpus
    if world % (tp * pp * ulysses):
        return f"{world} GPUs are not divisible by tp x pp x ulysses = {tp * pp * ulysses}"
    if tp > cluster.gpus_per_node:
        return f"tp {tp} spans more than one node of {cluster.gpus_per_node} GPUs"
    try:
        validate(candidate(recipe, tp, pp, ulysses, cluster))
    except RecipeError as e:
        return f"{e.path}: {e.problem}" if e.path else e.problem
    return None


def in_flight_microbatches(pp: int, stage: int, microbatches: int) -> int:
    """Microbatches whose activations stage `stage` holds at once under megatron's 1F1B
    schedule: the warm-up forwards (pp - stage - 1) and the one in its steady state."""
    return min(pp - stage, microbatches)


def planned_precision(recipe) -> str:
    """"auto" is bf16 on a GPU (models/config.py); the planner plans for GPUs."""
    return "bf16" if recipe.train.precision == "auto" else recipe.train.precision


def evaluate(recipe, shape: Shape, tp: int, pp: int, ulysses: int, cluster: Cluster,
             kernels: Kernels = Kernels()) -> Layout:
    """Memory, bubble and throughput of one valid layout."""
    t, o = recipe.train, recipe.optim
    dp = cluster.gpus // (tp * pp * ulysses)
    m = t.global_batch_size // (t.micro_batch_size * dp)
    w = 4 if planned_precision(recipe) == "fp32" else 2
    half = w == 2
    opt_per_param = (FP32_MASTER if half else 0) + (8 if o.optimizer == "adamw" else 4)
    replicas = dp * ulysses
    sp = tp > 1
    tokens = t.micro_batch_size * t.seq_length
    stages = split_for_pipeline(shape.pattern, pp)
    base = Recompute.from_config(t.recompute)

    def stage_memory(k: int, granularity: str, distributed: bool) -> Dict[str, float]:
        params = stage_parameters(shape, tp, pp, k)["total"]
        acts = stage_activations(shape, stages[k], last=k == pp - 1, act_bytes=w,
                                 micro_batch=t.micro_batch_size, tp=tp, sp=sp, ulysses=ulysses,
                                 kernels=kernels, recompute=base.with_granularity(granularity),
                                 window=max(window_mix(t.window_schedule)))
        in_flight = in_flight_microbatches(pp, k, m)
        return {"weights": params * w, "gradients": params * 4.0,
                "optimizer": params * opt_per_param / (replicas if distributed else 1),
                "activations": acts.stored_per_token * tokens * in_flight,
                "transient": acts.transient_per_token * tokens,
                "_by_type": {k2: v * tokens * in_flight for k2, v in acts.by_type.items()}}

    def worst(granularity: str, distributed: bool) -> Dict[str, float]:
        best = None
        for k in range(pp):
            mem = stage_memory(k, granularity, distributed)
            mem["total"] = sum(v for key, v in mem.items() if not key.startswith("_"))
            mem["stage"] = k
            if best is None or mem["total"] > best["total"]:
                best = mem
        return best

    by_recompute = {g: worst(g, True) for g in GRANULARITIES}
    limit = cluster.usable * cluster.gpu_memory
    chosen = next((g for g in GRANULARITIES if by_recompute[g]["total"] <= limit), None)
    fits = chosen is not None
    chosen = chosen or GRANULARITIES[-1]
    mem = by_recompute[chosen]
    mix = window_mix(t.window_schedule)
    model_flops = sum(train_flops_per_token(shape, t.seq_length, mix).values())
    extra = recompute_flops_per_token(shape, t.seq_length, mix, base.with_granularity(chosen))
    bubble = (pp - 1) / (m + pp - 1)
    busy = cluster.gpus * cluster.gpu_flops * cluster.mfu * (1.0 - bubble)
    tokens_per_s = busy / (model_flops + extra)
    total_tokens = t.steps * t.global_batch_size * t.seq_length
    tokens_per_day = tokens_per_s * SECONDS_PER_DAY
    return Layout(
        tp=tp, pp=pp, ulysses=ulysses, dp=dp, microbatches=m, recompute=chosen, fits=fits,
        memory={k: v for k, v in mem.items() if not k.startswith("_")},
        memory_by_recompute={g: by_recompute[g]["total"] for g in GRANULARITIES},
        memory_without_distributed_optimizer=worst(chosen, False)["total"],
        activations_by_type=mem["_by_type"], bubble=bubble, tokens_per_day=tokens_per_day,
        days=total_tokens / tokens_per_day)



def plan(recipe, cluster: Cluster, kernels: Optional[Kernels] = None) -> List[Layout]:
    """Every valid layout, best first: those that fit before those that do not; then by
    tokens/day, less model parallelism, less memory. kernels: default Kernels.for_gpu."""
    shape = Shape.from_recipe(recipe)
    kernels = Kernels.for_gpu(recipe.model) if kernels is None else kernels
    out = []
    for tp in _divisors(cluster.gpus):
        for pp in _divisors(cluster.gpus // tp):
            for u in _divisors(cluster.gpus // (tp * pp)):
                if layout_problem(recipe, shape, tp, pp, u, cluster) is None:
                    out.append(evaluate(recipe, shape, tp, pp, u, cluster, kernels))
    out.sort(key=lambda L: (not L.fits, -round(L.tokens_per_day, 6), L.model_parallel,
                            L.memory["total"]))
    return out
