"""Process-group set-up from torchrun or SLURM variables, and megatron's parallel state.

Launchers and what they set:
    torchrun            RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT
    srun (one task/GPU) SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_NTASKS_PER_NODE;
                        MASTER_ADDR / MASTER_PORT come from slurm/pretrain.sh (or default to
                        127.0.0.1 and a port derived from the job id on one node)
    nothing             a world of one process
NCCL on GPUs, gloo on CPU.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
from dataclasses import dataclass
from typing import Dict, Optional

import torch

# A rank that dies mid-collective leaves its peers waiting: give up after this long.
TIMEOUT_MINUTES = float(os.environ.get("SWAX_DIST_TIMEOUT_MINUTES", "10"))


class LaunchError(ValueError):
    """The job's processes do not match the recipe (world size, devices)."""


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    launcher: str  # torchrun | slurm | single


def _slurm_tasks_per_node(env: Dict[str, str], world: int) -> int:
    # SLURM_NTASKS_PER_NODE looks like "2" or "2(x3)"; SLURM_TASKS_PER_NODE similar.
    for key in ("SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE"):
        text = env.get(key)
        if text:
            try:
                return int(text.split("(")[0].split(",")[0])
            except ValueError:
                pass
    return world


def detect(env: Optional[Dict[str, str]] = None) -> DistEnv:
    env = dict(os.environ) if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        world = int(env["WORLD_SIZE"])
        return DistEnv(int(env["RANK"]), world, int(env.get("LOCAL_RANK", 0)),
                       int(env.get("LOCAL_WORLD_SIZE", world)), "torchrun")
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        world = int(env["SLURM_NTASKS"])
        return DistEnv(int(env["SLURM_PROCID"]), world, int(env.get("SLURM_LOCALID", 0)),
                       _slurm_tasks_per_node(env, world), "slurm")
    return DistEnv(0, 1, 0, 1, "single")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_determinism(deterministic: bool) -> None:
    """Ask every backend for deterministic kernels (or allow the fast non-deterministic ones).
    Call before Transformer Engine is imported: TE reads its variable when choosing the attention
    backend. On CPU the torch kernels used here are deterministic for a fixed thread count."""
    os.environ["NVTE_ALLOW_NONDETERMINISTIC_ALGO"] = "0" if deterministic else "1"
    if deterministic and torch.cuda.is_available():
        # cuBLAS needs a fixed workspace split for reproducible GEMMs (torch's documented rule);
        # torch then picks its deterministic implementations (e.g. the embedding backward).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


def init_process_group(d: DistEnv) -> str:
    """Initialise torch.distributed for `d`; returns the device type ("cuda" or "cpu")."""
    on_gpu = torch.cuda.is_available()
    if d.launcher == "single":
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    elif d.launcher == "slurm":
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        job = int(os.environ.get("SLURM_JOB_ID", "0") or 0)
        os.environ.setdefault("MASTER_PORT", str(20000 + job % 20000))
    # Megatron and torch read these names, whatever the launcher.
    os.environ.update(RANK=str(d.rank), WORLD_SIZE=str(d.world_size),
                      LOCAL_RANK=str(d.local_rank))
    if on_gpu:
        if d.local_rank >= torch.cuda.device_count():
            raise LaunchError(f"local rank {d.local_rank} has no GPU: this node has "
                              f"{torch.cuda.device_count()}")
        torch.cuda.set_device(d.local_rank)
    else:
        # OMP_NUM_THREADS (torchrun sets 1), else one share of the cores per process. A fixed
        # count also keeps CPU reductions (and thus losses) bitwise reproducible across restarts.
        threads = os.environ.get("OMP_NUM_THREADS", "")
        torch.set_num_threads(int(threads) if threads.isdigit() and int(threads) > 0
                              else max(1, (os.cpu_count() or 1) // max(1, d.local_world_size)))
    torch.distributed.init_process_group(
        "nccl" if on_gpu else "gloo", rank=d.rank, world_size=d.world_size,
        timeout=datetime.timedelta(minutes=TIMEOUT_MINUTES))
    return "cuda" if on_gpu else "cpu"


def init_model_parallel(tp: int, pp: int, seed: int, ulysses: int = 1) -> None:
    """megatron's groups; the Ulysses degree is megatron's context-parallel size (models/ulysses.py)."""
    from megatron.core import parallel_state

    from ..parallel import cpu_compat

    world = torch.distributed.get_world_size()
    if world % (tp * pp * ulysses):
        raise LaunchError(f"world size {world} is not divisible by tensor x pipeline x ulysses "
                          f"size {tp} x {pp} x {ulysses}")
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp,
                                             pipeline_model_parallel_size=pp,
                                             context_parallel_size=ulysses)
    cpu_compat.model_parallel_seed(seed)
    if ulysses > 1:
        from ..models.ulysses import init_deepspeed_comm

        init_deepspeed_comm()


@contextlib.contextmanager
def single_process_world(seed: int):
    """A gloo world of one process with megatron's TP=1 / PP=1 groups, torn down on exit: for
    work on a checkpoint outside a training job (conversion, evaluation). LaunchError when a
    process group already exists in this process."""
    from ..parallel import cpu_compat

    cpu_compat.apply()
    if torch.distributed.is_initialized():
        raise LaunchError("a torch.distributed process group is already initialised in this "
                          "process; run this in a process of its own")
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}",
                                         rank=0, world_size=1)
    try:
        init_model_parallel(1, 1, seed)
        yield
    finally:
        teardown()


def teardown() -> None:
    from megatron.core import parallel_state

    try:
        parallel_state.destroy_model_parallel()
        release_stale_groups()
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def release_stale_groups() -> None:
    """Drop the process groups megatron-core 0.16.1's destroy_model_parallel leaves in
    parallel_state (_INTRA_PARTIAL_DATA_PARALLEL_GROUP_WITH_CP and its gloo twin) and collect them
    here. Left in place, a process forked later inherits them, and its own
    initialize_model_parallel, overwriting the global, runs their destructor, which waits forever
    for threads that exist only in the parent."""
    import gc

    from megatron.core import parallel_state

    for name, value in list(vars(parallel_state).items()):
        if isinstance(value, torch.distributed.ProcessGroup):
            setattr(parallel_state, name, None)
    gc.collect()
