"""Make megatron-core 0.16.1 run on CPU processes with the gloo backend.

megatron-core assumes CUDA in about a dozen places (each patch below names the upstream code it
covers). This module patches exactly those, and only when CUDA is absent: on a GPU machine `apply()` returns
without touching anything. Call it once per process before building models; forked children
inherit the patches.

Rule that no patch can fix: on CPU always set `batch_p2p_comm=False`. With PP=2 the previous and
next stage are the same peer and gloo matches batched sends by posting order, so activations and
gradients are silently swapped (upstream Megatron-LM issue #750).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import types

import torch

_APPLIED = False

# Modules that write a literal device="cuda" / 'cuda'; each gets a `torch` proxy (patch 4).
_CUDA_LITERAL_MODULES = (
    "megatron.core.pipeline_parallel.schedules",  # schedules.py:596/983/2138 total_num_tokens
    "megatron.core.transformer.utils",  # utils.py:35/40 causal and sliding-window masks
    "megatron.core.utils",  # utils.py:1207 local_multi_tensor_l2_norm
    "megatron.core.optimizer.optimizer",  # optimizer.py:473-485/907 found_inf, _scale
    "megatron.core.optimizer.clip_grads",  # clip_grads.py:90/103/115/207 norm buffers
    "megatron.core.optimizer.grad_scaler",  # grad_scaler.py:15/88-94 scale tensors
    "megatron.core.optimizer.distrib_optimizer",
    "megatron.core.distributed.param_and_grad_buffer",  # param_and_grad_buffer.py:768 warmup
    "megatron.core.dist_checkpointing.exchange_utils",  # exchange_utils.py:98-110/326 buffers
    "megatron.core.models.common.embeddings.rope_utils",  # rope_utils.py:62 pinned cp index (Ulysses)
)


def _to_cpu_device(device):
    if device is None:
        return None
    if isinstance(device, int) or str(device).startswith("cuda"):
        return torch.device("cpu")
    return device


def _cpu_device_factory(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if "device" in kwargs:
            kwargs["device"] = _to_cpu_device(kwargs["device"])
        kwargs.pop("pin_memory", None)
        return fn(*args, **kwargs)

    return wrapper


class _CpuTorchProxy(types.ModuleType):
    """Stands in for `torch` inside one megatron module: tensor factories map cuda -> cpu."""

    _FACTORIES = ("zeros", "ones", "empty", "full", "tensor", "arange", "rand", "randn",
                  "zeros_like", "ones_like", "empty_like", "full_like")

    def __init__(self):
        super().__init__("torch")
        for name in self._FACTORIES:
            setattr(self, name, _cpu_device_factory(getattr(torch, name)))

    def __getattr__(self, name):
        return getattr(torch, name)


def _clip_grad_by_total_norm_cpu(parameters, max_norm, total_norm, use_decoupled_grad=False):
    # Replaces clip_grads.py:167, whose `assert grad.type() == 'torch.cuda.FloatTensor'` fails on CPU.
    attr = "decoupled_grad" if use_decoupled_grad else "grad"
    grads = [getattr(p, attr).detach() for p in parameters if getattr(p, attr, None) is not None]
    clip_coeff = max_norm / (total_norm + 1.0e-6)
    if clip_coeff < 1.0 and grads:
        torch._foreach_mul_(grads, clip_coeff)


_CPU_TYPE_NAMES = {
    "torch.FloatTensor": "torch.cuda.FloatTensor",
    "torch.HalfTensor": "torch.cuda.HalfTensor",
    "torch.BFloat16Tensor": "torch.cuda.BFloat16Tensor",
}


@contextlib.contextmanager
def _tensor_type_reports_cuda():
    """While active, `t.type()` (no argument) on a CPU float tensor answers the cuda name."""
    original = torch.Tensor.type

    def type_(self, dtype=None, non_blocking=False, **kwargs):
        if dtype is None and not kwargs:
            name = original(self)
            return _CPU_TYPE_NAMES.get(name, name)
        return original(self, dtype, non_blocking, **kwargs)

    torch.Tensor.type = type_
    try:
        yield
    finally:
        torch.Tensor.type = original


def _with_cuda_type_names(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _tensor_type_reports_cuda():
            return fn(*args, **kwargs)

    return wrapper


def apply() -> bool:
    """Patch megatron-core for CPU. Returns True if patches are active (False on CUDA machines)."""
    global _APPLIED
    if torch.cuda.is_available():
        return False
    if _APPLIED:
        return True

    # (1) ~175 call sites allocate with device=torch.cuda.current_device() (GlobalMemoryBuffer,
    #     TP gathers, p2p recv buffers, DDP buffers).
    torch.cuda.current_device = lambda: torch.device("cpu")
    # (2) p2p_communication.py:242/398, filesystem_async.py:230, fully_parallel.py:272/281.
    torch.cuda.synchronize = lambda *a, **k: None
    # (3) language_module.py:244 `weight.data.cuda()` for tied embeddings across PP stages.
    torch.Tensor.cuda = lambda self, *a, **k: self
    # (4) literal device="cuda" in the modules listed above.
    proxy = _CpuTorchProxy()
    for name in _CUDA_LITERAL_MODULES:
        importlib.import_module(name).torch = proxy
    # (5) clip_grads.py:167 type assert; optimizer.py imports the function by name.
    from megatron.core.optimizer import clip_grads, optimizer

    clip_grads.clip_grad_by_total_norm_fp32 = _clip_grad_by_total_norm_cpu
    optimizer.clip_grad_by_total_norm_fp32 = _clip_grad_by_total_norm_cpu
    # (6) distrib_optimizer.py:361/420 classify params by `type()` string ('torch.cuda.FloatTensor').
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    build = DistributedOptimizer.__dict__["_build_model_and_main_param_groups"].__func__
    DistributedOptimizer._build_model_and_main_param_groups = classmethod(
        _with_cuda_type_names(build)
    )
    # (7) random.py:444-460 activation recomputation (tensor_parallel.checkpoint) saves and
    #     restores the CUDA generator's state; there is none on CPU (the CPU generator and the
    #     tracker's states, which it also saves, are the ones CPU code draws from).
    from megatron.core.tensor_parallel import random as mp_random

    mp_random._get_cuda_rng_state = lambda *a, **k: None
    mp_random._set_cuda_rng_state = lambda *a, **k: None
    _APPLIED = True
    return True


# --- RNG -------------------------------------------------------------------------------------

def _cpu_rng_tracker_class():
    from megatron.core.tensor_parallel import random as mp_random

    class CPURNGStatesTracker(mp_random.CudaRNGStatesTracker):
        """megatron's RNG tracker with CPU generator states (random.py:235 needs CUDA)."""

        def add(self, name, seed):
            self._is_initialized = True
            if seed in self.seeds_:
                raise Exception(f"seed {seed} already exists")
            if name in self.states_:
                raise Exception(f"rng state {name} already exists")
            self.seeds_.add(seed)
            self.states_[name] = torch.Generator().manual_seed(seed).get_state()

        @contextlib.contextmanager
        def fork(self, name="model-parallel-rng"):
            if name not in self.states_:
                raise Exception(f"rng state {name} is not added")
            orig = torch.get_rng_state()
            torch.set_rng_state(self.states_[name])
            try:
                yield
            finally:
                self.states_[name] = torch.get_rng_state()
                torch.set_rng_state(orig)

    return CPURNGStatesTracker


def model_parallel_seed(seed: int) -> None:
    """Seed torch and megatron's tracked RNG streams (same seeds and offsets as megatron).

    On CUDA this is `model_parallel_cuda_manual_seed`; on CPU a CPU tracker replaces it, since
    megatron's needs `torch.cuda.get_rng_state()` (random.py:235).
    """
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import random as mp_random

    torch.manual_seed(seed)
    if torch.cuda.is_available():
        mp_random.model_parallel_cuda_manual_seed(seed)
        return
    tracker = _cpu_rng_tracker_class()()
    tracker.add(mp_random._DATA_PARALLEL_RNG_TRACKER_NAME, seed)
    tracker.add(mp_random._MODEL_PARALLEL_RNG_TRACKER_NAME,
                seed + 2718 + parallel_state.get_tensor_model_parallel_rank())
    tracker.add(mp_random._EXPERT_PARALLEL_RNG_TRACKER_NAME,
                seed + 1024 + 100 * parallel_state.get_expert_model_parallel_rank()
                + parallel_state.get_expert_tensor_parallel_rank())
    mp_random._CUDA_RNG_STATE_TRACKER = tracker
    mp_random._CUDA_RNG_STATE_TRACKER_INITIALIZED = True
