"""One SWAX block, the same for every pattern symbol: only the mixer differs.

    x = x + mixer(input_layernorm(x))        S / G: SelfAttention with RoPE;  X: MLSTMMixer
    x = x + mlp(pre_mlp_layernorm(x))        SwiGLU

Every layer is numbered globally (1-based, pipeline offset included), so checkpoints and logs
name a layer the same way at any pipeline split.

Selective recomputation (config.recompute_granularity 'selective'): module `mlp` recomputes the
MLP in backward (as megatron's TransformerLayer does), `core_attn` the attention core (megatron's
Attention itself), `mlstm_cell` the X mixer's cell (mlstm_layer.py). `recompute` is the one
checkpoint call of all of them and of SwaxBlock's full recomputation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from megatron.core import tensor_parallel
from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from megatron.core.utils import make_viewless_tensor

from .config import SwaxConfig


def recompute(config, tp_group, function, *args):
    """function(*args), its activations dropped and recomputed in backward: megatron's
    tensor_parallel.checkpoint (RNG states saved and restored), Transformer Engine's under FP8
    (its scaling state too), as megatron's TransformerBlock chooses."""
    if config.fp8:
        from megatron.core.extensions.transformer_engine import te_checkpoint

        return te_checkpoint(function, False, tensor_parallel.random.get_cuda_rng_tracker,
                             tp_group, *args)
    return tensor_parallel.checkpoint(function, False, *args)


@dataclass
class SwaxLayerSubmodules:
    input_layernorm: Union[ModuleSpec, type] = IdentityOp
    mixer: Union[ModuleSpec, type] = IdentityOp
    pre_mlp_layernorm: Union[ModuleSpec, type] = IdentityOp
    mlp: Union[ModuleSpec, type] = IdentityOp


class SwaxLayer(MegatronModule):
    def __init__(self, config: SwaxConfig, submodules: SwaxLayerSubmodules, layer_number: int = 1,
                 symbol: str = "?", pg_collection: Optional[ProcessGroupCollection] = None):
        super().__init__(config=config)
        if pg_collection is None:
            pg_collection = ProcessGroupCollection.use_mpu_process_groups()
        self.layer_number = layer_number
        self.symbol = symbol
        self.tp_group = pg_collection.tp
        self.recompute_mlp = (config.recompute_granularity == "selective"
                              and "mlp" in config.recompute_modules)
        eps = config.layernorm_epsilon
        self.input_layernorm = build_module(submodules.input_layernorm, config=config,
                                            hidden_size=config.hidden_size, eps=eps)
        self.mixer = build_module(submodules.mixer, config=config, layer_number=layer_number,
                                  pg_collection=pg_collection)
        self.pre_mlp_layernorm = build_module(submodules.pre_mlp_layernorm, config=config,
                                              hidden_size=config.hidden_size, eps=eps)
        self.mlp = build_module(submodules.mlp, config=config, ffn_hidden_size=config.ffn_hidden_size,
                                tp_group=pg_collection.tp)

    def _residual_add(self, out_with_bias, residual):
        return get_bias_dropout_add(self.training, self.config.bias_dropout_fusion)(
            out_with_bias, residual, self.config.hidden_dropout)

    def forward(self, hidden_states, attention_mask=None, rotary_pos_emb=None, inference_state=None):
        """[s, b, hidden] -> [s, b, hidden]. inference_state (models.model.InferenceState):
        incremental decoding, the mixer continuing from this layer's cache in it."""
        residual = hidden_states
        if inference_state is None:
            mixed = self.mixer(self.input_layernorm(hidden_states), attention_mask=attention_mask,
                               rotary_pos_emb=rotary_pos_emb)
        else:
            mixed = inference_state.mix(self, self.input_layernorm(hidden_states), rotary_pos_emb)
        hidden_states = self._residual_add(mixed, residual)
        residual = hidden_states
        normed = self.pre_mlp_layernorm(hidden_states)
        if self.recompute_mlp and self.training:
            mlp_out = recompute(self.config, self.tp_group, self.mlp, normed)
        else:
            mlp_out = self.mlp(normed)
        hidden_states = self._residual_add(mlp_out, residual)
        return make_viewless_tensor(inp=hidden_states, requires_grad=hidden_states.requires_grad,
                                    keep_graph=True)
