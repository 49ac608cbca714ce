"""SwaxBlock: this pipeline stage's layers, built from the layer pattern.

The pattern is split with `config.pattern.split_for_pipeline` (even split, or the `|` markers);
each symbol picks its layer spec from SwaxBlockSubmodules. Like megatron's MambaStack, but with
the final norm from the spec (MambaStack hard-codes TENorm) and global layer numbers for every
layer type.

Full recomputation (config.recompute_granularity 'full'), megatron's TransformerBlock methods
over this stage's layers of the types in `recompute_layer_types` (the others always keep their
activations): `uniform` recomputes runs of consecutive such layers `recompute_num_layers` at a
time (only each group's input is kept; a layer of another type ends a run), `block` recomputes
the first `recompute_num_layers` such layers of the stage one by one. `recompute_groups` is the
plan, a pure function of the pattern.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Union

import torch
from megatron.core.fp8_utils import get_fp8_context
from megatron.core.dist_checkpointing.utils import replace_prefix_for_sharding
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from megatron.core.transformer.utils import sharded_state_dict_default
from megatron.core.utils import make_viewless_tensor

from ..config.pattern import split_for_pipeline, stage_offset
from .config import SwaxConfig
from .layer import recompute


def recompute_groups(symbols: str, layer_types: str, method: str,
                     num_layers: int) -> List[Tuple[int, int, bool]]:
    """Full recomputation of a stage with layers `symbols`: (start, end, recomputed) runs of
    local layer indices covering the stage in order (module docstring)."""
    groups: List[Tuple[int, int, bool]] = []
    budget = num_layers  # block: recomputed layers left
    i = 0
    while i < len(symbols):
        if symbols[i] not in layer_types:
            groups.append((i, i + 1, False))
            i += 1
        elif method == "uniform":
            end = i
            while end < len(symbols) and end - i < num_layers and symbols[end] in layer_types:
                end += 1
            groups.append((i, end, True))
            i = end
        elif method == "block":
            groups.append((i, i + 1, budget > 0))
            budget -= 1
            i += 1
        else:
            raise ValueError(f"unknown recompute method {method!r}; expected uniform or block")
    return groups


@dataclass
class SwaxBlockSubmodules:
    sliding_attention_layer: Union[ModuleSpec, type] = IdentityOp  # S
    global_attention_layer: Union[ModuleSpec, type] = IdentityOp  # G
    mlstm_layer: Union[ModuleSpec, type] = IdentityOp  # X
    final_norm: Union[ModuleSpec, type] = IdentityOp

    def for_symbol(self, symbol: str):
        return {"S": self.sliding_attention_layer, "G": self.global_attention_layer,
                "X": self.mlstm_layer}[symbol]


class SwaxBlock(MegatronModule):
    def __init__(self, config: SwaxConfig, submodules: SwaxBlockSubmodules, pre_process: bool = True,
                 post_process: bool = True, pg_collection: Optional[ProcessGroupCollection] = None,
                 layer_init_seeds: Optional[Dict[int, int]] = None):
        super().__init__(config=config)
        if pg_collection is None:
            pg_collection = ProcessGroupCollection.use_mpu_process_groups()
        self.pre_process, self.post_process = pre_process, post_process
        self.tp_group = pg_collection.tp
        pp_size, pp_rank = pg_collection.pp.size(), pg_collection.pp.rank()
        if pp_size != config.pipeline_model_parallel_size:
            raise ValueError(f"pipeline group has {pp_size} ranks but the config says "
                             f"pipeline_model_parallel_size={config.pipeline_model_parallel_size}")
        self.layer_symbols: str = split_for_pipeline(config.layer_pattern, pp_size)[pp_rank]
        self.layer_offset: int = stage_offset(config.layer_pattern, pp_size, pp_rank)
        self.input_tensor = None  # set by the pipeline schedule on stages after the first

        self.layers = torch.nn.ModuleList()
        for i, symbol in enumerate(self.layer_symbols):
            number = self.layer_offset + i + 1
            with seeded_init(layer_init_seeds, number):
                self.layers.append(build_module(submodules.for_symbol(symbol), config=config,
                                                layer_number=number, symbol=symbol,
                                                pg_collection=pg_collection))
        if post_process:
            self.final_norm = build_module(submodules.final_norm, config=config,
                                           hidden_size=config.hidden_size, eps=config.layernorm_epsilon)
        self.recompute_plan = None
        if config.recompute_granularity == "full":
            self.recompute_plan = recompute_groups(
                self.layer_symbols, config.recompute_layer_types, config.recompute_method,
                config.recompute_num_layers)

    def set_input_tensor(self, input_tensor: torch.Tensor) -> None:
        """The stage input received over p2p replaces forward()'s hidden_states (stages > 0)."""
        self.input_tensor = input_tensor

    def forward(self, hidden_states, attention_mask=None, rotary_pos_emb=None, inference_state=None):
        if not self.pre_process:
            hidden_states = self.input_tensor
        # Incremental decoding only: training calls keep the layers' plain signature.
        extra = {} if inference_state is None else {"inference_state": inference_state}
        # FP8 (recipe model.fp8): one TE fp8_autocast around the stage, as megatron's
        # TransformerBlock does for the delayed-scaling recipe; a null context otherwise.
        with get_fp8_context(self.config):
            if self.recompute_plan is not None and self.training and inference_state is None:
                hidden_states = self._checkpointed_forward(hidden_states, attention_mask,
                                                           rotary_pos_emb)
            else:
                for layer in self.layers:
                    hidden_states = layer(hidden_states, attention_mask=attention_mask,
                                          rotary_pos_emb=rotary_pos_emb, **extra)
        if self.post_process:
            hidden_states = self.final_norm(hidden_states)
        # The tensor handed to the next stage must not be a view (see megatron TransformerBlock).
        return make_viewless_tensor(inp=hidden_states, requires_grad=hidden_states.requires_grad,
                                    keep_graph=True)

    def _checkpointed_forward(self, hidden_states, attention_mask, rotary_pos_emb):
        def run(start: int, end: int):
            def forward(hidden_states, attention_mask, rotary_pos_emb):
                for layer in self.layers[start:end]:
                    hidden_states = layer(hidden_states, attention_mask=attention_mask,
                                          rotary_pos_emb=rotary_pos_emb)
                return hidden_states
            return forward

        for start, end, recomputed in self.recompute_plan:
            if recomputed:
                hidden_states = recompute(self.config, self.tp_group, run(start, end),
                                          hidden_states, attention_mask, rotary_pos_emb)
            else:
                hidden_states = run(start, end)(hidden_states, attention_mask, rotary_pos_emb)
        return hidden_states

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (),
                           metadata: Optional[dict] = None):
        """Layers keyed by their global index, so a checkpoint reshards across PP splits."""
        out = {}
        for local, layer in enumerate(self.layers):
            local_prefix = f"{prefix}layers.{local}."
            sd = layer.sharded_state_dict(local_prefix, (), metadata)
            replace_prefix_for_sharding(sd, local_prefix, f"{prefix}layers.{layer.layer_number - 1}.")
            out.update(sd)
        for name, module in self.named_children():
            if module is not self.layers:
                out.update(sharded_state_dict_default(module, f"{prefix}{name}.", sharded_offsets,
                                                      metadata, tp_group=self.tp_group))
        return out


@contextlib.contextmanager
def seeded_init(seeds: Optional[Dict], key):
    """Draw a component's init from its own RNG stream (see SwaxConfig.init_seed)."""
    if seeds is None:
        yield
        return
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seeds[key])
        yield


def component_seeds(base_seed: int, num_layers: int) -> Dict:
    """Init seeds: 'embedding', 'output_layer' and each global layer number 1..num_layers."""
    mix = lambda k: (base_seed * 1_000_003 + 7_919 * k) % (2 ** 63)  # noqa: E731
    seeds = {n: mix(n) for n in range(1, num_layers + 1)}
    seeds["embedding"] = mix(0)
    seeds["output_layer"] = mix(num_layers + 1)
    return seeds

