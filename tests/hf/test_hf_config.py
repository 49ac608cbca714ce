"""SwaxHFConfig: defaults, JSON round trip, one-line errors for impossible settings and bad inputs."""

import pytest
import torch
from hf_testing import tiny_config, tiny_model

from swax_megatron.hf import SwaxCache, SwaxHFConfig


def test_defaults_are_swax_1p4b():
    c = SwaxHFConfig()
    assert c.layer_types == ["mlstm", "sliding_attention"] * 12 and c.num_hidden_layers == 24
    assert (c.hidden_size, c.num_attention_heads, c.head_dim, c.num_key_value_heads) == (2048, 16, 128, 16)
    assert (c.mlstm_num_heads, c.mlstm_qk_head_dim, c.mlstm_v_head_dim) == (4, 256, 512)
    assert (c.sliding_window, c.mlstm_gate_soft_cap, c.output_logit_soft_cap) == (2048, 15.0, 30.0)


def test_json_round_trip(tmp_path):
    c = tiny_config(tie_word_embeddings=True, norm_type="layer_norm", output_logit_soft_cap=None)
    c.save_pretrained(tmp_path)
    back = SwaxHFConfig.from_pretrained(tmp_path)
    assert back.to_dict() == c.to_dict()


@pytest.mark.parametrize("kwargs,match", [
    (dict(layer_types=["mlstm", "global"]), "unknown layer type 'global'"),
    (dict(layer_types=["mlstm"], num_hidden_layers=2), "num_hidden_layers 2 != len"),
    (dict(num_attention_heads=4, num_key_value_heads=3), "not a multiple of num_key_value_heads"),
    (dict(sliding_window=0), "sliding_window must be a positive int"),
    (dict(head_dim=7), "head_dim must be even"),
    (dict(norm_type="batch_norm"), "norm_type must be one of"),
    (dict(mlstm_kernel="triton"), "mlstm_kernel must be 'auto' or 'plain'"),
    (dict(output_logit_soft_cap=0.0), "output_logit_soft_cap must be > 0 or None"),
    (dict(mlstm_fgate_bias_init=[1.0]), r"mlstm_fgate_bias_init must be \[lo, hi\]"),
])
def test_impossible_settings_are_refused_in_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match) as err:
        tiny_config(**kwargs)
    assert "\n" not in str(err.value)


def test_bad_forward_inputs_are_refused():
    model = tiny_model(torch.float32)
    ids = torch.randint(1, 101, (2, 6))
    with pytest.raises(ValueError, match="attention_mask must be a 2D padding mask"):
        model(ids, attention_mask=torch.ones(2, 1, 6, 6))
    with pytest.raises(ValueError, match="attention_mask must be a 2D padding mask"):
        model(ids, attention_mask=torch.ones(2, 5))
    with pytest.raises(TypeError, match="cache must be a SwaxCache"):
        from transformers import DynamicCache

        model(ids, cache=DynamicCache())
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
        model()
    with pytest.raises(NotImplementedError, match="cannot be rolled back"):
        SwaxCache(model.config).crop(-1)
