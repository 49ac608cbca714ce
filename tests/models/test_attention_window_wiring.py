"""The step's window reaches the kernel of every attention backend the specs can select.

SwaxModel.set_swa_window must change the window that each S layer's kernel is called with, for the
local torch path, FlexAttention and Transformer Engine alike; G layers stay full causal. Transformer
Engine cannot be installed on these machines, so its test installs a stand-in `transformer_engine`
module (inside a forked rank, never in the test process) whose DotProductAttention records the
`window_size` it receives and computes the reference attention with it. That tests our wiring
(megatron's TEDotProductAttention constructor + TESwaxCoreAttention.forward + set_swa_window), not
TE: this file is the only place where a stand-in is acceptable.
"""

import sys
import types

import pytest
import torch

from dist import run_distributed
from swax_megatron.ops.swa import flex as swa_flex
from swax_megatron.ops.swa import sliding_window_attention
from swax_model_testing import SEQ, VOCAB, build, tiny_config

PATTERN = "XSG"  # an mLSTM, a sliding and a global layer: the window must reach S, not G
DEFAULT = 5  # tiny_config's swa.window
WINDOWS = (3, 2, None)  # None restores DEFAULT


def _tokens():
    return torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(11))


def _kernel_windows(model, backend):
    """Per S/G core attention, the window its kernel is called with (recorded by wrapping it)."""
    from swax_megatron.models.attention import SwaxCoreAttention

    seen = []
    for module in model.modules():
        if isinstance(module, SwaxCoreAttention):
            assert module.kernel is (swa_flex.flex_sliding_window_attention if backend == "flex"
                                     else sliding_window_attention)

            def recording(q, k, v, window, *, _kernel=module.kernel, _sliding=module.sliding, **kw):
                seen.append(("S" if _sliding else "G", window))
                return _kernel(q, k, v, window, **kw)

            module.kernel = recording
    return seen


def _local_backend_run(rank, backend):
    model = build(tiny_config(PATTERN, attention_backend=backend))
    seen = _kernel_windows(model, backend)
    out = {}
    for w in WINDOWS:
        model.set_swa_window(w)
        seen.clear()
        with torch.no_grad():
            logits = model(_tokens())
        out[w] = (list(seen), model.swa_window, logits)
    return out


@pytest.mark.parametrize("backend", ["torch", pytest.param("flex", marks=pytest.mark.skipif(
    not swa_flex.HAVE_FLEX, reason="FlexAttention needs torch >= 2.5"))])
def test_local_spec_kernels_get_the_step_window(backend):
    (out,) = run_distributed(_local_backend_run, 1, backend, tp=1)
    for w in WINDOWS:
        seen, current, _ = out[w]
        expect = DEFAULT if w is None else w
        assert current == expect
        assert sorted(seen, key=str) == [("G", None), ("S", expect)], (w, seen)
    assert not torch.equal(out[3][2], out[2][2])  # the window changes the output


# --- Transformer Engine, through a stand-in module -------------------------------------------------
class _Stub:
    """Any TE class that megatron's extension module subclasses or names at import time."""

    def __init__(self, *args, **kwargs):
        raise AssertionError("the TE stand-in implements DotProductAttention only")


