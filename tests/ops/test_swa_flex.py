"""FlexAttention sliding-window path (ops/swa/flex.py): the band's BlockMask built from its geometry
equals torch's create_block_mask field by field; compiled flex attention with it (inductor's CPU
kernel, which skips blocks by that structure; FlexAttention's eager reference ignores it) equals
the masked reference; and a run that alternates windows and grad modes compiles once per grad
mode, because the window is a runtime value of the mask."""

import shutil

import pytest
import torch

from swax_megatron.ops.swa import flex as swa_flex
from swax_megatron.ops.swa import sliding_window_attention

pytestmark = pytest.mark.skipif(not swa_flex.HAVE_FLEX, reason="FlexAttention needs torch >= 2.5")

FIELDS = ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices",
          "q_num_blocks", "q_indices", "full_q_num_blocks", "full_q_indices")


def _windows(S, bs):
    # around the block size and the sequence length, where blocks turn full, partial or empty
    return sorted({1, 2, 3, max(1, bs - 1), bs, bs + 1, 2 * bs + 5, max(1, S - 1), S, S + 7}) + [None]


@pytest.mark.parametrize("S,bs", [(1, 16), (5, 1), (17, 4), (64, 16), (100, 16), (129, 128),
                                  (256, 32), (300, 128)])
def test_band_block_mask_equals_create_block_mask(S, bs):
    from torch.nn.attention.flex_attention import create_block_mask

    for window in _windows(S, bs):
        w = torch.tensor(S if window is None else min(window, S), dtype=torch.int32)
        ref = create_block_mask(swa_flex.band_mask_mod(w), None, None, S, S, device="cpu", BLOCK_SIZE=bs)
        new = swa_flex.band_block_mask(S, window, "cpu", bs)
        for name in FIELDS:
            a, b = getattr(new, name), getattr(ref, name)
            assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), (S, bs, window, name)
        assert (new.seq_lengths, new.BLOCK_SIZE) == (ref.seq_lengths, ref.BLOCK_SIZE)
        assert torch.equal(new.to_dense(), ref.to_dense())


def test_band_block_mask_rejects_bad_sizes():
    for args in ((0, 4), (16, 0), (16, 4, 0)):
        S, window, *bs = args
        with pytest.raises(ValueError, match="band_block_mask"):
            swa_flex.band_block_mask(S, window, "cpu", *bs)


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="inductor's CPU kernels need a C++ compiler")
def test_compiled_flex_with_band_mask_matches_reference():
    from torch.nn.attention.flex_attention import flex_attention

    torch._dynamo.reset()
    fn = torch.compile(flex_attention, dynamic=False)
    S, bs = 200, 32  # a ragged last block; one compile serves every window
    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, 4, S, 16, generator=g)
    k, v = (torch.randn(1, 2, S, 16, generator=g) for _ in range(2))
    for window in (1, 31, 32, 33, 70, 199, None):
        mask = swa_flex.band_block_mask(S, window, "cpu", bs)
        with torch.no_grad():
            out = fn(q, k, v, block_mask=mask, enable_gqa=True)
        ref = sliding_window_attention(q, k, v, window, impl="masked")
        torch.testing.assert_close(out, ref, atol=2e-6, rtol=1e-5, msg=f"window {window}")
    # the structure is what the kernel skips blocks by: without the full blocks, a wide band breaks
    mask = swa_flex.band_block_mask(S, 100, "cpu", bs)
    mask.full_kv_num_blocks.zero_()
    with torch.no_grad():
        broken = fn(q, k, v, block_mask=mask, enable_gqa=True)
    assert not torch.allclose(broken, sliding_window_attention(q, k, v, 100, impl="masked"), atol=1e-3)


def test_alternating_windows_and_grad_modes_compile_once_per_grad_mode():
    """The stochastic schedule's two windows, full causal (G layers), training and evaluation,
    called as the op calls its compiled kernel on CUDA: with the window a Python constant of
    mask_mod this compiled 6 graphs (torch's limit is 8, past which it silently runs an unfused
    fallback); with the window a tensor, one per grad mode."""
    from torch.nn.attention.flex_attention import flex_attention

    compiles = []

    def counting_backend(gm, example_inputs):
        compiles.append(gm)
        return gm.forward  # runs the captured graph eagerly: counts compiles, compiles nothing

    torch._dynamo.reset()
    swa_flex.block_mask.cache_clear()
    counted = torch.compile(flex_attention, backend=counting_backend, dynamic=False)
    g = torch.Generator().manual_seed(5)
    S = 256
    q, k, v = (torch.randn(1, 2, S, 16, generator=g) for _ in range(3))
    for _ in range(3):
        for window in (16, 64, None):
            for grad in (True, False):
                with torch.set_grad_enabled(grad):
                    out = counted(q, k, v, block_mask=swa_flex.block_mask(S, window, "cpu"), scale=None,
                                  enable_gqa=False)
                torch.testing.assert_close(out, sliding_window_attention(q, k, v, window, impl="masked"),
                                           atol=2e-6, rtol=1e-5)
    assert len(compiles) == 2
    torch._dynamo.reset()


def test_the_op_runs_the_compiled_kernel_on_cuda_only():
    assert swa_flex._flex_fn("cuda") is swa_flex._compiled()
    assert swa_flex._flex_fn("cpu") is swa_flex.flex_attention
