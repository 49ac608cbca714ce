"""Core attention for S (sliding window) and G (global) layers, with a window chosen per call.

Megatron's local DotProductAttention materialises S x S scores and, when a window is configured,
replaces the caller's mask with its own; its window is fixed at construction. These classes keep
its constructor and forward signature (they slot into `SelfAttentionSubmodules.core_attention`),
take q/k/v as [s, b, heads, d] and call a kernel whose window is an argument: the step's window
is set with `set_window`. Every core attention of S and G layers, whatever its kernel (these classes,
te_attention.py's), implements one interface, `WindowedAttention`; SwaxModel.set_swa_window selects
modules by it, so a backend that forgets it fails loudly in the spec instead of silently training at
the configured window.

Kernels (`model.attention_backend`, resolved by `resolve_attention_backend`):
  torch  ops.swa.sliding_window_attention (chunked O(S x window) / SDPA), CPU and GPU
  flex   ops.swa.flex (FlexAttention with a cached block mask), GPUs without Transformer Engine
  te     Transformer Engine's fused attention (te_attention.py), through the TE layer spec
  auto   te on CUDA when transformer_engine imports, else flex on CUDA, else torch
"""

from __future__ import annotations

import math
from typing import Optional

from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.utils import divide

import torch

from ..ops.swa import flex as swa_flex
from ..ops.swa import sliding_window_attention
from . import ulysses
from .config import SwaxConfig

ATTENTION_BACKENDS = ("auto", "te", "flex", "torch")


def have_transformer_engine() -> bool:
    try:
        import transformer_engine  # noqa: F401
        import transformer_engine.pytorch  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_attention_backend(name: str, *, cuda: Optional[bool] = None,
                              te: Optional[bool] = None) -> str:
    """The concrete kernel ("te", "flex" or "torch") for `model.attention_backend`."""
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {ATTENTION_BACKENDS}")
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if name == "auto":
        if cuda and (have_transformer_engine() if te is None else te):
            return "te"
        return "flex" if cuda and swa_flex.HAVE_FLEX else "torch"
    if name == "te" and not (have_transformer_engine() if te is None else te):
        raise ImportError("attention_backend 'te' needs Transformer Engine "
                          "(pip install transformer-engine[pytorch]), which does not import here; "
                          "use attention_backend: flex or torch")
    if name == "flex" and not swa_flex.HAVE_FLEX:
        raise ImportError("attention_backend 'flex' needs torch >= 2.5 (FlexAttention)")
    return name


def check_window(window) -> Optional[int]:
    if window is None:
        return None
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"sliding window must be a positive int (tokens, query included) or None, "
                         f"got {window!r}")
    return window


class WindowedAttention:
    """The window interface of every S/G core attention (local torch, Flex, TE, any future one).

    `sliding` (class attribute) is True for S layers, False for G layers; `window` is what the next
    call uses (tokens, query included; None = full causal). A subclass calls `init_window(config)`
    in its constructor and reads `self.window` in forward. A mixin, not a base module class, because
    the TE class must keep megatron's TEDotProductAttention as its module base."""

    sliding: bool = False
    window: Optional[int] = None

    def init_window(self, config: SwaxConfig) -> None:
        self._default_window = config.swa.window if self.sliding else None
        self.window = self._default_window

    def set_window(self, window: Optional[int]) -> None:
        """Window for the following calls; None restores the default (config.swa.window on S
        layers). G layers keep full causal attention whatever the value."""
        window = check_window(window)
        if self.sliding:
            self.window = self._default_window if window is None else window


class SwaxCoreAttention(WindowedAttention, MegatronModule):
    """Causal softmax attention over [s, b, heads, d]; `window` None means full causal (G layers).

    Same constructor and forward signature as megatron's DotProductAttention.
    """

    sliding = False  # S layers: SlidingWindowCoreAttention

    def __init__(
        self,
        config: SwaxConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType = AttnMaskType.causal,
        attention_type: str = "self",
        attention_dropout: Optional[float] = None,
        softmax_scale: Optional[float] = None,
        cp_comm_type: Optional[str] = None,
        pg_collection: Optional[ProcessGroupCollection] = None,
    ):
        super().__init__(config=config)
        if attn_mask_type not in (AttnMaskType.causal, AttnMaskType.padding_causal):
            raise ValueError(f"SWAX attention is causal; got attn_mask_type={attn_mask_type}")
        dropout = config.attention_dropout if attention_dropout is None else attention_dropout
        if dropout:
            raise ValueError("SWAX core attention does not support attention dropout")
        backend = resolve_attention_backend(config.attention_backend)
        if backend == "te":
            if config.attention_backend == "te":
                raise ValueError("attention_backend 'te' runs through the TE layer spec "
                                 "(get_swax_block_spec('te')), not this local core attention")
            # auto on a TE machine with the local spec: the best non-TE kernel.
            backend = "flex" if torch.cuda.is_available() and swa_flex.HAVE_FLEX else "torch"
        self.kernel = (swa_flex.flex_sliding_window_attention if backend == "flex"
                       else sliding_window_attention)
        if pg_collection is None:
            pg_collection = ProcessGroupCollection.use_mpu_process_groups(required_pgs=["tp"])
        self.layer_number = layer_number
        tp = pg_collection.tp.size()
        self.heads_per_partition = divide(config.num_attention_heads, tp)
        self.head_dim = config.kv_channels
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(self.head_dim)
        self.init_window(config)
        # Context parallelism is Ulysses here: whole sequences for a share of the heads.
        self.ulysses = ulysses.ulysses_group() if config.context_parallel_size > 1 else None

    def forward(self, query, key, value, attention_mask=None, attn_mask_type=None,
                attention_bias=None, packed_seq_params=None):
        if attention_mask is not None:
            raise ValueError("SWAX attention builds its causal/sliding mask itself; pass "
                             "attention_mask=None")
        if attention_bias is not None or packed_seq_params is not None:
            raise ValueError("SWAX core attention supports neither attention_bias nor packed sequences")
        s, b = query.shape[0], query.shape[1]
        if self.ulysses is not None:
            out = ulysses.attention(self._attend, query, key, value, self.ulysses)
        else:
            out = self._attend(query, key, value)
        return out.reshape(s, b, -1)

    def _attend(self, query, key, value):
        """[s, b, heads, d] (whole sequences) -> [s, b, heads, d]."""
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        out = self.kernel(q, k, v, self.window, softmax_scale=self.softmax_scale)
        return out.permute(2, 0, 1, 3)


