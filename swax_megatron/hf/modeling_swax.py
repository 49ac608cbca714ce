"""SWAX in plain PyTorch for Hugging Face transformers: SwaxModel and SwaxForCausalLM.

    tokens -> embed_tokens -> N x block -> norm -> lm_head -> logit soft-cap

    block:  x = x + mixer(input_layernorm(x))              mixer by config.layer_types[i]:
            x = x + mlp(post_attention_layernorm(x))         sliding_attention / full_attention: self_attn
                                                             mlstm: mlstm_layer
            mlp = down_proj(silu(gate_proj(x)) * up_proj(x))

The same math as the swax_megatron training model (swax_megatron/models/reference.py is its plain twin),
with weight names of the Llama family (attention, MLP, norms) and of transformers' xLSTM (mLSTM layer).

Generation keeps a SwaxCache (cache_swax.py): a ring buffer of `sliding_window - 1` keys per sliding
layer and a fixed (C, n, m) state per mLSTM layer, so memory does not grow with the generated length
(full_attention layers, if any, keep every key). Prefill runs the mLSTM chunkwise, decoding one step
at a time; both start from the cached state.

Padding (batched generation pads on the left) is handled through token indices: each token is
numbered by the real tokens of its row before it, padding gets -1. Attention matches queries to keys
by these numbers (padding keys are never seen, windows count real tokens only), and an mLSTM ignores
a padding token exactly: its input gate is -inf-like (writes nothing) and its forget gate is
+inf-like (forgets nothing), so the state passes through unchanged.

This file and the two it imports relatively (configuration_swax.py, cache_swax.py) import only torch
and transformers: save_pretrained copies them next to the weights, and from_pretrained(...,
trust_remote_code=True) refuses modelling files that import packages the user may not have. With
config.mlstm_kernel == "auto", inference prefills the mLSTM with the training package's kernels
(swax_megatron.ops: Triton on CUDA) where that package is importable; the code here is the fallback,
the reference, and what training through this model differentiates.
"""

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .cache_swax import SwaxCache
from .configuration_swax import SwaxHFConfig

# A padding token's gate pre-activations (after the soft-cap): exp(input gate) is 0, so nothing is
# written, and logsigmoid(forget gate) is 0, so nothing decays. Finite, so no inf - inf anywhere.
_PAD_IGATE = -1e30
_PAD_FGATE = 1e30


