"""Transformer Engine core attention with the SWAX per-call window (GPU, TE >= 1.2).

megatron's TEDotProductAttention fixes the window when it is built (config.window_size) and its
forward passes none; TE's own DotProductAttention.forward takes `window_size` per call. This class
keeps megatron's constructor (so TE's fused/flash backends, the TP/CP groups, and FP8 attention
when model.fp8_attention sets megatron's fp8_dot_product_attention, are set up as usual) and calls
TE's forward with the step's window: (w - 1, 0) in TE's (left, right) convention, (-1, 0) for
full causal attention.
"""

from __future__ import annotations

import inspect
from typing import Optional

from megatron.core.extensions.transformer_engine import TEDotProductAttention
from megatron.core.transformer.enums import AttnMaskType

from .attention import WindowedAttention


def te_window_size(window: Optional[int]):
    return (-1, 0) if window is None else (window - 1, 0)


class TESwaxCoreAttention(WindowedAttention, TEDotProductAttention):
    sliding = False

    def __init__(self, config, layer_number: int, attn_mask_type: AttnMaskType = AttnMaskType.causal,
                 attention_type: str = "self", attention_dropout: Optional[float] = None,
                 softmax_scale: Optional[float] = None, cp_comm_type: Optional[str] = None,
                 pg_collection=None, **kwargs):
        te_forward = TEDotProductAttention.__mro__[1].forward
        if "window_size" not in inspect.signature(te_forward).parameters:
            raise ImportError("this Transformer Engine does not take window_size in "
                              "DotProductAttention.forward; SWAX's per-step window needs a newer TE")
        super().__init__(config, layer_number, attn_mask_type, attention_type,
                         attention_dropout=attention_dropout, softmax_scale=softmax_scale,
                         cp_comm_type=cp_comm_type, pg_collection=pg_collection, **kwargs)
        self._te_forward = te_forward
        self.init_window(config)

    def forward(self, query, key, value, attention_mask=None, attn_mask_type=None,
                attention_bias=None, packed_seq_params=None, **unused):
        if attention_mask is not None or attention_bias is not None or packed_seq_params is not None:
            raise ValueError("SWAX TE attention takes no mask, bias or packed sequences")
        return self._te_forward(self, query, key, value, None, attn_mask_type="causal",
                                window_size=te_window_size(self.window))


class TESlidingWindowCoreAttention(TESwaxCoreAttention):
    sliding = True


class TEGlobalCoreAttention(TESwaxCoreAttention):
    sliding = False