def _install_te_stand_in():
    """Put a minimal `transformer_engine` into sys.modules and re-import the modules that bind it.
    Returns the list that the stand-in's DotProductAttention appends (layer_number, window_size) to."""
    calls = []

    class DotProductAttention(torch.nn.Module):
        # The keywords megatron's TEDotProductAttention passes; real TE's forward takes window_size
        # per call (TE >= 1.2), which TESwaxCoreAttention checks in the signature.
        def __init__(self, num_attention_heads, kv_channels, *, layer_number=None, softmax_scale=None,
                     attn_mask_type="causal", **unused):
            super().__init__()
            assert "window_size" not in unused, "the window must be passed per call, not fixed at build"
            self.layer_number, self.softmax_scale = layer_number, softmax_scale

        def forward(self, query_layer, key_layer, value_layer, attention_mask=None, qkv_format=None,
                    attn_mask_type=None, window_size=None, **unused):
            calls.append((self.layer_number, window_size))
            assert attention_mask is None and attn_mask_type == "causal"
            left, right = window_size
            assert right == 0
            window = None if left == -1 else left + 1  # TE's (left, right) -> tokens, query included
            # sbhd in, [s, b, h * d] out, as TE returns with qkv_format "sbhd"
            q, k, v = (t.permute(1, 2, 0, 3) for t in (query_layer, key_layer, value_layer))
            out = sliding_window_attention(q, k, v, window, self.softmax_scale, impl="masked")
            return out.permute(2, 0, 1, 3).reshape(query_layer.shape[0], query_layer.shape[1], -1)

    te = types.ModuleType("transformer_engine")
    te.__version__ = "2.6.0"  # >= 1.10 (window per call, softmax_scale); < 2.7 (no router import)
    pt = types.ModuleType("transformer_engine.pytorch")
    fp8 = types.ModuleType("transformer_engine.pytorch.fp8")
    pt.DotProductAttention = DotProductAttention
    for name in ("Linear", "LayerNormLinear", "GroupedLinear", "LayerNorm", "RMSNorm"):
        setattr(pt, name, _Stub)
    pt.distributed = types.SimpleNamespace(CudaRNGStatesTracker=_Stub)
    pt.ops = types.SimpleNamespace(Sequential=_Stub, FusibleOperation=_Stub)
    pt.fp8 = fp8
    fp8.FP8GlobalStateManager, fp8.fp8_autocast = _Stub, None
    te.pytorch = pt
    te.common = types.SimpleNamespace(recipe=types.SimpleNamespace(DelayedScaling=_Stub))
    sys.modules.update({"transformer_engine": te, "transformer_engine.pytorch": pt,
                        "transformer_engine.pytorch.fp8": fp8})
    # This forked rank imported them against the real (absent) TE; bind them to the stand-in.
    for name in ("megatron.core.extensions.transformer_engine", "swax_megatron.models.te_attention"):
        sys.modules.pop(name, None)
    return calls


def _core_classes(block_spec):
    sub = block_spec.submodules
    core = lambda layer: layer.submodules.mixer.submodules.core_attention  # noqa: E731
    return core(sub.sliding_attention_layer), core(sub.global_attention_layer)


def _te_run(rank):
    calls = _install_te_stand_in()
    from swax_megatron.models import SwaxModel, get_swax_block_spec
    from swax_megatron.models import attention
    from swax_megatron.models.te_attention import TEGlobalCoreAttention, TESlidingWindowCoreAttention

    assert attention.have_transformer_engine()
    te_classes = _core_classes(get_swax_block_spec("te"))
    res = {"te spec": [c.__name__ for c in te_classes],
           "windowed": [issubclass(c, getattr(attention, "WindowedAttention", ())) for c in te_classes]}
    # The TE core attention in the local spec: TE's norms and linears cannot run on the stand-in,
    # and the window wiring is the core attention's and the model's alone.
    model = SwaxModel(tiny_config(PATTERN, attention_backend="te"),
                      get_swax_block_spec("local", TESlidingWindowCoreAttention, TEGlobalCoreAttention))
    reference = build(tiny_config(PATTERN, attention_backend="torch"))
    numbers = {type(m).__name__: m.layer_number for m in model.modules()
               if isinstance(m, (TESlidingWindowCoreAttention, TEGlobalCoreAttention))}
    for w in WINDOWS:
        model.set_swa_window(w)
        reference.set_swa_window(w)
        calls.clear()
        with torch.no_grad():
            logits, ref = model(_tokens()), reference(_tokens())
        res[w] = (sorted(calls), model.swa_window, logits, ref)
    res["layers"] = numbers
    return res


def test_te_attention_gets_the_step_window():
    (res,) = run_distributed(_te_run, 1, tp=1)
    assert res["te spec"] == ["TESlidingWindowCoreAttention", "TEGlobalCoreAttention"]
    s_layer, g_layer = res["layers"]["TESlidingWindowCoreAttention"], res["layers"]["TEGlobalCoreAttention"]
    for w in WINDOWS:
        calls, current, logits, ref = res[w]
        expect = DEFAULT if w is None else w
        assert calls == sorted([(s_layer, (expect - 1, 0)), (g_layer, (-1, 0))]), (w, calls)
        assert current == expect
        # the stand-in computes the reference attention with what it received: the model through
        # the TE core attention equals the torch backend at the same window
        torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)
    assert res["windowed"] == [True, True]


def test_local_spec_core_attentions_implement_the_window_interface():
    from swax_megatron.models import get_swax_block_spec, get_swax_layer_spec
    from swax_megatron.models.attention import WindowedAttention

    sliding, glob = _core_classes(get_swax_block_spec("local"))
    assert issubclass(sliding, WindowedAttention) and sliding.sliding
    assert issubclass(glob, WindowedAttention) and not glob.sliding

    class NoWindow(torch.nn.Module):
        pass

    with pytest.raises(TypeError, match="must subclass .*WindowedAttention"):
        get_swax_layer_spec("S", "local", core_attention_cls=NoWindow)
