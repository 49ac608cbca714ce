"""What the train loop and the later HF export call: a model from a recipe, the forward contract,
and the mLSTM mixer's state passing (prefill in pieces equals one pass)."""

import dataclasses

import pytest
import torch

from dist import run_distributed
from swax_model_testing import SEQ, build, tiny_config


def _api(rank):
    from swax_megatron.config.schema import MLSTMConfig, ModelConfig, Recipe, SwaConfig
    from swax_megatron.models import swax_model_from_recipe

    res = {}
    recipe = Recipe()
    recipe = dataclasses.replace(recipe, model=ModelConfig(
        hidden_size=64, num_layers=2, num_attention_heads=4, layer_pattern="XS",
        swa=SwaConfig(window=4), mlstm=MLSTMConfig(num_heads=2)))
    model = swax_model_from_recipe(recipe, vocab_size=100)
    tokens = torch.randint(0, 100, (2, SEQ + 1))
    res["loss"] = model(tokens[:, :-1], labels=tokens[:, 1:])
    res["logits_shape"] = tuple(model(tokens[:, :-1]).shape)
    res["window"] = model.swa_window
    res["stage"] = (model.pre_process, model.post_process, model.decoder.layer_symbols)
    try:
        model(tokens[:, :-1], attention_mask=torch.ones(1, 1, SEQ, SEQ, dtype=torch.bool))
    except ValueError as e:
        res["mask_error"] = str(e)

    # bf16 parameters (the GPU default): the forward runs, the mLSTM state stays fp32
    bf16 = build(tiny_config("XSG", params_dtype=torch.bfloat16, bf16=True))
    with torch.no_grad():
        res["bf16"] = bf16(tokens[:, :-1], labels=tokens[:, 1:] % 128)
        mixer = bf16.decoder.layers[0].mixer
        h, _, state = mixer(torch.randn(SEQ, 2, 64, dtype=torch.bfloat16), return_state=True)
        res["bf16_mixer"] = (h.dtype, [s.dtype for s in state])

    # mLSTM state passing: [0, 8) then [8, S) from the carried (C, n, m) == one pass
    mixer = build(tiny_config("X")).decoder.layers[0].mixer
    x = torch.randn(SEQ, 2, 64)
    with torch.no_grad():
        full, _, state_full = mixer(x, return_state=True)
        first, _, state = mixer(x[:8], return_state=True)
        second, _, state2 = mixer(x[8:], initial_state=state, return_state=True)
    res["pieces"] = (full, torch.cat([first, second]), state_full, state2)
    return res


@pytest.fixture(scope="module")
def api():
    (res,) = run_distributed(_api, 1, tp=1)
    return res


def test_model_from_recipe(api):
    loss = api["loss"]
    assert loss.shape == (2, SEQ) and torch.isfinite(loss).all()
    assert api["logits_shape"] == (2, SEQ, 128)  # vocabulary 100 padded to 128
    assert api["window"] == 4
    assert api["stage"] == (True, True, "XS")


def test_attention_mask_is_rejected(api):
    assert "pass attention_mask=None" in api["mask_error"]


def test_mlstm_mixer_state_passing(api):
    full, pieces, state_full, state_pieces = api["pieces"]
    torch.testing.assert_close(pieces, full, atol=1e-5, rtol=1e-5)
    for a, b in zip(state_pieces, state_full):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_bf16_forward(api):
    loss = api["bf16"]
    assert loss.shape == (2, SEQ) and torch.isfinite(loss).all()
    h_dtype, state_dtypes = api["bf16_mixer"]
    assert h_dtype == torch.bfloat16 and state_dtypes == [torch.float32] * 3
