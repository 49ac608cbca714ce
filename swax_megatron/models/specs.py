"""Layer specs: which classes fill each submodule, for the local (pure megatron-core + torch) and
the Transformer Engine backends. The two differ only in which classes fill the slots, chosen by
megatron's own BackendSpecProvider (models/backends.py: LocalSpecProvider, TESpecProvider),
extended with the slots a SWAX layer adds: the sliding and global core attention (ops.swa /
FlexAttention locally, TE's fused attention with a per-call window with TE) and the mLSTM gate
projection (a plain linear on both: never FP8).

    spec = get_swax_block_spec("local")          # ModuleSpec(SwaxBlock, ...)
    layer = get_swax_layer_spec("X", "local")    # ModuleSpec(SwaxLayer, ...)
"""

from __future__ import annotations

import copy
from typing import Optional

from megatron.core.extensions.transformer_engine_spec_provider import TESpecProvider
from megatron.core.models.backends import LocalSpecProvider
from megatron.core.tensor_parallel.layers import ColumnParallelLinear
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
    attribute makes finalize_model_grads sum it over TP, as for megatron's TE norms.

    A factory class, like WrappedTorchNorm itself: build_module instantiates the class a spec
    names, so `__new__` returns the torch norm module (not a LocalNorm)."""

    def __new__(cls, config, hidden_size: int, eps: float = 1e-5, **unused):
        sequence_parallel = config.sequence_parallel
        if sequence_parallel:
            config = copy.copy(config)
            config.sequence_parallel = False
        norm = WrappedTorchNorm(config=config, hidden_size=hidden_size, eps=eps)
        for p in norm.parameters():
            setattr(p, "sequence_parallel", sequence_parallel)
        return norm


class _SwaxSlots:
    """What a SWAX layer adds to megatron's BackendSpecProvider: `core_attention(sliding)` for S
    (sliding=True) and G layers, and the mLSTM gate projection."""

    def gate_linear(self) -> type:
        # Both backends: a plain linear, never FP8 (mlstm_layer.py says why).
        return ColumnParallelLinear


class SwaxLocalSpecProvider(_SwaxSlots, LocalSpecProvider):
    """megatron's local (no TE) classes; torch norms that also work under sequence parallelism;
    the windowed core attention of attention.py."""

    def layer_norm(self, rms_norm: bool = False, for_qk: bool = False) -> type:
        return LocalNorm

    def core_attention(self, sliding: bool = True) -> type:
        return SlidingWindowCoreAttention if sliding else GlobalCoreAttention


class SwaxTESpecProvider(_SwaxSlots, TESpecProvider):
    """megatron's Transformer Engine classes; TE fused attention with the per-step window."""

    def __init__(self):
        try:
            import transformer_engine  # noqa: F401
        except ImportError as e:
            raise ImportError(
                f"get_swax_layer_spec(backend='te') needs the transformer_engine package "
                f"(pip install transformer-engine[pytorch]), which does not import here ({e}); "
                f"use backend='local'") from None

    def core_attention(self, sliding: bool = True) -> type:
        from .te_attention import TEGlobalCoreAttention, TESlidingWindowCoreAttention

        return TESlidingWindowCoreAttention if sliding else TEGlobalCoreAttention


def spec_provider(backend: str):
    if backend == "local":
        return SwaxLocalSpecProvider()
    if backend == "te":
        return SwaxTESpecProvider()
    raise ValueError(f"unknown SWAX spec backend {backend!r}; choose one of {BACKENDS}")


def _attention_spec(p, core_attention_cls) -> ModuleSpec:
    return ModuleSpec(
        module=SelfAttention,
        params={"attn_mask_type": AttnMaskType.causal},
        submodules=SelfAttentionSubmodules(
            linear_qkv=p.column_parallel_linear(), core_attention=core_attention_cls,
            linear_proj=p.row_parallel_linear(), q_layernorm=IdentityOp, k_layernorm=IdentityOp))


def _mlstm_spec(p) -> ModuleSpec:
    return ModuleSpec(module=MLSTMMixer, submodules=MLSTMMixerSubmodules(
        linear_qkvo=p.column_parallel_linear(), linear_gates=p.gate_linear(),
        out_norm=HeadwiseLayerNorm, linear_proj=p.row_parallel_linear()))


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
    p = spec_provider(backend)
    if symbol == "S":
        mixer = _attention_spec(p, core_attention_cls or p.core_attention(sliding=True))
    elif symbol == "G":
        mixer = _attention_spec(p, core_attention_cls or p.core_attention(sliding=False))
    elif symbol == "X":
        mixer = _mlstm_spec(p)
    else:
        raise ValueError(f"unknown layer symbol {symbol!r}; known: S (sliding-window attention), "
                         f"G (global attention), X (mLSTM)")
    mlp = ModuleSpec(module=MLP, submodules=MLPSubmodules(linear_fc1=p.column_parallel_linear(),
                                                          linear_fc2=p.row_parallel_linear()))
    norm = p.layer_norm()
    return ModuleSpec(module=SwaxLayer, submodules=SwaxLayerSubmodules(
        input_layernorm=norm, mixer=mixer, pre_mlp_layernorm=norm, mlp=mlp))


def get_swax_block_spec(backend: str = "local", sliding_core_attention: Optional[type] = None,
                        global_core_attention: Optional[type] = None) -> ModuleSpec:
    """Spec of the decoder stack: one layer spec per symbol plus the final norm. The core
    attention classes of S and G layers can be replaced (default: the backend's)."""
    return ModuleSpec(module=SwaxBlock, submodules=SwaxBlockSubmodules(
        sliding_attention_layer=get_swax_layer_spec("S", backend, sliding_core_attention),
        global_attention_layer=get_swax_layer_spec("G", backend, global_core_attention),
        mlstm_layer=get_swax_layer_spec("X", backend),
        final_norm=spec_provider(backend).layer_norm()))
