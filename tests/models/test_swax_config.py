"""SwaxConfig from recipes, and bad configurations failing at build time with a clear message."""

import dataclasses

import pytest
import torch

from swax_model_testing import tiny_config


def test_config_from_default_recipe():
    from swax_megatron.config.schema import Recipe
    from swax_megatron.models import SwaxConfigError, swax_config_from_recipe

    recipe = Recipe()
    with pytest.raises(SwaxConfigError, match="vocab size unknown"):
        swax_config_from_recipe(recipe)
    cfg = swax_config_from_recipe(recipe, vocab_size=8000)
    m = recipe.model
    assert cfg.vocab_size == 8064  # padded to a multiple of 128
    assert cfg.layer_symbols == "XSXS" and cfg.num_layers == m.num_layers
    assert cfg.ffn_hidden_size == 704  # round_up(2.667 * 256, 64)
    assert cfg.gated_linear_unit and cfg.activation_func is torch.nn.functional.silu
    assert not cfg.add_bias_linear and cfg.hidden_dropout == 0 and cfg.attention_dropout == 0
    assert cfg.swa_window == m.swa.window and cfg.rotary_base == m.rope_base
    assert cfg.mlstm_qk_head_dim == 32 and cfg.mlstm_v_head_dim == 64  # 256 * (0.5, 1.0) / 4 heads
    assert cfg.mlstm_igate_bias_init == -10.0 and cfg.mlstm_fgate_bias_init == (3.0, 6.0)
    assert cfg.output_logit_soft_cap == 30.0 and cfg.mlstm_gate_soft_cap == 15.0
    assert cfg.init_seed == recipe.run.seed and cfg.params_dtype == torch.float32
    assert swax_config_from_recipe(recipe, vocab_size=8000, swa_window=128).swa_window == 128
    with pytest.raises(SwaxConfigError, match="unknown SwaxConfig field"):
        swax_config_from_recipe(recipe, vocab_size=8000, swa_windw=128)

    recipe = dataclasses.replace(recipe, parallel=dataclasses.replace(
        recipe.parallel, tensor_model_parallel_size=2, pipeline_model_parallel_size=2))
    cfg = swax_config_from_recipe(recipe, vocab_size=100)
    assert (cfg.tensor_model_parallel_size, cfg.pipeline_model_parallel_size, cfg.vocab_size) == (2, 2, 128)


BAD = [
    # (pattern, tp, pp, overrides, exception, message)
    ("XQ", 1, 1, {}, "SwaxConfigError", "unknown symbol 'Q'"),
    ("XS", 1, 1, {"num_layers": 3}, "SwaxConfigError", "has 2 layers but num_layers is 3"),
    ("XS", 2, 1, {"num_attention_heads": 3, "num_query_groups": 3}, "ValueError",
     r"num_attention_heads \(3\) must be a multiple of tensor_model_parallel_size \(2\)"),
    ("XS", 2, 1, {"mlstm_num_heads": 3}, "SwaxConfigError",
     "mLSTM heads 3 are not divisible by tensor_model_parallel_size 2"),
    ("XS", 2, 1, {"num_query_groups": 1}, "SwaxConfigError",
     r"num_query_groups \(kv heads\) 1 is not divisible by tensor_model_parallel_size 2"),
    ("XSX", 1, 2, {}, "SwaxConfigError", "3 layers do not split evenly into 2 pipeline stages"),
    ("XS|X|S", 1, 2, {}, "SwaxConfigError",
     r"has 3 stages \('\|' markers\) but pipeline_model_parallel_size is 2"),
    ("XS", 1, 1, {"mlstm_num_heads": 5}, "SwaxConfigError", "not a positive multiple of mlstm_num_heads 5"),
    ("XS", 2, 1, {"vocab_size": 127}, "SwaxConfigError", "vocab_size 127 is not divisible"),
    ("XS", 1, 1, {"swa_window": 0}, "SwaxConfigError", "swa_window must be a positive int"),
    ("XS", 1, 1, {"attention_dropout": 0.1}, "SwaxConfigError", "attention_dropout > 0 is not supported"),
]


@pytest.mark.parametrize("pattern,tp,pp,overrides,exc,message", BAD,
                         ids=[f"{b[0]}-tp{b[1]}-pp{b[2]}-{'-'.join(b[3]) or 'pattern'}" for b in BAD])
def test_bad_config_fails_at_build(pattern, tp, pp, overrides, exc, message):
    from swax_megatron.models import SwaxConfigError

    error = SwaxConfigError if exc == "SwaxConfigError" else ValueError
    with pytest.raises(error, match=message):
        tiny_config(pattern, tp=tp, pp=pp, **overrides)


def test_uneven_stages_with_markers_are_accepted():
    cfg = tiny_config("XSX|S", pp=2)
    from swax_megatron.models.block import layer_symbols_per_stage

    assert layer_symbols_per_stage(cfg) == ["XSX", "S"]


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

        te = get_swax_block_spec("te").submodules
        assert te.mlstm_layer.submodules.mixer.submodules.linear_qkv is TEColumnParallelLinear
