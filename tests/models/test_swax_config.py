"""SwaxConfig from recipes, and bad configurations failing at build time with a clear message."""

import dataclasses

import pytest
import torch

from swax_model_testing import tiny_config


def test_config_from_default_recipe():
    from swax_megatron.config.resolve import resolve
    from swax_megatron.models import SwaxConfigError, swax_config_from_recipe

    recipe = resolve("recipes/tiny/swax.yaml").recipe
    with pytest.raises(SwaxConfigError, match="vocab size unknown"):
        swax_config_from_recipe(recipe)
    cfg = swax_config_from_recipe(recipe, vocab_size=8000)
    m = recipe.model
    assert cfg.vocab_size == 8064  # padded to a multiple of 128
    assert cfg.layer_symbols == "XSXS" and cfg.num_layers == m.num_layers
    assert cfg.ffn_hidden_size == m.ffn_hidden_size == 384  # round_up(2.667 * 128, 64)
    assert cfg.gated_linear_unit and cfg.activation_func is torch.nn.functional.silu
    assert not cfg.add_bias_linear and cfg.hidden_dropout == 0 and cfg.attention_dropout == 0
    assert cfg.rotary_base == m.rope_base and cfg.output_logit_soft_cap == 30.0
    # The recipe's SWA and mLSTM settings, carried whole (one home per setting).
    assert cfg.swa == m.swa and cfg.mlstm == m.mlstm and cfg.swa is not m.swa
    assert cfg.mlstm_head_dims == m.mlstm.head_dims(m.hidden_size) == (32, 64)
    assert cfg.init_seed == recipe.run.seed and cfg.params_dtype == torch.float32
    assert cfg.deterministic_mode is True and cfg.fp8 is None
    with pytest.raises(SwaxConfigError, match="unknown SwaxConfig field"):
        swax_config_from_recipe(recipe, vocab_size=8000, swa_windw=128)

    recipe = dataclasses.replace(recipe, parallel=dataclasses.replace(
        recipe.parallel, tensor_model_parallel_size=2, pipeline_model_parallel_size=2))
    cfg = swax_config_from_recipe(recipe, vocab_size=100)
    assert (cfg.tensor_model_parallel_size, cfg.pipeline_model_parallel_size, cfg.vocab_size) == (2, 2, 128)


def test_fp8_settings_reach_megatron():
    # megatron builds TE's fp8 recipe from these SwaxConfig fields (fp8_utils.get_fp8_recipe,
    # fp8_dpa from fp8_dot_product_attention); without TE the config itself refuses FP8.
    from swax_megatron.config.resolve import resolve
    from swax_megatron.models.config import swax_config_kwargs

    recipe = resolve("recipes/tiny/swax.yaml", ["model.fp8=hybrid", "train.precision=bf16",
                                               "model.fp8_attention=true",
                                               "model.fp8_recipe=tensorwise"]).recipe
    kwargs = swax_config_kwargs(recipe, vocab_size=512)
    assert kwargs["fp8"] == "hybrid" and kwargs["fp8_recipe"] == "tensorwise"
    assert kwargs["fp8_dot_product_attention"] is True
    plain = swax_config_kwargs(resolve("recipes/tiny/swax.yaml").recipe, vocab_size=512)
    assert "fp8" not in plain and "fp8_dot_product_attention" not in plain


# Only what the model itself decides: SWAX recipe rules are config/validate.py's (tests/config).
BAD = [
    # (overrides, exception, message)
    ({"virtual_pipeline_model_parallel_size": 2, "pipeline_model_parallel_size": 2,
      "num_layers": 4, "layer_pattern": "XS*2"}, "ValueError", "pipeline"),
    ({"attention_dropout": 0.1}, "SwaxConfigError", "attention_dropout > 0 is not supported"),
    ({"num_attention_heads": 3, "num_query_groups": 3, "tensor_model_parallel_size": 2},
     "ValueError", r"num_attention_heads \(3\) must be a multiple of tensor_model_parallel_size"),
]


@pytest.mark.parametrize("overrides,exc,message", BAD, ids=[next(iter(b[0])) for b in BAD])
def test_bad_config_fails_at_build(overrides, exc, message):
    from swax_megatron.models import SwaxConfigError

    error = SwaxConfigError if exc == "SwaxConfigError" else ValueError
    with pytest.raises(error, match=message):
        tiny_config("XS", **overrides)


def test_spec_backends():
    from swax_megatron.models import get_swax_block_spec, get_swax_layer_spec
    from swax_megatron.models.attention import GlobalCoreAttention, SlidingWindowCoreAttention
    from swax_megatron.models.mlstm_layer import MLSTMMixer

    spec = get_swax_block_spec("local")
    sub = spec.submodules
    core = lambda layer: layer.submodules.mixer.submodules.core_attention  # noqa: E731
    assert core(sub.sliding_attention_layer) is SlidingWindowCoreAttention
    assert core(sub.global_attention_layer) is GlobalCoreAttention
    assert sub.mlstm_layer.submodules.mixer.module is MLSTMMixer
    from megatron.core.tensor_parallel.layers import ColumnParallelLinear

    assert sub.mlstm_layer.submodules.mixer.submodules.linear_gates is ColumnParallelLinear
    with pytest.raises(ValueError, match="unknown layer symbol 'Q'"):
        get_swax_layer_spec("Q")
    with pytest.raises(ValueError, match="unknown SWAX spec backend 'tex'"):
        get_swax_block_spec("tex")
    try:
        import transformer_engine  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="needs the transformer_engine package"):
            get_swax_block_spec("te")
    else:
        from megatron.core.extensions.transformer_engine import TEColumnParallelLinear
        from megatron.core.tensor_parallel.layers import ColumnParallelLinear

        te = get_swax_block_spec("te").submodules
        mixer = te.mlstm_layer.submodules.mixer.submodules
        assert mixer.linear_qkvo is TEColumnParallelLinear
        assert mixer.linear_gates is ColumnParallelLinear  # never FP8
