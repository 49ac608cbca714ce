"""Hugging Face transformers support: SwaxHFConfig, SwaxModel, SwaxForCausalLM, SwaxCache.

Importing this package registers model_type "swax" with AutoConfig, AutoModel and
AutoModelForCausalLM, so an exported directory loads without trust_remote_code once
`import swax_megatron.hf` has run:

    import swax_megatron.hf  # noqa: F401
    model = AutoModelForCausalLM.from_pretrained("hf/run")

Exports also carry the modelling files and an auto_map, so where swax_megatron is not installed
`AutoModelForCausalLM.from_pretrained("hf/run", trust_remote_code=True)` loads them (the files
import only torch and transformers). Needs the `hf` extra (pip install "swax_megatron[hf]").
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .cache_swax import SwaxCache
from .configuration_swax import SwaxHFConfig
from .modeling_swax import SwaxForCausalLM, SwaxModel, SwaxPreTrainedModel

AutoConfig.register(SwaxHFConfig.model_type, SwaxHFConfig, exist_ok=True)
AutoModel.register(SwaxHFConfig, SwaxModel, exist_ok=True)
AutoModelForCausalLM.register(SwaxHFConfig, SwaxForCausalLM, exist_ok=True)

__all__ = ["SwaxHFConfig", "SwaxModel", "SwaxForCausalLM", "SwaxPreTrainedModel", "SwaxCache"]