def soft_cap(x: torch.Tensor, cap: Optional[float]) -> torch.Tensor:
    """cap * tanh(x / cap): smooth clipping to (-cap, cap); None: identity."""
    return x if cap is None else cap * torch.tanh(x / cap)


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """The mLSTM cell runs in float64 for a float64 model, else in float32 (bf16 states drift)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


# ----------------------------------------------------------------------------------------------------
# mLSTM cell (xLSTM-7B / mlstm_kernels convention). q, k [B, NH, S, dqk]; v [B, NH, S, dv]; i, f the
# (soft-capped) gate pre-activations [B, NH, S]. Input gate exp(i), forget gate sigmoid(f) (as
# logsigmoid), stabiliser m; the state (C, n) is stored divided by exp(m):
#     m_t = max(log f_t + m_{t-1}, i_t)
#     C_t = exp(log f_t + m_{t-1} - m_t) C_{t-1} + exp(i_t - m_t) k_t v_t^T      (n_t alike, with k_t)
#     h_t = C_t^T q_t / (max(|n_t^T q_t|, exp(-m_t)) + eps),  q_t scaled by dqk ** -0.5
# ----------------------------------------------------------------------------------------------------


def mlstm_zero_state(B: int, NH: int, dqk: int, dv: int, dtype, device):
    return (torch.zeros(B, NH, dqk, dv, dtype=dtype, device=device),
            torch.zeros(B, NH, dqk, dtype=dtype, device=device),
            torch.zeros(B, NH, dtype=dtype, device=device))


def mlstm_step(q, k, v, i, f, state, eps: float = 1e-6):
    """One token (decoding). q, k [B, NH, dqk]; v [B, NH, dv]; i, f [B, NH]. Returns h [B, NH, dv], state."""
    C, n, m = state
    logf = F.logsigmoid(f)
    m_new = torch.maximum(logf + m, i)
    decay = torch.exp(logf + m - m_new)
    write = torch.exp(i - m_new)
    C = decay[..., None, None] * C + write[..., None, None] * (k[..., :, None] * v[..., None, :])
    n = decay[..., None] * n + write[..., None] * k
    q = q * q.shape[-1] ** -0.5
    num = torch.einsum("bhd,bhde->bhe", q, C)
    den = (n * q).sum(-1)
    h = num / (torch.maximum(den.abs(), torch.exp(-m_new)) + eps)[..., None]
    return h, (C, n, m_new)


def segment_sums(x: torch.Tensor) -> torch.Tensor:
    """x [..., L] -> [..., L, L] with out[t, j] = x[j+1] + ... + x[t] for j <= t, -inf above the diagonal.

    A cumulative sum of a masked matrix rather than cumsum[t] - cumsum[j]: the difference of two long
    prefix sums loses the small numbers that decide the weights of recent tokens."""
    L = x.shape[-1]
    below = torch.ones(L, L, dtype=torch.bool, device=x.device).tril(-1)
    sums = x[..., :, None].expand(*x.shape, L).masked_fill(~below, 0.0).cumsum(dim=-2)
    return sums.masked_fill(~torch.ones_like(below).tril(), float("-inf"))


def mlstm_chunkwise(q, k, v, i, f, state, chunk_size: int = 64, eps: float = 1e-6):
    """The sequence (prefill) form: chunks of `chunk_size` steps, quadratic inside a chunk, the state
    carried between chunks. Same result as `mlstm_step` applied S times. Returns h [B, NH, S, dv], state."""
    C, n, m = state
    S = q.shape[2]
    q = q * q.shape[-1] ** -0.5
    hs = []
    for a in range(0, S, chunk_size):
        qc, kc, vc = q[:, :, a:a + chunk_size], k[:, :, a:a + chunk_size], v[:, :, a:a + chunk_size]
        ic, logf = i[..., a:a + chunk_size], F.logsigmoid(f[..., a:a + chunk_size])
        # Log weight, at step t, of the state carried into the chunk (decayed by every forget gate up
        # to t) and of the write at step j <= t (its input gate, decayed by the forget gates after j).
        log_carried = logf.cumsum(-1) + m[..., None]  # [B, NH, L]
        log_write = segment_sums(logf) + ic[..., None, :]  # [B, NH, L(t), L(j)]
        m_t = torch.maximum(log_carried, log_write.amax(-1))  # the stabiliser of each step
        carried = torch.exp(log_carried - m_t)  # <= 1
        written = torch.exp(log_write - m_t[..., None])  # <= 1, 0 above the diagonal
        scores = (qc @ kc.transpose(-1, -2)) * written
        num = scores @ vc + carried[..., None] * (qc @ C)
        den = scores.sum(-1) + carried * (qc @ n[..., None]).squeeze(-1)
        hs.append(num / (torch.maximum(den.abs(), torch.exp(-m_t)) + eps)[..., None])
        # The state after the chunk is the one its last step read.
        last = written[..., -1, :, None] * kc  # [B, NH, L, dqk]
        C = carried[..., -1, None, None] * C + last.transpose(-1, -2) @ vc
        n = carried[..., -1, None] * n + last.sum(-2)
        m = m_t[..., -1]
    return torch.cat(hs, dim=2), (C, n, m)


def _fast_mlstm_chunkwise(device: torch.device, chunk_size: int):
    """swax_megatron's chunkwise mLSTM op for inference, or None where that package is not importable:
    its Triton kernel on CUDA (when triton imports and takes the chunk size), its torch op elsewhere
    (as fast as mlstm_chunkwise above on CPU; the op the training model runs). Called as
    fast(q, k, v, i, f, chunk_size=, initial_state=, eps=) -> h, (C, n, m). Imports inside try blocks:
    transformers' import check of this file skips them, so it does not require the package."""
    try:
        from swax_megatron.ops.mlstm import chunk_size_problem, mlstm_chunkwise
    except ImportError:
        return None
    if device.type == "cuda" and chunk_size_problem("triton", chunk_size) is None:
        try:
            from swax_megatron.ops.mlstm.triton import mlstm_chunkwise_triton
            return mlstm_chunkwise_triton
        except ImportError:
            pass
    return mlstm_chunkwise


