"""Layer specs: which classes fill each submodule, for the local (pure megatron-core + torch) and
the Transformer Engine backends. The two differ only in which classes fill the slots: torch norms,
megatron's parallel linears and SWAX's windowed core attention (ops.swa / FlexAttention) locally;
TE norms, TE linears and TE's fused attention with a per-call window (te_attention.py) with TE.

    spec = get_swax_block_spec("local")          # ModuleSpec(SwaxBlock, ...)
    layer = get_swax_layer_spec("X", "local")    # ModuleSpec(SwaxLayer, ...)
"""

from __future__ import annotations

import copy
from typing import Optional

from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.torch_norm import WrappedTorchNorm

from .attention import GlobalCoreAttention, SlidingWindowCoreAttention, WindowedAttention
from .block import SwaxBlock, SwaxBlockSubmodules
from .layer import SwaxLayer, SwaxLayerSubmodules
from .mlstm_layer import HeadwiseLayerNorm, MLSTMMixer, MLSTMMixerSubmodules

BACKENDS = ("local", "te")


class LocalNorm:
    """megatron's WrappedTorchNorm (torch RMSNorm / LayerNorm per config.normalization), usable
    under sequence parallelism too, which WrappedTorchNorm refuses: the norm then sees this
    rank's sequence shard, so its weight gradient is partial per TP rank; the `sequence_parallel`
    attribute makes finalize_model_grads sum it over TP, as for megatron's TE norms."""

    def __new__(cls, config, hidden_size: int, eps: float = 1e-5, **unused):
        if config.sequence_parallel:
            config = copy.copy(config)
            config.sequence_parallel = False
            sequence_parallel = True
        else:
            sequence_parallel = False
        norm = WrappedTorchNorm(config=config, hidden_size=hidden_size, eps=eps)
        for p in norm.parameters():
            setattr(p, "sequence_parallel", sequence_parallel)
        return norm


class _Classes:
    def __init__(self, backend: str):
        if backend == "local":
            self.norm, self.column, self.row = LocalNorm, ColumnParallelLinear, RowParallelLinear
            self.sliding_core, self.global_core = SlidingWindowCoreAttention, GlobalCoreAttention
        elif backend == "te":
            try:
                import transformer_engine  # noqa: F401
                from megatron.core.extensions.transformer_engine import (
                    TEColumnParallelLinear,
                    TENorm,
                    TERowParallelLinear,
                )
            except ImportError as e:
                raise ImportError(
                    f"get_swax_layer_spec(backend='te') needs the transformer_engine package "
                    f"(pip install transformer-engine[pytorch]), which does not import here ({e}); "
                    f"use backend='local'") from None
            from .te_attention import TEGlobalCoreAttention, TESlidingWindowCoreAttention

            self.norm, self.column, self.row = TENorm, TEColumnParallelLinear, TERowParallelLinear
            self.sliding_core, self.global_core = TESlidingWindowCoreAttention, TEGlobalCoreAttention
        else:
            raise ValueError(f"unknown SWAX spec backend {backend!r}; choose one of {BACKENDS}")


def _attention_spec(c: _Classes, core_attention_cls) -> ModuleSpec:
    return ModuleSpec(
        module=SelfAttention,
        params={"attn_mask_type": AttnMaskType.causal},
        submodules=SelfAttentionSubmodules(linear_qkv=c.column, core_attention=core_attention_cls,
                                           linear_proj=c.row, q_layernorm=IdentityOp,
                                           k_layernorm=IdentityOp))


def _mlstm_spec(c: _Classes) -> ModuleSpec:
    return ModuleSpec(module=MLSTMMixer, submodules=MLSTMMixerSubmodules(
        linear_qkv=c.column, out_norm=HeadwiseLayerNorm, linear_proj=c.row))


def get_swax_layer_spec(symbol: str, backend: str = "local",
                        core_attention_cls: Optional[type] = None) -> ModuleSpec:
    """Spec of one layer: `symbol` S (sliding-window attention), G (global attention) or X (mLSTM).
    core_attention_cls replaces the core attention class of S/G layers (same signature as
    megatron's DotProductAttention, and a WindowedAttention: SwaxModel.set_swa_window reaches only
    those, so any other class would silently keep one window)."""
    if core_attention_cls is not None and not (isinstance(core_attention_cls, type)
                                               and issubclass(core_attention_cls, WindowedAttention)):
        raise TypeError(f"core attention {core_attention_cls!r} must subclass "
                        f"swax_megatron.models.attention.WindowedAttention (the per-step window)")
    c = _Classes(backend)
    if symbol == "S":
        mixer = _attention_spec(c, core_attention_cls or c.sliding_core)
    elif symbol == "G":
        mixer = _attention_spec(c, core_attention_cls or c.global_core)
    elif symbol == "X":
        mixer = _mlstm_spec(c)
    else:
        raise ValueError(f"unknown layer symbol {symbol!r}; known: S (sliding-window attention), "
                         f"G (global attention), X (mLSTM)")
    mlp = ModuleSpec(module=MLP, submodules=MLPSubmodules(linear_fc1=c.column, linear_fc2=c.row))
    return ModuleSpec(module=SwaxLayer, submodules=SwaxLayerSubmodules(
        input_layernorm=c.norm, mixer=mixer, pre_mlp_layernorm=c.norm, mlp=mlp))


def get_swax_block_spec(backend: str = "local", sliding_core_attention: Optional[type] = None,
                        global_core_attention: Optional[type] = None) -> ModuleSpec:
    """Spec of the decoder stack: one layer spec per symbol plus the final norm. The core
    attention classes of S and G layers can be replaced (default: SlidingWindowCoreAttention,
    GlobalCoreAttention)."""
    norm = _Classes(backend).norm
    return ModuleSpec(module=SwaxBlock, submodules=SwaxBlockSubmodules(
        sliding_attention_layer=get_swax_layer_spec("S", backend, sliding_core_attention),
        global_attention_layer=get_swax_layer_spec("G", backend, global_core_attention),
        mlstm_layer=get_swax_layer_spec("X", backend),
        final_norm=norm))
