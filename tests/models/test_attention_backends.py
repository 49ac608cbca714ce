"""GPU attention backends behind the core-attention interface: backend resolution, FlexAttention
against the torch path (forward on CPU, where FlexAttention has no backward), the model with the
flex backend, and the Transformer Engine spec (constructed when TE is installed)."""

import pytest
import torch

from dist import run_distributed
from swax_megatron.models.attention import resolve_attention_backend, have_transformer_engine
from swax_megatron.ops.swa import flex as swa_flex
from swax_megatron.ops.swa import sliding_window_attention
from swax_model_testing import SEQ, VOCAB, build, tiny_config

needs_flex = pytest.mark.skipif(not swa_flex.HAVE_FLEX, reason="FlexAttention needs torch >= 2.5")


def test_auto_picks_te_then_flex_on_cuda_and_torch_on_cpu():
    assert resolve_attention_backend("auto", cuda=False, te=True) == "torch"
    assert resolve_attention_backend("auto", cuda=True, te=True) == "te"
    expected = "flex" if swa_flex.HAVE_FLEX else "torch"
    assert resolve_attention_backend("auto", cuda=True, te=False) == expected
    assert resolve_attention_backend("torch", cuda=True, te=True) == "torch"
    with pytest.raises(ImportError, match="needs Transformer Engine"):
        resolve_attention_backend("te", cuda=True, te=False)
    with pytest.raises(ValueError, match="unknown attention backend 'sdpa'"):
        resolve_attention_backend("sdpa")


@needs_flex
@pytest.mark.parametrize("S,window,hkv", [(100, 1, 4), (100, 3, 2), (256, 16, 2), (257, 128, 1),
                                          (64, None, 4), (64, 500, 2)])
def test_flex_matches_torch_path(S, window, hkv):
    g = torch.Generator().manual_seed(S * 7 + (window or 0))
    q = torch.randn(2, 4, S, 32, generator=g)
    k = torch.randn(2, hkv, S, 32, generator=g)
    v = torch.randn(2, hkv, S, 32, generator=g)
    with torch.no_grad():
        ref = sliding_window_attention(q, k, v, window, impl="masked")
        out = swa_flex.flex_sliding_window_attention(q, k, v, window, softmax_scale=None)
    torch.testing.assert_close(out, ref, atol=2e-6, rtol=1e-5)


@needs_flex
def test_flex_block_masks_are_cached_per_length_and_window():
    swa_flex.block_mask.cache_clear()
    a = swa_flex.block_mask(128, 16, "cpu")
    assert swa_flex.block_mask(128, 16, "cpu") is a
    assert swa_flex.block_mask(128, 32, "cpu") is not a
    assert swa_flex.block_mask.cache_info().misses == 2


@needs_flex
def test_flex_refuses_backward_on_cpu_with_a_clear_message():
    q = torch.randn(1, 2, 16, 8, requires_grad=True)
    with pytest.raises(NotImplementedError, match="no backward on CPU"):
        swa_flex.flex_sliding_window_attention(q, q, q, 4)


def _flex_vs_torch_model(rank):
    tokens = torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(5))
    out = {}
    for backend in ("torch", "flex"):
        model = build(tiny_config("XS*2", attention_backend=backend))
        model.set_swa_window(3)
        with torch.no_grad():
            out[backend] = model(tokens)
    return out


@needs_flex
def test_model_with_flex_backend_matches_torch_backend():
    (out,) = run_distributed(_flex_vs_torch_model, 1, tp=1)
    torch.testing.assert_close(out["flex"], out["torch"], atol=1e-5, rtol=1e-5)


def _build_te(rank):
    from swax_megatron.models import SwaxModel, get_swax_block_spec

    model = SwaxModel(tiny_config("XS", attention_backend="te"), get_swax_block_spec("te"))
    return sorted({type(m).__name__ for m in model.modules()})


@pytest.mark.skipif(not have_transformer_engine(), reason="Transformer Engine is not installed")
def test_te_spec_builds_with_te_attention():
    (names,) = run_distributed(_build_te, 1, tp=1)
    assert "TESlidingWindowCoreAttention" in names and "TENorm" in names


def _te_on_local_spec(rank):
    build(tiny_config("XS", attention_backend="te"))


def test_te_backend_without_te_fails_clearly():
    if have_transformer_engine():
        pytest.skip("Transformer Engine is installed here")
    from swax_megatron.models import get_swax_block_spec

    with pytest.raises(ImportError, match="needs the transformer_engine package"):
        get_swax_block_spec("te")
    from dist import DistributedTestError

    with pytest.raises(DistributedTestError, match="needs Transformer Engine"):
        run_distributed(_te_on_local_spec, 1, tp=1)


def test_fp8_without_te_is_a_config_error():
    if have_transformer_engine():
        pytest.skip("Transformer Engine is installed here")
    from swax_megatron.models.config import SwaxConfigError

    with pytest.raises(SwaxConfigError, match="fp8='hybrid' needs Transformer Engine"):
        tiny_config("XS", fp8="hybrid")
