"""cpu_compat patches megatron only where CUDA is absent, and its patches are the ones it claims."""

import subprocess
import sys
import textwrap

import torch

from swax_megatron.parallel import cpu_compat


def test_noop_when_cuda_is_available():
    # A fresh interpreter that believes it has CUDA: apply() must leave torch and megatron alone.
    code = textwrap.dedent("""
        import torch
        torch.cuda.is_available = lambda: True
        sync, dev, cuda = torch.cuda.synchronize, torch.cuda.current_device, torch.Tensor.cuda
        from swax_megatron.parallel import cpu_compat
        import megatron.core.pipeline_parallel.schedules as sched
        assert cpu_compat.apply() is False
        assert torch.cuda.synchronize is sync and torch.cuda.current_device is dev
        assert torch.Tensor.cuda is cuda and sched.torch is torch
        print("untouched")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "untouched" in out.stdout


def test_cpu_patches_active():
    assert not torch.cuda.is_available()
    assert cpu_compat.apply() is True  # idempotent: conftest applied it already
    import megatron.core.pipeline_parallel.schedules as sched
    from megatron.core.transformer import utils as tutils

    assert sched.torch.zeros([], device="cuda").device.type == "cpu"
    assert tutils.get_sliding_window_causal_mask(4, 4, (1, 0)).device.type == "cpu"


def test_type_names_only_reported_as_cuda_inside_the_optimizer_build():
    t = torch.zeros(2)
    assert t.type() == "torch.FloatTensor"
    with cpu_compat._tensor_type_reports_cuda():
        assert t.type() == "torch.cuda.FloatTensor"
        assert t.type(torch.float64).dtype == torch.float64
    assert t.type() == "torch.FloatTensor"


def test_clip_grad_scales_only_above_max_norm():
    p = torch.nn.Parameter(torch.ones(4))
    p.grad = torch.full((4,), 2.0)
    cpu_compat._clip_grad_by_total_norm_cpu([p], max_norm=1.0, total_norm=4.0)
    torch.testing.assert_close(p.grad, torch.full((4,), 2.0 / (4.0 + 1e-6)))
    p.grad = torch.full((4,), 2.0)
    cpu_compat._clip_grad_by_total_norm_cpu([p], max_norm=10.0, total_norm=4.0)
    torch.testing.assert_close(p.grad, torch.full((4,), 2.0))
