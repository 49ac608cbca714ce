"""Analytic FLOPs: the window term against a brute-force count, the matmul terms against the
real model's weight shapes, MFU arithmetic."""

import pytest

from dist import run_distributed
from swax_megatron.training.flops import (ModelDims, attention_flops, forward_flops_per_token,
                                          mean_keys, mfu, mlstm_flops, peak_flops,
                                          train_flops_per_token)


@pytest.mark.parametrize("seq", [1, 7, 64])
@pytest.mark.parametrize("window", [1, 3, 16, 64, 100, None])
def test_mean_keys_matches_a_brute_force_count(seq, window):
    w = seq if window is None else window
    count = sum(min(i + 1, w) for i in range(seq))
    assert mean_keys(seq, window) == pytest.approx(count / seq, rel=1e-12)


def _dims(**kw):
    base = dict(hidden=128, ffn=384, vocab=2048, symbols="XSXS", heads=4, groups=2, head_dim=32,
                mlstm_heads=2, dqk=32, dv=64, chunk=64)
    base.update(kw)
    return ModelDims(**base)


def test_attention_cost_follows_the_window():
    d = _dims()
    costs = [attention_flops(d, 512, w) for w in (32, 128, 512, None)]
    assert costs[0] < costs[1] < costs[2] == costs[3]
    # Only the core term depends on the window: 4 * H * d * keys per token.
    assert costs[1] - costs[0] == pytest.approx(4 * 4 * 32 * (mean_keys(512, 128)
                                                               - mean_keys(512, 32)))


def test_model_total_and_training_factor():
    d = _dims()
    parts = forward_flops_per_token(d, 512, 32)
    assert parts["S"] == 2 * attention_flops(d, 512, 32)
    assert parts["X"] == 2 * mlstm_flops(d, 512)
    assert parts["G"] == 0
    assert parts["mlp"] == 4 * 6 * 128 * 384
    assert train_flops_per_token(d, 512, 32) == 3 * sum(parts.values())
    g = _dims(symbols="GG")
    assert forward_flops_per_token(g, 512, 32)["G"] == 2 * attention_flops(g, 512, None)


def _matmul_params(rank):
    # Weight matrices of one real SwaxModel (embedding excluded: a lookup), against the
    # projection / MLP / output terms of the formula at zero core-attention and mLSTM-cell cost.
    from swax_megatron.config.resolve import resolve
    from swax_megatron.models.model import swax_model_from_recipe

    recipe = resolve("recipes/tiny/swax.yaml", ["model.tie_embeddings=false"]).recipe
    model = swax_model_from_recipe(recipe, vocab_size=2000)
    n = sum(p.numel() for name, p in model.named_parameters()
            if p.dim() == 2 and "embedding" not in name)
    return n, ModelDims.from_config(model.config)


def test_matmul_terms_equal_two_flops_per_weight_of_the_real_model():
    n, d = run_distributed(_matmul_params, 1, tp=1)[0]
    seq = 1  # one key per query; mLSTM chunk = 1
    parts = forward_flops_per_token(d, seq, 1)
    attn_core = 4 * d.heads * d.head_dim * 1.0
    cell = d.mlstm_heads * (2 * d.dqk + 2 * d.dv + 4 * d.dqk * d.dv)
    n_s, n_x = d.symbols.count("S"), d.symbols.count("X")
    assert sum(parts.values()) - n_s * attn_core - n_x * cell == pytest.approx(2 * n, rel=1e-12)


def test_peak_flops_and_mfu():
    assert peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert peak_flops("NVIDIA H100 PCIe", "bf16") == 756e12
    assert peak_flops("NVIDIA A100-SXM4-80GB", "fp32") == 19.5e12
    assert peak_flops("cpu", "fp32") is None and peak_flops(None, "bf16") is None
    assert mfu(1e6, 1e9, 8, "NVIDIA H100 80GB HBM3", "bf16") == pytest.approx(1e15 / (8 * 989e12))
    assert mfu(1e6, 1e9, 2, None, "fp32") is None
