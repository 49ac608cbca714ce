"""SwaxConfig: megatron's TransformerConfig plus the layer pattern, the SWA window and the mLSTM
settings, and `swax_config_from_recipe` to build it from a resolved recipe.

Megatron's own `__post_init__` runs first (head/TP divisibility, init methods, kv_channels ...),
then ours checks what only a SWAX model knows: the pattern, the mLSTM head split over TP, the
pipeline split. Every check raises at construction, i.e. before any rank builds a module.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, Optional, Tuple

import torch
import torch.nn.functional as F
from megatron.core.transformer import TransformerConfig

from ..config.pattern import PatternError, expand, split_for_pipeline
from ..ops.mlstm.chunk_rules import chunk_size_problem
from ..config.schema import default_ffn_hidden_size  # noqa: F401  (re-exported)

VOCAB_MULTIPLE = 128  # vocab padding; a multiple of 128 divides by every power-of-two TP <= 128


class SwaxConfigError(ValueError):
    """A SWAX model configuration that cannot be built."""


def padded_vocab_size(vocab_size: int, multiple: int = VOCAB_MULTIPLE) -> int:
    """Vocabulary rounded up so the vocab-parallel embedding splits evenly at any TP that divides
    `multiple`; independent of TP so checkpoints reshard across TP sizes."""
    return -(-int(vocab_size) // multiple) * multiple


@dataclass
class SwaxConfig(TransformerConfig):
    """TransformerConfig for SWAX hybrids. See `swax_megatron/config/schema.py` for the recipe side."""

    # --- pattern and attention ---------------------------------------------------------------
    layer_pattern: str = "XS"
    """One symbol per layer: S sliding-window attention, G global attention, X mLSTM; `UNIT*N`
    repeats, `|` marks pipeline-stage boundaries. Its length must equal num_layers."""

    swa_window: int = 2048
    """Window of S layers (tokens, the query itself included) when no per-step window is set."""

    swa_backend: Literal["auto", "te", "flex", "torch"] = "auto"
    """Kernel choice for S/G core attention (recipe `model.attention_backend`)."""

    rotary_base: float = 10000.0
    """RoPE base of the attention layers (non-interleaved, full head dim)."""

    # --- mLSTM (xLSTM-7B block) -------------------------------------------------------------
    mlstm_num_heads: int = 4
    mlstm_qk_dim_factor: float = 0.5
    mlstm_v_dim_factor: float = 1.0
    mlstm_chunk_size: int = 64
    mlstm_gate_soft_cap: Optional[float] = 15.0
    mlstm_igate_bias_init: float = -10.0
    mlstm_fgate_bias_init: Tuple[float, float] = (3.0, 6.0)
    """Forget-gate biases: linspace(lo, hi) over the global heads."""
    mlstm_norm_epsilon: float = 1e-6
    mlstm_cell_epsilon: float = 1e-6
    mlstm_kernel: Literal["auto", "triton", "torch"] = "auto"
    mlstm_grad: Literal["stopgrad", "exact"] = "stopgrad"
    """Backward convention of the mLSTM cell (see ops/mlstm): the kernels' stop-gradient one."""

    # --- language model ------------------------------------------------------------------------
    vocab_size: Optional[int] = None
    """Padded vocabulary size (see padded_vocab_size)."""
    max_sequence_length: int = 2048
    share_embeddings_and_output_weights: bool = False
    output_logit_soft_cap: Optional[float] = 30.0
    init_seed: Optional[int] = None
    """Seed of the parameter init. Each component (embedding, layer n, output layer) draws from
    its own stream derived from it, so with use_cpu_initialization the initial weights do not
    depend on TP or PP. None: torch.initial_seed() at build time."""

    # --- megatron defaults changed for this model family --------------------------------------
    add_bias_linear: bool = False
    gated_linear_unit: bool = True
    activation_func: callable = F.silu
    normalization: str = "RMSNorm"
    layernorm_epsilon: float = 1e-6
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    bias_activation_fusion: bool = False
    masked_softmax_fusion: bool = False
    persist_layer_norm: bool = False
    bias_dropout_fusion: bool = False
    apply_rope_fusion: bool = False
    gradient_accumulation_fusion: bool = False

    def __post_init__(self):
        super().__post_init__()
        self._check_swax()

    # Named properties so layers do not repeat the arithmetic.
    @property
    def layer_symbols(self) -> str:
        return expand(self.layer_pattern)

    @property
    def mlstm_qk_head_dim(self) -> int:
        return int(self.hidden_size * self.mlstm_qk_dim_factor) // self.mlstm_num_heads

    @property
    def mlstm_v_head_dim(self) -> int:
        return int(self.hidden_size * self.mlstm_v_dim_factor) // self.mlstm_num_heads

    def _check_swax(self) -> None:
        tp, pp = self.tensor_model_parallel_size, self.pipeline_model_parallel_size
        try:
            symbols = expand(self.layer_pattern)
        except PatternError as e:
            raise SwaxConfigError(str(e)) from None
        if len(symbols) != self.num_layers:
            raise SwaxConfigError(
                f"layer pattern {self.layer_pattern!r} has {len(symbols)} layers but num_layers is "
                f"{self.num_layers}")
        if self.virtual_pipeline_model_parallel_size is not None:
            raise SwaxConfigError("virtual (interleaved) pipeline parallelism is not supported by "
                                  "SwaxModel; use '|' stage markers for uneven stages instead")
        try:
            split_for_pipeline(self.layer_pattern, pp)
        except PatternError as e:
            raise SwaxConfigError(str(e)) from None
        if self.num_query_groups % tp:
            raise SwaxConfigError(
                f"num_query_groups (kv heads) {self.num_query_groups} is not divisible by "
                f"tensor_model_parallel_size {tp}")
        if self.num_attention_heads % self.num_query_groups:
            raise SwaxConfigError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_query_groups {self.num_query_groups}")
        if "X" in symbols:
            h = self.mlstm_num_heads
            if h < 1 or h % tp:
                raise SwaxConfigError(
                    f"mLSTM heads {h} are not divisible by tensor_model_parallel_size {tp}")
            for name, factor in (("qk", self.mlstm_qk_dim_factor), ("v", self.mlstm_v_dim_factor)):
                width = self.hidden_size * factor
                if width != int(width) or int(width) % h or int(width) < h:
                    raise SwaxConfigError(
                        f"mLSTM {name} width hidden_size*{name}_dim_factor = {width} is not a "
                        f"positive multiple of mlstm_num_heads {h}")
            lo_hi = tuple(self.mlstm_fgate_bias_init)
            if len(lo_hi) != 2:
                raise SwaxConfigError(f"mlstm_fgate_bias_init must be (lo, hi), got {lo_hi!r}")
            problem = chunk_size_problem(self.mlstm_kernel, self.mlstm_chunk_size)
            if problem is not None:
                raise SwaxConfigError(f"mlstm_{problem}")
            if self.mlstm_gate_soft_cap is not None and self.mlstm_gate_soft_cap <= 0:
                raise SwaxConfigError(f"mlstm_gate_soft_cap must be > 0 or None, got "
                                      f"{self.mlstm_gate_soft_cap}")
        if not isinstance(self.swa_window, int) or self.swa_window < 1:
            raise SwaxConfigError(f"swa_window must be a positive int, got {self.swa_window!r}")
        if self.fp8:
            try:
                import transformer_engine.pytorch  # noqa: F401
            except ImportError:
                raise SwaxConfigError(f"fp8={self.fp8!r} needs Transformer Engine on a GPU "
                                      f"(pip install transformer-engine[pytorch]); set model.fp8: "
                                      f"null") from None
        if self.attention_dropout:
            raise SwaxConfigError("attention_dropout > 0 is not supported by the SWAX core "
                                  "attention kernels; set it to 0")
        if self.vocab_size is not None and self.vocab_size % tp:
            raise SwaxConfigError(f"vocab_size {self.vocab_size} is not divisible by "
                                  f"tensor_model_parallel_size {tp} (pad it: padded_vocab_size)")
        if self.output_logit_soft_cap is not None and self.output_logit_soft_cap <= 0:
            raise SwaxConfigError(f"output_logit_soft_cap must be > 0 or None, got "
                                  f"{self.output_logit_soft_cap}")


