"""SWAX on Megatron-core: config, layer specs, layers, block and model, plus a plain-torch reference.

    from swax_megatron.models import swax_model_from_recipe
    model = swax_model_from_recipe(recipe, vocab_size=V)   # this rank's pipeline stage
    model.set_swa_window(w)                                # per step, same w on every rank
    loss = model(tokens, labels=labels)                    # [b, s] per-token loss (last stage)

Names are imported lazily, so `swax_megatron.models.reference` (plain torch) loads without
importing megatron.
"""

import importlib

_EXPORTS = {
    "SwaxCoreAttention": "attention", "SlidingWindowCoreAttention": "attention",
    "GlobalCoreAttention": "attention",
    "SwaxBlock": "block", "SwaxBlockSubmodules": "block",
    "SwaxConfig": "config", "SwaxConfigError": "config",
    "padded_vocab_size": "config", "swax_config_from_recipe": "config",
    "SwaxLayer": "layer", "SwaxLayerSubmodules": "layer",
    "HeadwiseLayerNorm": "mlstm_layer", "MLSTMMixer": "mlstm_layer",
    "MLSTMMixerSubmodules": "mlstm_layer", "mlstm_cell": "mlstm_layer",
    "SwaxModel": "model", "swax_model_from_recipe": "model",
    "get_swax_block_spec": "specs", "get_swax_layer_spec": "specs",
    "SwaxReference": "reference", "ReferenceConfig": "reference",
    "reference_state_dict_from_megatron": "reference", "parameter_breakdown": "reference",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