class SlidingWindowCoreAttention(SwaxCoreAttention):
    """S layers: the window is the step's (set_window), config.swa.window until one is set."""

    sliding = True


class GlobalCoreAttention(SwaxCoreAttention):
    """G layers: full causal attention; set_window does not affect them."""

    sliding = False


# --- incremental decoding ---------------------------------------------------------------------------

# Long prefills attend in blocks of this many queries, each against only the keys its window can
# reach: O(length x window) memory for S layers instead of O(length^2).
DECODE_QUERY_BLOCK = 512


class AttentionCache:
    """Keys and values [b, heads_kv, T, d] (RoPE applied) an S/G layer keeps between decoding
    calls, with each key's token index [b, T] (real tokens of its row before it; -1 padding).
    S layers keep the last `window - 1` columns: with padding only on the left of the first call,
    those are each row's last `window - 1` tokens, all a later query can see (it is the window's
    last token itself). G layers keep every key."""

    def __init__(self):
        self.keys = self.values = self.key_index = None

    def extend(self, keys, values, key_index):
        """The cached keys followed by this call's: what this call's queries attend to."""
        if self.keys is None:
            return keys, values, key_index
        return (torch.cat([self.keys, keys], dim=2), torch.cat([self.values, values], dim=2),
                torch.cat([self.key_index, key_index], dim=1))

    def keep(self, keys, values, key_index, window: Optional[int]) -> None:
        if window is not None:
            start = max(0, key_index.shape[1] - (window - 1))
            keys, values, key_index = keys[:, :, start:], values[:, :, start:], key_index[:, start:]
        self.keys, self.values, self.key_index = keys, values, key_index


def indexed_attention(q, k, v, q_index, k_index, window: Optional[int], softmax_scale: float):
    """Softmax attention matched by token index, not by position. q [b, h, Lq, d]; k, v
    [b, hkv, Lk, d]; q_index [b, Lq], k_index [b, Lk] (-1: padding). A query with index t sees the
    keys with index t - window < s <= t (window None: every s <= t): the sliding / causal masks of
    the training kernels, invisible to left padding."""
    qi, ki = q_index[:, :, None], k_index[:, None, :]
    seen = (ki >= 0) & (ki <= qi)
    if window is not None:
        seen = seen & (ki > qi - window)
    # A padding query sees nothing: let it see everything so softmax stays finite (its output is
    # never read: padding keys are masked for every later query, padding never updates a state).
    seen = seen | ~seen.any(-1, keepdim=True)
    return torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=seen[:, None], scale=softmax_scale, enable_gqa=q.shape[1] != k.shape[1])


def cached_self_attention(attention, hidden_states, rotary_pos_emb, cache: AttentionCache,
                          token_index: torch.Tensor):
    """megatron's SelfAttention (an S or G layer) over this call's tokens, continuing from `cache`
    (updated in place): the same projections, RoPE and output projection as its forward, with the
    keys of earlier calls. hidden_states [s, b, hidden]; rotary_pos_emb [s, b, 1, d] (each token's
    own position); token_index [b, s]. Returns (out, bias) like SelfAttention.forward."""
    from megatron.core.models.common.embeddings.rope_utils import apply_rotary_pos_emb
    from megatron.core.transformer.identity_op import IdentityOp

    for norm in (attention.q_layernorm, attention.k_layernorm):
        if norm is not None and not isinstance(norm, IdentityOp):
            raise ValueError("incremental decoding does not support q/k layernorm")
    core = attention.core_attention
    if not isinstance(core, WindowedAttention):
        raise TypeError(f"{type(core).__name__} is not a WindowedAttention: no window to decode with")
    query, key, value = attention.get_query_key_value_tensors(hidden_states)  # [s, b, h, d]
    if rotary_pos_emb is not None:
        query = apply_rotary_pos_emb(query, rotary_pos_emb, config=attention.config)
        key = apply_rotary_pos_emb(key, rotary_pos_emb, config=attention.config)
    q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, h, s, d]
    keys, values, key_index = cache.extend(k, v, token_index)
    window = core.window
    scale = getattr(core, "softmax_scale", None) or q.shape[-1] ** -0.5
    s, b = query.shape[0], query.shape[1]
    past = keys.shape[2] - s
    outs = []
    for a in range(0, s, DECODE_QUERY_BLOCK):
        e = min(a + DECODE_QUERY_BLOCK, s)
        # Keys within reach of this block: padding is on the left, so inside a call a position and
        # a token index advance together; cached keys are older than every new one.
        lo = 0 if window is None or a - window + 1 <= 0 else past + a - window + 1
        outs.append(indexed_attention(q[:, :, a:e], keys[:, :, lo:past + e], values[:, :, lo:past + e],
                                      token_index[:, a:e], key_index[:, lo:past + e], window, scale))
    cache.keep(keys, values, key_index, window)
    out = torch.cat(outs, dim=2).permute(2, 0, 1, 3).reshape(s, b, -1)
    return attention.linear_proj(out)