# ----------------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------------


def make_norm(config: SwaxHFConfig, size: int) -> nn.Module:
    if config.norm_type == "rms_norm":
        return nn.RMSNorm(size, eps=config.norm_eps)
    return nn.LayerNorm(size, eps=config.norm_eps)


def rope_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos, sin [B, 1, L, head_dim] for positions [B, L]. Angles in float32 (float64 for a float64
    model), as megatron computes them; the halves layout (not interleaved), as in Llama."""
    ad = torch.float64 if dtype == torch.float64 else torch.float32
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=position_ids.device)
                                / head_dim))
    angles = position_ids.to(ad)[..., None] * inv_freq.to(ad)  # [B, L, head_dim / 2]
    angles = torch.cat([angles, angles], dim=-1)[:, None]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def attend(q, k, v, q_index, k_index, window: Optional[int]):
    """Softmax attention by token index. q [B, H, Lq, D]; k, v [B, Hkv, Lk, D] (query head h reads kv
    head h // (H / Hkv)); q_index [B, Lq], k_index [B, Lk] (-1: padding). A query with index t sees
    the keys with index t - window < s <= t (window None: every s <= t)."""
    qi, ki = q_index[:, :, None], k_index[:, None, :]
    seen = (ki >= 0) & (ki <= qi)
    if window is not None:
        seen = seen & (ki > qi - window)
    # A padding query sees nothing; let it see everything so softmax stays finite (its output is
    # never read: padding keys are masked for every later query and padding never updates a state).
    seen = seen | ~seen.any(-1, keepdim=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=seen[:, None], enable_gqa=q.shape[1] != k.shape[1])


class SwaxAttention(nn.Module):
    """sliding_attention (window = config.sliding_window) or full_attention (no window) layer: RoPE, GQA."""

    # Long prefills run in blocks of this many queries, each against only the keys its window can
    # reach: O(L * window) memory for sliding layers instead of O(L^2).
    query_block = 512

    def __init__(self, config: SwaxHFConfig, sliding: bool):
        super().__init__()
        self.window = config.sliding_window if sliding else None
        self.num_heads, self.num_kv_heads, self.head_dim = (config.num_attention_heads, config.num_key_value_heads,
                                                           config.head_dim)
        H, G, D, bias = self.num_heads, self.num_kv_heads, self.head_dim, config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, H * D, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, G * D, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, G * D, bias=bias)
        self.o_proj = nn.Linear(H * D, config.hidden_size, bias=False)

    def forward(self, x, cos, sin, token_index, cache_layer=None):
        B, L, _ = x.shape
        q = apply_rope(self.q_proj(x).view(B, L, self.num_heads, self.head_dim).transpose(1, 2), cos, sin)
        k = apply_rope(self.k_proj(x).view(B, L, self.num_kv_heads, self.head_dim).transpose(1, 2), cos, sin)
        v = self.v_proj(x).view(B, L, self.num_kv_heads, self.head_dim).transpose(1, 2)
        keys, values, key_index = k, v, token_index
        if cache_layer is not None:  # cached keys first, then this call's
            keys, values, key_index = cache_layer.append(k, v, token_index)
        past = keys.shape[2] - L
        if L <= self.query_block:
            out = attend(q, keys, values, token_index, key_index, self.window)
        else:
            outs = []
            for a in range(0, L, self.query_block):
                b = min(a + self.query_block, L)
                # Keys this block's windows can reach: the new ones from a - window + 1 on (padding is
                # on the left, so within a call a position and a token index advance together) and
                # the cached ones, which are older than every new key, while a - window + 1 <= 0.
                start = 0 if self.window is None or a - self.window + 1 <= 0 else past + a - self.window + 1
                out_block = attend(q[:, :, a:b], keys[:, :, start:past + b], values[:, :, start:past + b],
                                   token_index[:, a:b], key_index[:, start:past + b], self.window)
                outs.append(out_block)
            out = torch.cat(outs, dim=2)
        return self.o_proj(out.transpose(1, 2).reshape(B, L, -1))


class MultiHeadLayerNorm(nn.Module):
    """LayerNorm over each head's dv channels, weight only, statistics in float32 (xLSTM-7B)."""

    def __init__(self, num_heads: int, head_dim: int, eps: float):
        super().__init__()
        self.num_heads, self.head_dim, self.eps = num_heads, head_dim, eps
        self.weight = nn.Parameter(torch.ones(num_heads * head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., num_heads, head_dim]
        xf = x.float() if x.dtype != torch.float64 else x
        y = (xf - xf.mean(-1, keepdim=True)) * torch.rsqrt(xf.var(-1, unbiased=False, keepdim=True) + self.eps)
        return (y * self.weight.to(y.dtype).view(self.num_heads, self.head_dim)).to(x.dtype)


class SwaxMLSTMLayer(nn.Module):
    """The mLSTM layer of the xLSTM-7B block: gates from the block input, soft-capped."""

    def __init__(self, config: SwaxHFConfig):
        super().__init__()
        self.config = config
        NH, dqk, dv, hidden = (config.mlstm_num_heads, config.mlstm_qk_head_dim, config.mlstm_v_head_dim,
                               config.hidden_size)
        self.num_heads, self.qk_head_dim, self.v_head_dim = NH, dqk, dv
        self.q = nn.Linear(hidden, NH * dqk, bias=False)
        self.k = nn.Linear(hidden, NH * dqk, bias=False)
        self.v = nn.Linear(hidden, NH * dv, bias=False)
        self.ogate_preact = nn.Linear(hidden, NH * dv, bias=False)
        self.igate_preact = nn.Linear(hidden, NH, bias=True)
        self.fgate_preact = nn.Linear(hidden, NH, bias=True)
        # Gate biases of a fresh model, linspace(lo, hi) over heads (read by _init_weights): input gates
        # nearly closed, forget gates open (long memory), as the training model starts.
        self.igate_preact.bias_init = (config.mlstm_igate_bias_init, config.mlstm_igate_bias_init)
        self.fgate_preact.bias_init = tuple(config.mlstm_fgate_bias_init)
        self.multihead_norm = MultiHeadLayerNorm(NH, dv, config.mlstm_norm_eps)
        self.out_proj = nn.Linear(NH * dv, hidden, bias=False)

    def forward(self, x, real: Optional[torch.Tensor] = None, cache_layer=None):
        """x [B, L, hidden]; real [B, L] bool (False: padding) or None; cache_layer: MLSTMLayer or None."""
        B, L, _ = x.shape
        NH, cap, cfg = self.num_heads, self.config.mlstm_gate_soft_cap, self.config
        q = self.q(x).view(B, L, NH, -1).transpose(1, 2)
        k = self.k(x).view(B, L, NH, -1).transpose(1, 2)
        v = self.v(x).view(B, L, NH, -1).transpose(1, 2)
        cd = compute_dtype(x)
        i = soft_cap(self.igate_preact(x), cap).transpose(1, 2).to(cd)  # [B, NH, L]
        f = soft_cap(self.fgate_preact(x), cap).transpose(1, 2).to(cd)
        if real is not None:  # padding leaves the state as it is (module docstring)
            pad = ~real[:, None, :]
            i, f = i.masked_fill(pad, _PAD_IGATE), f.masked_fill(pad, _PAD_FGATE)
        q, k, v = q.to(cd), k.to(cd), v.to(cd)
        state = cache_layer.state if cache_layer is not None else None
        if L == 1 and state is not None:
            h, state = mlstm_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], i[..., 0], f[..., 0], state, cfg.mlstm_eps)
            h = h[:, :, None]
        else:
            # The package's kernels serve inference; training through this model (autograd) runs the
            # plain path, differentiated exactly.
            fast = None
            if cfg.mlstm_kernel == "auto" and not (torch.is_grad_enabled() and x.requires_grad):
                fast = _fast_mlstm_chunkwise(x.device, cfg.mlstm_chunk_size)
            if fast is not None:
                h, state = fast(q, k, v, i, f, chunk_size=cfg.mlstm_chunk_size, initial_state=state,
                                eps=cfg.mlstm_eps)
            else:
                if state is None:
                    state = mlstm_zero_state(B, NH, self.qk_head_dim, self.v_head_dim, cd, x.device)
                h, state = mlstm_chunkwise(q, k, v, i, f, state, cfg.mlstm_chunk_size, cfg.mlstm_eps)
        if cache_layer is not None:
            cache_layer.update_state(tuple(s.to(cd) for s in state), L)
        # The cell's output in the model dtype, then norm and output gate (as the training model does).
        h = self.multihead_norm(h.to(x.dtype).transpose(1, 2))  # [B, L, NH, dv]
        h = h * torch.sigmoid(self.ogate_preact(x)).view(B, L, NH, -1)
        return self.out_proj(h.reshape(B, L, -1))


