"""The plain-torch reference (models/reference.py) and the megatron SwaxModel agree at TP=1/PP=1
with the same weights: logits and per-token losses to 1e-5 in fp32, for every window, and the
parameter names map 1:1 (the reference loads the megatron state dict strictly)."""

import pytest
import torch

from dist import run_distributed
from swax_model_testing import SEQ, VOCAB, build, perturb_, tiny_config

VARIANTS = {
    # GQA, RMSNorm, untied; all three layer kinds.
    "xsg_gqa": dict(pattern="XSGX"),
    # LayerNorm (weight + bias), tied embeddings, qkv bias, MHA, one mLSTM head with qk width 64
    # (0.5 * hidden a multiple of 64, as the fused kernels' head dims want).
    "layernorm_tied": dict(pattern="SX", hidden_size=128, num_attention_heads=2, num_query_groups=2,
                           mlstm_num_heads=1, normalization="LayerNorm", add_qkv_bias=True,
                           share_embeddings_and_output_weights=True, ffn_hidden_size=192),
}


def _compare(rank):
    from swax_megatron.models.reference import (ReferenceConfig, SwaxReference, parameter_breakdown,
                                                reference_state_dict_from_megatron)

    out = {}
    tokens = torch.randint(0, VOCAB, (2, SEQ + 1), generator=torch.Generator().manual_seed(3))
    for name, kw in VARIANTS.items():
        kw = dict(kw)
        model = build(tiny_config(kw.pop("pattern"), **kw))
        perturb_(model)  # norms, gate biases ... away from their init values
        ref = SwaxReference(ReferenceConfig.from_swax_config(model.config))
        ref.load_state_dict(reference_state_dict_from_megatron(model.state_dict()), strict=True)
        n_meg = sum(p.numel() for p in model.parameters())
        n_ref = parameter_breakdown(ref)["total"]
        rows = []
        with torch.no_grad():
            for window in (2, 5, None, 64):
                model.set_swa_window(window)
                rows.append((window, model(tokens[:, :-1]), ref(tokens[:, :-1], window=window),
                             model(tokens[:, :-1], labels=tokens[:, 1:]),
                             ref(tokens[:, :-1], labels=tokens[:, 1:], window=window)))
        out[name] = (n_meg, n_ref, rows)
    return out


@pytest.fixture(scope="module")
def compared():
    (res,) = run_distributed(_compare, 1, tp=1)
    return res


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_reference_matches_megatron(compared, variant):
    n_meg, n_ref, rows = compared[variant]
    assert n_meg == n_ref
    for window, logits, ref_logits, loss, ref_loss in rows:
        assert logits.shape == ref_logits.shape == (2, SEQ, VOCAB)
        torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5, msg=f"window {window}")
        torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5, msg=f"window {window}")
    # the window matters in this test (else it could not catch a window bug): 2 vs default 5
    assert (rows[0][1] - rows[1][1]).abs().max() > 1e-3
