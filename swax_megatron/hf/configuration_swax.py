"""SwaxHFConfig: the Hugging Face configuration of a SWAX model (model_type "swax").

A SWAX model is a stack of pre-norm blocks, one mixer each, every mixer followed by a SwiGLU MLP.
`layer_types` names the mixer of each layer:

    "sliding_attention"  softmax attention over the last `sliding_window` tokens (the query included)
    "full_attention"     causal softmax attention over every earlier token
    "mlstm"              the mLSTM layer of the xLSTM-7B block (a matrix-memory RNN)

Attention layers use RoPE (non-interleaved halves, full head dim, base `rope_theta`) and grouped-query
attention (`num_key_value_heads`). The mLSTM layers follow xLSTM-7B: q/k/v/output-gate projections,
input and forget gates soft-capped at `mlstm_gate_soft_cap`, a per-head LayerNorm, the output gate.
Logits are soft-capped at `output_logit_soft_cap` (cap * tanh(x / cap); None: no cap).

This file imports only transformers (it is copied next to exported weights and loaded with
trust_remote_code=True, where the training package may be absent).
"""

from transformers import PretrainedConfig

LAYER_TYPES = ("sliding_attention", "full_attention", "mlstm")
NORM_TYPES = ("rms_norm", "layer_norm")


class SwaxHFConfig(PretrainedConfig):
    """Fields are keyword arguments (transformers 5 configs are dataclasses). Defaults: SWAX-1.4B
    (recipes/models/swax_1p4b.yaml): 24 layers x 2048, mLSTM and sliding attention alternating."""

    model_type = "swax"

    vocab_size: int = 50304
    hidden_size: int = 2048
    intermediate_size: int = 5504  # SwiGLU width: 2.667 x hidden rounded up to a multiple of 64
    layer_types: list[str] | None = None  # None: ["mlstm", "sliding_attention"] * (num_hidden_layers // 2)
    num_hidden_layers: int | None = None  # len(layer_types); 24 when neither is given
    # attention (sliding_attention and full_attention layers)
    num_attention_heads: int = 16
    num_key_value_heads: int | None = None  # None: num_attention_heads (no GQA)
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    attention_bias: bool = False  # biases on q_proj / k_proj / v_proj (megatron add_qkv_bias)
    sliding_window: int = 2048  # keys a query sees in sliding layers, counting itself
    rope_theta: float = 10000.0
    # mLSTM layers
    mlstm_num_heads: int = 4
    mlstm_qk_head_dim: int = 256  # per head; hidden_size * qk_dim_factor / heads
    mlstm_v_head_dim: int = 512  # per head; hidden_size * v_dim_factor / heads
    mlstm_gate_soft_cap: float | None = 15.0
    mlstm_norm_eps: float = 1e-6  # the per-head LayerNorm after the cell
    mlstm_eps: float = 1e-6  # the cell's normaliser: h = C^T q / (max(|n^T q|, exp(-m)) + eps)
    mlstm_chunk_size: int = 64  # prefill runs the chunkwise form in chunks of this many tokens
    mlstm_igate_bias_init: float = -10.0  # used only to initialise a fresh model
    mlstm_fgate_bias_init: list[float] | None = None  # [lo, hi]: linspace over heads; None: [3.0, 6.0]
    mlstm_kernel: str = "auto"  # "auto": swax_megatron.ops when importable, else this file's code; "plain"
    # everything else
    norm_type: str = "rms_norm"  # "rms_norm" | "layer_norm" (megatron normalization RMSNorm | LayerNorm)
    norm_eps: float = 1e-6
    output_logit_soft_cap: float | None = 30.0
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    max_position_embeddings: int = 16384  # informational: the training sequence length
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self, **kwargs):
        if self.layer_types is None:
            n = 24 if self.num_hidden_layers is None else self.num_hidden_layers
            self.layer_types = [("mlstm", "sliding_attention")[i % 2] for i in range(n)]
        self.layer_types = list(self.layer_types)
        if self.num_hidden_layers is None:
            self.num_hidden_layers = len(self.layer_types)
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.mlstm_fgate_bias_init is None:
            self.mlstm_fgate_bias_init = [3.0, 6.0]
        self.mlstm_fgate_bias_init = [float(x) for x in self.mlstm_fgate_bias_init]
        super().__post_init__(**kwargs)
        self._check()

    def validate(self) -> None:
        """What save_pretrained runs: transformers' validators, except its layer-type check, which knows
        only transformers' own layer kinds (not "mlstm"); ours checks SWAX's instead."""
        for validator in type(self).__class_validators__:
            if validator.__name__ != "validate_layer_type":
                validator(self)
        self._check()

    def _check(self) -> None:
        """One-line errors for settings no SWAX model can have (raised at construction and load)."""
        bad = sorted(set(self.layer_types) - set(LAYER_TYPES))
        if bad:
            raise ValueError(f"SwaxHFConfig: unknown layer type {bad[0]!r} in layer_types (known: {', '.join(LAYER_TYPES)})")
        if self.num_hidden_layers != len(self.layer_types):
            raise ValueError(f"SwaxHFConfig: num_hidden_layers {self.num_hidden_layers} != len(layer_types) "
                             f"{len(self.layer_types)}")
        if self.norm_type not in NORM_TYPES:
            raise ValueError(f"SwaxHFConfig: norm_type must be one of {NORM_TYPES}, got {self.norm_type!r}")
        if self.mlstm_kernel not in ("auto", "plain"):
            raise ValueError(f"SwaxHFConfig: mlstm_kernel must be 'auto' or 'plain', got {self.mlstm_kernel!r}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads",
                     "num_key_value_heads", "head_dim", "sliding_window", "mlstm_num_heads",
                     "mlstm_qk_head_dim", "mlstm_v_head_dim", "mlstm_chunk_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SwaxHFConfig: {name} must be a positive int, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"SwaxHFConfig: num_attention_heads {self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads {self.num_key_value_heads}")
        if self.head_dim % 2:
            raise ValueError(f"SwaxHFConfig: head_dim must be even (RoPE rotates halves), got {self.head_dim}")
        for name in ("mlstm_gate_soft_cap", "output_logit_soft_cap"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"SwaxHFConfig: {name} must be > 0 or None, got {value!r}")
        if len(self.mlstm_fgate_bias_init) != 2:
            raise ValueError(f"SwaxHFConfig: mlstm_fgate_bias_init must be [lo, hi], got {self.mlstm_fgate_bias_init!r}")


__all__ = ["SwaxHFConfig", "LAYER_TYPES"]

# save_pretrained writes auto_map ("AutoConfig": "configuration_swax.SwaxHFConfig") and copies this file
# next to the weights, so an export loads with trust_remote_code=True where swax_megatron is absent.
SwaxHFConfig.register_for_auto_class()