class SwaxMLP(nn.Module):
    """SwiGLU: down_proj(silu(gate_proj(x)) * up_proj(x))."""

    def __init__(self, config: SwaxHFConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class SwaxDecoderLayer(nn.Module):
    def __init__(self, config: SwaxHFConfig, layer_idx: int):
        super().__init__()
        self.layer_type = config.layer_types[layer_idx]
        self.input_layernorm = make_norm(config, config.hidden_size)
        if self.layer_type == "mlstm":
            self.mlstm_layer = SwaxMLSTMLayer(config)
        else:
            self.self_attn = SwaxAttention(config, sliding=self.layer_type == "sliding_attention")
        self.post_attention_layernorm = make_norm(config, config.hidden_size)
        self.mlp = SwaxMLP(config)

    def forward(self, x, cos, sin, token_index, real, cache_layer=None):
        h = self.input_layernorm(x)
        if self.layer_type == "mlstm":
            x = x + self.mlstm_layer(h, real, cache_layer)
        else:
            x = x + self.self_attn(h, cos, sin, token_index, cache_layer)
        return x + self.mlp(self.post_attention_layernorm(x))


# ----------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------


class SwaxPreTrainedModel(PreTrainedModel):
    config_class = SwaxHFConfig
    config: SwaxHFConfig
    base_model_prefix = "model"
    _no_split_modules = ["SwaxDecoderLayer"]
    # The cache holds recurrent states that cannot be rolled back: generate() must not try
    # (assisted decoding), and must not build its own DynamicCache (see _supports_default_dynamic_cache).
    _is_stateful = True
    _supports_sdpa = True

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # generate() would otherwise build a DynamicCache (concat-and-slice KV, no mLSTM state). With
        # False it builds none, the first forward creates a SwaxCache and generate() carries the one
        # returned in the output from step to step.
        return False

    def _init_weights(self, module):
        """A fresh model (from_pretrained overwrites what it loads): normal(0, initializer_range) linears
        and embeddings, unit norms, the mLSTM gate biases from `bias_init`. Per leaf module: transformers
        skips remote-code modules without parameters of their own."""
        super()._init_weights(module)
        if isinstance(module, nn.Linear) and hasattr(module, "bias_init"):
            lo, hi = module.bias_init
            init.copy_(module.bias, torch.linspace(lo, hi, module.bias.shape[0], dtype=module.bias.dtype))
        elif isinstance(module, MultiHeadLayerNorm):
            init.ones_(module.weight)


class SwaxModel(SwaxPreTrainedModel):
    def __init__(self, config: SwaxHFConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(SwaxDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = make_norm(config, config.hidden_size)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
                use_cache=None, output_hidden_states=None, **kwargs):
        """input_ids [B, L] (or inputs_embeds [B, L, hidden]); attention_mask [B, L] or [B, past + L]
        (1 token, 0 padding; padding on the left), or None; position_ids [B, L] (RoPE positions; default:
        the token indices, i.e. what generate() passes); cache: a SwaxCache to continue from (created
        when use_cache and None)."""
        if cache is None and kwargs.get("past_key_values") is not None:
            cache = kwargs.pop("past_key_values")  # the transformers 4.x name, for older callers
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("SwaxModel: pass exactly one of input_ids and inputs_embeds")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        B, L = x.shape[:2]
        if use_cache and cache is None:
            cache = SwaxCache(self.config)
        if cache is not None and not isinstance(cache, SwaxCache):
            raise TypeError(f"SwaxModel: cache must be a SwaxCache, got {type(cache).__name__}")

        # Token indices: real tokens before each token in its row (padding: -1).
        seen = cache.token_count if cache is not None and cache.token_count is not None else None
        if seen is None:
            seen = torch.zeros(B, dtype=torch.long, device=x.device)
        real = None
        if attention_mask is not None:
            if attention_mask.dim() != 2 or attention_mask.shape[0] != B or attention_mask.shape[1] < L:
                raise ValueError(f"SwaxModel: attention_mask must be a 2D padding mask [batch, length] covering "
                                 f"this call's {L} tokens (and optionally the cached ones before them), got shape "
                                 f"{tuple(attention_mask.shape)} for inputs of shape {(B, L)}")
            real = attention_mask[:, -L:].to(device=x.device, dtype=torch.bool)  # the mask may cover past tokens too
            token_index = seen[:, None] + real.long().cumsum(-1) - 1
            token_index = token_index.masked_fill(~real, -1)
            count = seen + real.long().sum(-1)
        else:
            token_index = seen[:, None] + torch.arange(L, device=x.device)
            count = seen + L
        if position_ids is None:
            position_ids = token_index.clamp(min=0)
        cos, sin = rope_cos_sin(position_ids.expand(B, L), self.config.head_dim, self.config.rope_theta, x.dtype)

        hidden_states = [] if output_hidden_states else None
        for idx, layer in enumerate(self.layers):
            if hidden_states is not None:
                hidden_states.append(x)
            x = layer(x, cos, sin, token_index, real, cache.layers[idx] if cache is not None else None)
        x = self.norm(x)
        if hidden_states is not None:
            hidden_states.append(x)
        if cache is not None:
            cache.advance(L, count)
        return BaseModelOutputWithPast(last_hidden_state=x, cache=cache if use_cache else None,
                                       hidden_states=tuple(hidden_states) if hidden_states is not None else None)


class SwaxForCausalLM(SwaxPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: SwaxHFConfig):
        super().__init__(config)
        self.model = SwaxModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
                labels=None, use_cache=None, output_hidden_states=None, logits_to_keep=0, **kwargs):
        """As SwaxModel.forward; labels [B, L] give the next-token loss (shifted inside, -100 ignored);
        logits_to_keep: an int n > 0 keeps the last n positions' logits (generate() passes 1)."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                         inputs_embeds=inputs_embeds, use_cache=use_cache, output_hidden_states=output_hidden_states,
                         **kwargs)
        h = out.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            h = h[:, -logits_to_keep:]
        elif isinstance(logits_to_keep, torch.Tensor):
            h = h[:, logits_to_keep]
        logits = soft_cap(self.lm_head(h), self.config.output_logit_soft_cap)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=out.cache, hidden_states=out.hidden_states)


# save_pretrained writes auto_map ("AutoModelForCausalLM": "modeling_swax.SwaxForCausalLM") and copies this
# file with the two it imports next to the weights (the trust_remote_code route).
SwaxForCausalLM.register_for_auto_class("AutoModelForCausalLM")
SwaxModel.register_for_auto_class("AutoModel")

__all__ = ["SwaxForCausalLM", "SwaxModel", "SwaxPreTrainedModel", "SwaxCache", "mlstm_step", "mlstm_chunkwise"]