def _dtype_for(precision: str) -> torch.dtype:
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() else "fp32"
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def swax_config_from_recipe(recipe, vocab_size: Optional[int] = None, **overrides) -> SwaxConfig:
    """Build the SwaxConfig of a resolved `Recipe` (swax_megatron.config.schema).

    vocab_size: the tokenizer's size when recipe.model.vocab_size is None; either way it is padded
    to a multiple of 128. `overrides` are SwaxConfig fields set on top (e.g. use_cpu_initialization).
    """
    m, par = recipe.model, recipe.parallel
    vocab = m.vocab_size if m.vocab_size is not None else vocab_size
    if vocab is None:
        raise SwaxConfigError("vocab size unknown: set model.vocab_size in the recipe or pass "
                              "vocab_size= (the tokenizer's size)")
    dtype = _dtype_for(recipe.train.precision)
    on_cpu = not torch.cuda.is_available()
    kwargs = dict(
        num_layers=m.num_layers,
        hidden_size=m.hidden_size,
        num_attention_heads=m.num_attention_heads,
        num_query_groups=m.num_query_groups,
        ffn_hidden_size=m.ffn_hidden_size or default_ffn_hidden_size(m.hidden_size),
        normalization=m.normalization,
        layernorm_epsilon=m.norm_epsilon,
        add_qkv_bias=m.add_qkv_bias,
        init_method_std=m.init_method_std,
        rotary_base=m.rope_base,
        layer_pattern=m.layer_pattern,
        swa_window=m.swa.window,
        swa_backend=m.attention_backend,
        mlstm_num_heads=m.mlstm.num_heads,
        mlstm_qk_dim_factor=m.mlstm.qk_dim_factor,
        mlstm_v_dim_factor=m.mlstm.v_dim_factor,
        mlstm_chunk_size=m.mlstm.chunk_size,
        mlstm_gate_soft_cap=m.mlstm.gate_soft_cap,
        mlstm_igate_bias_init=m.mlstm.igate_bias_init,
        mlstm_fgate_bias_init=tuple(m.mlstm.fgate_bias_init),
        mlstm_norm_epsilon=m.mlstm.norm_epsilon,
        mlstm_kernel=m.mlstm.kernel,
        vocab_size=padded_vocab_size(vocab),
        max_sequence_length=recipe.train.seq_length,
        share_embeddings_and_output_weights=m.tie_embeddings,
        output_logit_soft_cap=m.output_logit_soft_cap,
        init_seed=recipe.run.seed,
        tensor_model_parallel_size=par.tensor_model_parallel_size,
        pipeline_model_parallel_size=par.pipeline_model_parallel_size,
        sequence_parallel=par.sequence_parallel,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        use_cpu_initialization=on_cpu,
        # gloo + PP=2 swaps batched sends (cpu_compat docstring); harmless to avoid on GPU too.
        batch_p2p_comm=not on_cpu,
        deterministic_mode=recipe.train.deterministic,
    )
    if m.fp8 is not None:
        kwargs.update(fp8=m.fp8, fp8_recipe=m.fp8_recipe)
    unknown = set(overrides) - {f.name for f in dataclasses.fields(SwaxConfig)}
    if unknown:
        raise SwaxConfigError(f"unknown SwaxConfig field(s): {sorted(unknown)}")
    kwargs.update(overrides)
    return SwaxConfig(**kwargs)
