"""SwaxConfig: megatron's TransformerConfig plus the layer pattern and the recipe's SWA and mLSTM
settings, and `swax_config_from_recipe` to build it from a resolved recipe.

Megatron's own `__post_init__` checks its fields (head/TP divisibility, init methods, ...). The
SWAX rules (pattern, head splits, pipeline split, chunk sizes) are recipe rules and live in
config/validate.py, checked before anything is launched; only what depends on the machine
(Transformer Engine for FP8) and on megatron-only fields is checked here.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Literal, Optional, Tuple

import torch
import torch.nn.functional as F
from megatron.core.transformer import TransformerConfig

from ..config.pattern import expand
from ..config.schema import MLSTMConfig, SwaConfig

VOCAB_MULTIPLE = 128  # vocab padding; a multiple of 128 divides by every power-of-two TP <= 128


class SwaxConfigError(ValueError):
    """A SWAX model configuration that cannot be built."""


def padded_vocab_size(vocab_size: int, multiple: int = VOCAB_MULTIPLE) -> int:
    """Vocabulary rounded up so the vocab-parallel embedding splits evenly at any TP that divides
    `multiple`; independent of TP so checkpoints reshard across TP sizes."""
    return -(-int(vocab_size) // multiple) * multiple


@dataclass
class SwaxConfig(TransformerConfig):
    """TransformerConfig for SWAX hybrids. The SWA and mLSTM settings are the recipe's own
    dataclasses (config/schema.py), carried whole: one home per setting. The model trusts a
    recipe validated by config/validate.py; only what depends on the machine is checked here."""

    layer_pattern: str = "XS"
    """One symbol per layer: S sliding-window attention, G global attention, X mLSTM; `UNIT*N`
    repeats, `|` marks pipeline-stage boundaries. Its length must equal num_layers."""

    swa: SwaConfig = dataclasses.field(default_factory=SwaConfig)
    """S layers: `swa.window` until a per-step window is set (schema.SwaConfig)."""

    attention_backend: Literal["auto", "te", "flex", "torch"] = "auto"
    """Kernel of S/G core attention (attention.resolve_attention_backend)."""

    mlstm: MLSTMConfig = dataclasses.field(default_factory=MLSTMConfig)
    """X layers (schema.MLSTMConfig)."""

    rotary_base: float = 10000.0
    """RoPE base of the attention layers (non-interleaved, full head dim)."""

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

    # --- activation recomputation (recipe train.recompute; megatron's recompute_* fields) -----
    recompute_layer_types: str = "SGX"
    """recompute_granularity 'full': the layer symbols SwaxBlock recomputes whole."""
    recompute_mlstm_cell: bool = False
    """recompute_granularity 'selective' with module mlstm_cell: the X mixer's cell."""

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
        if self.virtual_pipeline_model_parallel_size is not None:
            raise SwaxConfigError("virtual (interleaved) pipeline parallelism is not supported by "
                                  "SwaxModel; use '|' stage markers for uneven stages instead")
        if self.attention_dropout:
            raise SwaxConfigError("attention_dropout > 0 is not supported by the SWAX core "
                                  "attention kernels; set it to 0")
        if self.fp8:
            try:
                import transformer_engine.pytorch  # noqa: F401
            except ImportError:
                raise SwaxConfigError(f"fp8={self.fp8!r} needs Transformer Engine on a GPU "
                                      f"(pip install transformer-engine[pytorch]); set model.fp8: "
                                      f"null") from None

    @property
    def layer_symbols(self) -> str:
        return expand(self.layer_pattern)

    @property
    def mlstm_head_dims(self) -> Tuple[int, int]:
        """Channels per mLSTM head: (q and k, v)."""
        return self.mlstm.head_dims(self.hidden_size)


def recompute_kwargs(rc) -> Dict[str, Any]:
    """train.recompute (schema.RecomputeConfig) as megatron's recompute_* fields plus the SWAX
    ones. megatron knows the modules core_attn (its Attention reads it) and mlp (SwaxLayer
    reads it, as megatron's TransformerLayer does); mlstm_cell is ours."""
    if rc.granularity == "none":
        return dict(recompute_granularity=None, recompute_method=None, recompute_num_layers=None,
                    recompute_modules=[])
    full = rc.granularity == "full"
    return dict(
        recompute_granularity=rc.granularity,
        recompute_method=rc.method if full else None,
        recompute_num_layers=rc.num_layers if full else None,
        recompute_modules=[] if full else [m for m in rc.modules if m != "mlstm_cell"],
        recompute_layer_types="".join(rc.layer_types),
        recompute_mlstm_cell=not full and "mlstm_cell" in rc.modules)


def _dtype_for(precision: str) -> torch.dtype:
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() else "fp32"
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def swax_config_from_recipe(recipe, vocab_size: Optional[int] = None, **overrides) -> SwaxConfig:
    """Build the SwaxConfig of a resolved `Recipe` (swax_megatron.config.schema).

    vocab_size: the tokenizer's size when recipe.model.vocab_size is None; either way it is padded
    to a multiple of 128. `overrides` are SwaxConfig fields set on top (e.g. use_cpu_initialization).
    """
    kwargs = swax_config_kwargs(recipe, vocab_size)
    unknown = set(overrides) - {f.name for f in dataclasses.fields(SwaxConfig)}
    if unknown:
        raise SwaxConfigError(f"unknown SwaxConfig field(s): {sorted(unknown)}")
    kwargs.update(overrides)
    return SwaxConfig(**kwargs)


def swax_config_kwargs(recipe, vocab_size: Optional[int] = None) -> Dict[str, Any]:
    """The SwaxConfig fields a recipe sets: the one mapping from recipe keys to megatron's."""
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
        ffn_hidden_size=m.ffn_hidden_size,  # filled by config.resolve (fill_derived)
        normalization=m.normalization,
        layernorm_epsilon=m.norm_epsilon,
        add_qkv_bias=m.add_qkv_bias,
        init_method_std=m.init_method_std,
        rotary_base=m.rope_base,
        layer_pattern=m.layer_pattern,
        swa=copy.deepcopy(m.swa),
        attention_backend=m.attention_backend,
        mlstm=copy.deepcopy(m.mlstm),
        vocab_size=padded_vocab_size(vocab),
        max_sequence_length=recipe.train.seq_length,
        share_embeddings_and_output_weights=m.tie_embeddings,
        output_logit_soft_cap=m.output_logit_soft_cap,
        init_seed=recipe.run.seed,
        tensor_model_parallel_size=par.tensor_model_parallel_size,
        pipeline_model_parallel_size=par.pipeline_model_parallel_size,
        sequence_parallel=par.sequence_parallel,
        context_parallel_size=par.ulysses_size,  # the Ulysses group (models/ulysses.py)
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        use_cpu_initialization=on_cpu,
        # gloo + PP=2 swaps batched sends (cpu_compat docstring); harmless to avoid on GPU too.
        batch_p2p_comm=not on_cpu,
        deterministic_mode=recipe.train.deterministic,
        **recompute_kwargs(recipe.train.recompute),
    )
    if m.fp8 is not None:
        # megatron builds TE's fp8 recipe from these (fp8_utils.get_fp8_recipe), fp8_dpa included.
        kwargs.update(fp8=m.fp8, fp8_recipe=m.fp8_recipe,
                      fp8_dot_product_attention=m.fp8_attention)
    return kwargs
