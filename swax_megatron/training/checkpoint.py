"""Checkpoints through megatron.core.dist_checkpointing, with an atomic `latest` pointer.

Layout of a checkpoint root (`checkpoint.dir`, default <run dir>/checkpoints):

    iter_0000100/      one dist_checkpointing checkpoint (common.pt, metadata.json, *.distcp)
                       and manifest.json (size and CRC-32s of every file)
    iter_0000200/
    latest             "iter_0000200": written by rank 0, through a rename, only after every
                       rank has finished writing iter_0000200 and the manifest is written; so
                       a kill at any moment leaves `latest` at a complete checkpoint

A checkpoint is complete when its manifest exists (a directory without one is a save that was
killed, or an asynchronous save still in flight).

Saves go through megatron's asynchronous machinery in both modes: `dist_checkpointing.save(...,
async_sharded_save=True)` returns an AsyncRequest whose finalize steps (torch's .metadata,
megatron's metadata.json, then ours: manifest, `latest`, pruning) run on every rank once every
rank's shards are written. `checkpoint.async_save=false` runs it at once (execute_sync);
`true` hands it to an AsyncCallsQueue and training goes on: on CPU/gloo the writer is megatron's
TemporalAsyncCaller, a process *forked* from the trainer per save (a copy-on-write snapshot of the
state, so later steps cannot change what it writes). megatron's PersistentAsyncCaller does not
run on CPU (its spawned worker calls torch.cuda.set_device(rank % device_count()): division by
zero) and would pay a fresh interpreter with megatron imported (~8 s) per job. The writer's
results reach the finalize step through a file in the checkpoint directory instead of megatron's
queue (see _ResultsFile), and each writer checksums the files it wrote for the manifest. One
save is in flight at a time; `latest` still moves only after every rank finished and the
manifest is written. `checkpoint.fully_parallel` wraps the torch_dist strategies in megatron's
FullyParallelSave/LoadStrategyWrapper over the data-parallel group:
replicated tensors are written and read once, by one rank each, instead of all by DP rank 0. Before a checkpoint is loaded, its files are checked against the manifest (the ranks
share the reading), so bit rot or a truncated shard is refused with one line that names the
newest intact checkpoint, never loaded into NaN steps.

What a checkpoint holds: the model (sharded, reshards over TP/PP), the optimizer (the
distributed optimizer in the `fully_reshardable` format), every rank's RNG states, the train
state (step, consumed samples, skipped steps), the window and LR schedules, the resolved recipe
the config hash, the resolved recipe and the parallel layout.

The distributed optimizer on the torch-AdamW path (no TE / Apex) of megatron-core 0.16.1 needs
four fixes to load, all applied here:
  1. AdamW state is created (a dummy step) before `sharded_state_dict(is_loading=True)`, whose
     `state_dict()` asserts one common `step` over a non-empty state;
  2. `_set_main_param_and_optimizer_states` copies the keys the checkpoint has and keeps the
     current `step` (upstream raises KeyError: 'step');
  3. `load_state_dict` runs under no_grad (fp32 main params are views of leaf params);
  4. after loading, every param's `step` is its own tensor: upstream assigns one shared tensor,
     which foreach-AdamW then increments once per parameter, breaking bias correction.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import re
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..files import atomic_write

LATEST = "latest"
MANIFEST = "manifest.json"
FORMAT_VERSION = 2  # 2: manifest, config hash and recipe in every checkpoint
_ITER_RE = re.compile(r"^iter_(\d{7,})$")
# How the distributed optimizer's state is laid out on disk: gathered into model-parameter shapes,
# so it reloads at any DP / TP / PP layout (dp_reshardable fails on a TP change and restores an
# off-by-one `step`; fully_sharded_model_space is unsupported by the torch_dist backend here).
OPTIMIZER_METADATA = {"distrib_optim_sharding_type": "fully_reshardable",
                      "chained_optim_avoid_prefix": True}


class CheckpointError(ValueError):
    """A missing, incomplete or incompatible checkpoint (one line, naming the path)."""


def _load_errors() -> tuple:
    # torch.distributed.checkpoint's CheckpointException (a truncated or missing .distcp or
    # .metadata file) derives from BaseException, so `except Exception` would let it through.
    from torch.distributed.checkpoint.api import CheckpointException

    return (Exception, CheckpointException)


_LOAD_ERRORS = _load_errors()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


@dataclass
class TrainState:
    step: int = 0  # optimizer steps taken (skipped NaN steps included)
    consumed_samples: int = 0  # training samples read so far (the data position)
    skipped_steps: int = 0  # NaN/Inf steps skipped so far
    consecutive_nonfinite: int = 0  # NaN/Inf steps in a row at the end of the run so far


def iter_name(step: int) -> str:
    return f"iter_{step:07d}"


def step_of(path: str | os.PathLike) -> Optional[int]:
    m = _ITER_RE.match(Path(path).name)
    return int(m.group(1)) if m else None


def read_latest(root: str | os.PathLike) -> Optional[Path]:
    """The checkpoint `root/latest` points to, or None when the root has no checkpoint at all.

    A root with complete checkpoints but no `latest` file (deleted, or made a directory) is an
    error, never a fresh start: starting over would write over that work."""
    root = Path(root)
    pointer = root / LATEST
    if not pointer.exists() and not pointer.is_symlink():
        complete = [p.name for p in list_checkpoints(root) if (p / MANIFEST).is_file()]
        if complete:
            raise CheckpointError(
                f"{root}: has checkpoints ({', '.join(complete)}) but no `{LATEST}` file: write "
                f"the one to resume from into it (echo {complete[-1]} > {pointer}), or move "
                f"{root} away to start this run over")
        return None
    if not pointer.is_file():
        raise CheckpointError(f"{pointer}: not a file; it must hold the name of the checkpoint "
                              f"to resume from (e.g. iter_0000100)")
    name = pointer.read_text().strip()
    if step_of(name) is None:
        raise CheckpointError(f"{pointer}: not a checkpoint pointer (expected 'iter_NNNNNNN', "
                              f"got {name[:40]!r})")
    path = root / name
    check_complete(path, what=f"{pointer} points to")
    return path


def check_complete(path: Path, what: str = "checkpoint") -> None:
    if not path.is_dir():
        raise CheckpointError(f"{path}: {what} a checkpoint directory that does not exist")
    missing = [f for f in ("metadata.json", "common.pt", MANIFEST) if not (path / f).is_file()]
    if missing:
        raise CheckpointError(f"{path}: incomplete checkpoint (missing {', '.join(missing)})")


def resolve_load_path(path: str | os.PathLike) -> Path:
    """`checkpoint.load`: a checkpoint root (with `latest`) or one iter_* directory."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: checkpoint.load does not exist")
    if (p / LATEST).exists():
        return read_latest(p)
    if (p / "metadata.json").is_file():
        check_complete(p)
        return p
    raise CheckpointError(f"{p}: checkpoint.load is neither a checkpoint root with a `latest` "
                          f"file nor a checkpoint directory (no metadata.json)")


# --- manifest -------------------------------------------------------------------------------------

# The manifest guards against damage (bit rot, truncation, a lost file), not against someone
# rewriting a checkpoint together with its manifest: a CRC-32 per 16 MiB piece catches every
# error burst up to 32 bits and random damage with probability 1 - 2**-32 per piece, names the
# damaged byte range, and costs a third of a sha256 (zlib, measured: bench/checkpoint_cpu.py).
_PIECE = 16 << 20


def _checksum_threads() -> int:
    # zlib releases the GIL, so threads checksum pieces on several cores; a rank's share of the
    # node's cores is its fair part (the ranks of a node checksum their own files at once).
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, min(8, (cores or 1) // max(1, local)))


def file_digest(path: Path) -> Dict[str, Any]:
    """Size and the CRC-32 of each 16 MiB piece of one file (pieces checksummed in parallel)."""
    from concurrent.futures import ThreadPoolExecutor

    size = path.stat().st_size

    def piece(offset: int) -> int:
        with open(path, "rb") as f:
            f.seek(offset)
            return zlib.crc32(f.read(_PIECE))

    offsets = range(0, max(size, 1), _PIECE)
    if len(offsets) == 1:
        crcs = [piece(0)]
    else:
        with ThreadPoolExecutor(_checksum_threads()) as pool:
            crcs = list(pool.map(piece, offsets))
    return {"size": size, "crc32": crcs}


def _digest_problem(name: str, got: Dict[str, Any], want: Dict[str, Any]) -> Optional[str]:
    if got["size"] != want.get("size"):
        return f"{name} has {got['size']} bytes, the manifest says {want.get('size')}"
    bad = [i for i, (a, b) in enumerate(zip(got["crc32"], want.get("crc32") or [])) if a != b]
    if bad or len(got["crc32"]) != len(want.get("crc32") or []):
        start = (bad[0] if bad else 0) * _PIECE
        return (f"{name} does not match the manifest (CRC-32 of bytes {start}.."
                f"{min(start + _PIECE, got['size'])})")
    return None


def _my_share(names: List[str]) -> List[str]:
    """The files this rank checksums: every world-th of them, so the ranks share the reading."""
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    return sorted(names)[rank::world]


_DIGESTS = ".digests."  # the shard writers' checksums, one file per rank; consumed below


def write_manifest(path: Path) -> None:
    """Checksum every file of a finished save (collective) and write manifest.json (rank 0).

    The shard files come checksummed by the process that wrote them (_shard_writer: right after
    writing, while the data is in the page cache, and in the background for an asynchronous
    save); the rest (common.pt, metadata, a shard whose size changed since) are read here, the
    ranks sharing the reading."""
    known: Dict[str, Any] = {}
    for f in sorted(path.glob(_DIGESTS + "*")):
        try:
            known.update(json.loads(f.read_text()))
        except (OSError, ValueError):
            pass  # those files are checksummed below instead
    names = sorted(p.name for p in path.iterdir() if p.is_file() and p.name != MANIFEST
                   and not p.name.startswith(_DIGESTS))
    todo = [n for n in names if (known.get(n) or {}).get("size") != (path / n).stat().st_size]
    mine = {name: file_digest(path / name) for name in _my_share(todo)}
    gathered: List[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, mine)  # also: every rank has read `known`
    if torch.distributed.get_rank() == 0:
        files = {n: known[n] for n in names if n not in todo}
        files.update({k: v for part in gathered for k, v in part.items()})
        for f in path.glob(_DIGESTS + "*"):
            f.unlink()
        atomic_write(path / MANIFEST, json.dumps(
            {"checksum": f"crc32 per {_PIECE} bytes", "files": dict(sorted(files.items()))})
            + "\n")


def manifest_problem(path: Path) -> Optional[str]:
    """Why `path` does not match its manifest (collective: the ranks share the reading), or
    None when every file has the recorded size and checksums."""
    problem = None
    try:
        files = json.loads((path / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        files, problem = {}, f"unreadable {MANIFEST} ({type(e).__name__})"
    mine = []
    for name in _my_share(list(files)):
        f = path / name
        if not f.is_file():
            mine.append(f"{name} is missing")
        elif f.stat().st_size != files[name].get("size"):
            mine.append(f"{name} has {f.stat().st_size} bytes, the manifest says "
                        f"{files[name].get('size')}")
        else:
            problem_here = _digest_problem(name, file_digest(f), files[name])
            if problem_here:
                mine.append(problem_here)
    gathered: List[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, mine)
    found = sorted(p for part in gathered for p in part)
    if problem is None and found:
        problem = found[0] + (f" (and {len(found) - 1} more)" if len(found) > 1 else "")
    return problem


def verify(path: Path) -> None:
    """Refuse a damaged checkpoint with one line that names the newest intact one (collective)."""
    problem = manifest_problem(path)
    if problem is None:
        return
    intact = None
    for older in reversed([p for p in list_checkpoints(path.parent)
                           if step_of(p) < step_of(path) and (p / MANIFEST).is_file()]):
        if manifest_problem(older) is None:
            intact = older
            break
    hint = (f"the newest intact checkpoint is {intact.name}: to resume from it, echo "
            f"{intact.name} > {path.parent / LATEST}" if intact is not None
            else "no earlier intact checkpoint")
    raise CheckpointError(f"{path}: damaged checkpoint: {problem}; {hint}")


def list_checkpoints(root: str | os.PathLike) -> List[Path]:
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(step_of(p), p) for p in root.iterdir() if p.is_dir() and step_of(p) is not None]
    return [p for _, p in sorted(found)]


# --- RNG ------------------------------------------------------------------------------------------

def rng_state() -> Dict[str, Any]:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    return {"random": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
            "tracker": get_cuda_rng_tracker().get_states()}


def set_rng_state(state: Dict[str, Any]) -> None:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    get_cuda_rng_tracker().set_states(state["tracker"])


def _layout() -> Dict[str, int]:
    from megatron.core import parallel_state as ps

    return {"tp": ps.get_tensor_model_parallel_world_size(),
            "pp": ps.get_pipeline_model_parallel_world_size(),
            # Data x context (Ulysses) ranks: each holds its own RNG state.
            "dp": ps.get_data_parallel_world_size(with_context_parallel=True),
            "world": torch.distributed.get_world_size()}


def _rng_sharded_object(state):
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    lay = _layout()
    return ShardedObject("rng_state", state, (lay["pp"], lay["tp"], lay["dp"]),
                         (ps.get_pipeline_model_parallel_rank(),
                          ps.get_tensor_model_parallel_rank(),
                          ps.get_data_parallel_rank(with_context_parallel=True)),
                         replica_id=0)


# --- optimizer fixes ------------------------------------------------------------------------------

def _distributed_optimizers(optimizer) -> list:
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    inner = getattr(optimizer, "chained_optimizers", [optimizer])
    return [o for o in inner if isinstance(o, DistributedOptimizer)]


def _set_main_param_keep_step(self, model_param, tensors):
    # Fix 2: copy what the checkpoint provides; `step` is restored from the param groups.
    group_index, group_order = self.model_param_group_index_map[model_param]
    main_param = self.optimizer.param_groups[group_index]["params"][group_order]
    dst = {"param": main_param, **self.optimizer.state[main_param]}
    missing = sorted(k for k in dst if k not in tensors and k != "step")
    if missing:
        raise CheckpointError(f"optimizer state in the checkpoint lacks {missing}")
    for key, value in tensors.items():
        dst[key].copy_(value)


@contextlib.contextmanager
def _keep_step_on_load(dist_optimizers):
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    patch = dist_optimizers and not any(
        o.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8 for o in dist_optimizers)
    original = DistributedOptimizer._set_main_param_and_optimizer_states
    if patch:
        DistributedOptimizer._set_main_param_and_optimizer_states = _set_main_param_keep_step
    try:
        yield
    finally:
        DistributedOptimizer._set_main_param_and_optimizer_states = original


def _unshare_step_tensors(optimizer) -> None:
    # Fix 4: one `step` tensor per parameter (see module docstring).
    inner = getattr(optimizer, "chained_optimizers", [optimizer])
    for opt in inner:
        torch_opt = getattr(opt, "optimizer", None)
        if torch_opt is None:
            continue
        for state in torch_opt.state.values():
            if isinstance(state.get("step"), torch.Tensor):
                state["step"] = state["step"].clone()


# --- save / load ----------------------------------------------------------------------------------

class _ResultsFile:
    """Where megatron's shard writer leaves its results for the finalize step: one file per rank
    in the checkpoint directory, consumed (deleted) before the manifest is written.

    megatron's own queue lives in a *spawned* Manager process started on the first save (~8 s per
    job on CPU, and impossible inside daemonic processes); an in-process queue.Queue cannot cross
    the fork of an asynchronous writer; and a fork-context multiprocessing.Queue deadlocks once the
    results outgrow the pipe (the writer cannot exit before the trainer reads, and the trainer
    reads only once the writer has exited). A file has none of these problems."""

    def __init__(self, path: Path):
        self.path = path

    def put(self, obj) -> None:
        import pickle

        try:
            data = pickle.dumps(obj)
        except Exception as e:  # noqa: BLE001 - an unpicklable exception from a writer
            data = pickle.dumps(RuntimeError(f"{type(obj).__name__}: {obj} ({e})"))
        atomic_write(self.path, data)

    def get_nowait(self):
        import pickle
        import queue

        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            raise queue.Empty from None
        self.path.unlink()
        return pickle.loads(data)


def _use_results_file(path: Path) -> None:
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    filesystem_async._results_queue = _ResultsFile(
        path / f".write_results.{torch.distributed.get_rank()}")


# The shard writer (megatron's write_preloaded_data_multiproc) forks one process per file. Every
# process of a save dies with the one that started it: a SIGKILLed rank leaves no writer behind
# that holds the run's lock (inherited descriptors) or writes into the next attempt's directory,
# and no per-file writer blocks forever on the queue of a dead parent. Linux (prctl); elsewhere
# the writers run to their end.
_forker: Optional[int] = None  # pid of the process running the shard writer (in that process)


def _die_with(parent: int) -> None:
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(1)


def _shard_writer(fn, files: List[str], digests: Path, trainer: Optional[int]):
    """megatron's shard writer `fn` (run in the trainer, or with `trainer` set in a process forked
    from it), then the checksums of the files it wrote, into `digests` (see write_manifest)."""
    import functools

    _per_file_writers_die_with_parent()

    @functools.wraps(fn)
    def run(*args, **kwargs):
        global _forker
        if trainer is not None:
            _die_with(trainer)
        _forker = os.getpid()
        result = fn(*args, **kwargs)
        atomic_write(digests, json.dumps({Path(f).name: file_digest(Path(f)) for f in files
                                          if Path(f).is_file()}))
        return result

    return run


def _per_file_writers_die_with_parent() -> None:
    import functools

    from megatron.core.dist_checkpointing.strategies.filesystem_async import \
        FileSystemWriterAsync

    original = FileSystemWriterAsync.write_preloaded_data
    if getattr(original, "_dies_with_parent", False):
        return

    @functools.wraps(original)
    def write_preloaded_data(*args, **kwargs):
        if _forker is not None:
            _die_with(_forker)
        return original(*args, **kwargs)

    write_preloaded_data._dies_with_parent = True
    FileSystemWriterAsync.write_preloaded_data = staticmethod(write_preloaded_data)


def optimizer_has_state(optimizer) -> bool:
    """False until the first optimizer update: AdamW holds no state yet and there is nothing a
    checkpoint could add to the seeded initialisation (a restart rebuilds it exactly)."""
    inner = getattr(optimizer, "chained_optimizers", [optimizer])
    flags = []
    for opt in inner:
        torch_opt = getattr(opt, "optimizer", None)
        flags.append(torch_opt is not None and len(torch_opt.state) > 0)
    return any(flags)


def save_blocker(model, optimizer) -> Optional[str]:
    """Why no checkpoint may be written now (agreed over the world), or None."""
    bad = any(not torch.isfinite(p.detach()).all() for p in model.parameters())
    flags = torch.tensor([float(bad), float(not optimizer_has_state(optimizer))],
                         device="cuda" if torch.cuda.is_available() else "cpu")
    torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
    if flags[0] > 0:
        return "the weights contain NaN/Inf"
    if flags[1] > 0:
        return "no optimizer update yet (a restart rebuilds this state from the seed)"
    return None


def _sharded_state(model, optimizer, is_loading: bool, with_rng: bool) -> Dict[str, Any]:
    model_sd = model.sharded_state_dict()
    sd = {"model": model_sd,
          "optimizer": optimizer.sharded_state_dict(model_sd, is_loading=is_loading,
                                                    metadata=dict(OPTIMIZER_METADATA))}
    if with_rng:
        sd["rng_state"] = _rng_sharded_object(rng_state())
    return sd


class CheckpointManager:
    """Saves and loads checkpoints under `root`; every method is called on every rank."""

    def __init__(self, root: str | os.PathLike, keep_last: int = 2, fault=None,
                 async_save: bool = False, fully_parallel: bool = True):
        self.root = Path(root)
        self.keep_last = keep_last
        self.fault = fault  # tests only: faults.FaultPlan
        self.async_save, self.fully_parallel = async_save, fully_parallel
        self._queue = None  # megatron's AsyncCallsQueue, made on the first asynchronous save
        self._in_flight: Optional[Path] = None  # the asynchronous save not finalized yet
        self._completed: List[Path] = []  # finished since the last finalize()

    # ----- save -----
    def save(self, step: int, model, optimizer, state: TrainState, extra: Dict[str, Any]
             ) -> Tuple[Optional[Path], Optional[str]]:
        """Start writing iter_<step>: (path, None); or write nothing and return (None, why) when
        a weight is NaN/Inf or no update happened yet (see save_blocker). A synchronous save has
        completed (`latest` moved) on return; an asynchronous one completes in a later
        finalize(). Any save still in flight is finalized first. `model` is the bare model (not
        the DDP wrapper)."""
        from megatron.core import dist_checkpointing

        self._finalize(blocking=True)
        blocker = save_blocker(model, optimizer)
        if blocker is not None:
            return None, blocker
        rank = torch.distributed.get_rank()
        path = self.root / iter_name(step)
        if rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            if path.exists():  # left by a save that was killed before `latest` moved to it
                shutil.rmtree(path)
            path.mkdir()
        torch.distributed.barrier()
        sd = _sharded_state(model, optimizer, is_loading=False, with_rng=True)
        sd["train_state"] = dataclasses.asdict(state)
        sd["layout"] = _layout()
        sd["format_version"] = FORMAT_VERSION
        sd.update(extra)
        _use_results_file(path)
        # common.pt is written here, synchronously; the shards by the request.
        request = dist_checkpointing.save(sd, str(path), sharded_strategy=self._save_strategy(),
                                          async_sharded_save=True)
        request.add_finalize_fn(lambda: self._complete(path, step))
        if request.async_fn is not None:  # this rank writes shard files
            request = request._replace(async_fn=_shard_writer(
                request.async_fn, [b[0] for b in request.async_fn_args[1]],
                path / f"{_DIGESTS}{rank}.json", os.getpid() if self.async_save else None))
        if not self.async_save:
            request.execute_sync()
            return path, None
        if self._queue is None:
            from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

            self._queue = AsyncCallsQueue(persistent=False)  # fork per save: see module doc
        self._queue.schedule_async_request(request)
        self._in_flight = path
        return path, None

    def _save_strategy(self):
        from megatron.core import parallel_state as ps
        from megatron.core.dist_checkpointing.serialization import \
            get_default_save_sharded_strategy
        from megatron.core.dist_checkpointing.strategies.fully_parallel import \
            FullyParallelSaveStrategyWrapper

        strategy = get_default_save_sharded_strategy()  # torch_dist
        if self.fully_parallel:
            strategy = FullyParallelSaveStrategyWrapper(
                strategy, ps.get_data_parallel_group(with_context_parallel=True))
        return strategy

    def _load_strategy(self, path: Path):
        from megatron.core import parallel_state as ps
        from megatron.core.dist_checkpointing.serialization import \
            get_default_load_sharded_strategy
        from megatron.core.dist_checkpointing.strategies.fully_parallel import \
            FullyParallelLoadStrategyWrapper

        strategy = get_default_load_sharded_strategy(str(path))
        if self.fully_parallel:
            strategy = FullyParallelLoadStrategyWrapper(
                strategy, ps.get_data_parallel_group(with_context_parallel=True))
        return strategy

    def _complete(self, path: Path, step: int) -> None:
        """The last finalize step (every rank): every rank's shards and megatron's metadata are
        on disk; checksum them, then move `latest` and prune."""
        if self.fault is not None:
            self.fault.at_point("after_shards_written", step)
        torch.distributed.barrier()  # every rank's shards are on disk
        write_manifest(path)
        if torch.distributed.get_rank() == 0:
            atomic_write(self.root / LATEST, iter_name(step) + "\n")
            self._prune(step)
        torch.distributed.barrier()
        self._completed.append(path)

    def _finalize(self, blocking: bool) -> None:
        if self._queue is not None and self._queue.get_num_unfinalized_calls():
            self._queue.maybe_finalize_async_calls(blocking=blocking)
            if not self._queue.get_num_unfinalized_calls():
                self._in_flight = None

    def finalize(self, blocking: bool = False) -> List[Path]:
        """The checkpoints completed since the last call. An asynchronous save whose writers have
        finished on every rank is finalized now (one small all-reduce to agree on that, when a
        save is in flight); with `blocking`, the one in flight is waited for."""
        self._finalize(blocking)
        done, self._completed = self._completed, []
        return done

    @property
    def in_flight(self) -> Optional[Path]:
        return self._in_flight

    def abort(self) -> None:
        """Kill a writer still in flight (an error exit, where the other ranks may not join a
        finalize); its directory stays incomplete and is never loaded."""
        if self._queue is not None:
            self._queue.close(abort=True)
            self._queue, self._in_flight = None, None

    def _prune(self, latest_step: int) -> None:
        # Only complete checkpoints count towards keep_last; incomplete ones older than `latest`
        # (killed saves) go. Newer directories are never touched (a save in flight, or a killed
        # one that the next save of that step replaces).
        older = [p for p in list_checkpoints(self.root) if step_of(p) < latest_step]
        complete = [p for p in older if (p / MANIFEST).is_file()]
        keep = set(complete[max(0, len(complete) - (self.keep_last - 1)):]) \
            if self.keep_last > 1 else set()
        for p in older:
            if p not in keep:
                shutil.rmtree(p, ignore_errors=True)

    # ----- load -----
    @staticmethod
    def read_common(path: Path) -> Dict[str, Any]:
        from megatron.core import dist_checkpointing

        try:
            common = dist_checkpointing.load_common_state_dict(str(path))
        except _LOAD_ERRORS as e:  # torch / pickle errors of a damaged file
            raise CheckpointError(f"{path}: cannot read the checkpoint ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''})") from None
        if not isinstance(common, dict) or common.get("format_version") != FORMAT_VERSION:
            found = common.get("format_version") if isinstance(common, dict) else "?"
            raise CheckpointError(f"{path}: not a swax_megatron checkpoint of format "
                                  f"{FORMAT_VERSION} (format {found}; format 1 predates "
                                  f"manifests and config hashes)")
        return common

    def load(self, path: Path, model, optimizer, weights_only: bool = False) -> Dict[str, Any]:
        """Load model, optimizer and (same layout only) RNG states from `path` into the bare
        `model` and `optimizer`; returns the checkpoint's common entries. `weights_only`: the
        model alone (fine-tuning); the optimizer keeps its fresh state."""
        from megatron.core import dist_checkpointing

        common = self.read_common(path)
        if weights_only:
            try:
                loaded = dist_checkpointing.load({"model": model.sharded_state_dict()}, str(path),
                                                 sharded_strategy=self._load_strategy(path))
            except _LOAD_ERRORS as e:
                raise CheckpointError(f"{path}: does not match this model: "
                                      f"{_first_line(e)[:300]}") from None
            model.load_state_dict(loaded["model"], strict=True)
            # The optimizer's fp32 main parameters (bf16/fp16, distributed optimizer) were copied
            # from the initial weights when it was built: copy the loaded ones in.
            reload = getattr(optimizer, "reload_model_params", None)
            if reload is not None:
                reload()
            return common
        same_layout = common.get("layout") == _layout()
        dist_opts = _distributed_optimizers(optimizer)
        for opt in dist_opts:
            opt._init_optimizer_states_with_dummy_values()  # fix 1
        with _keep_step_on_load(dist_opts):
            sd = _sharded_state(model, optimizer, is_loading=True, with_rng=same_layout)
            try:
                loaded = dist_checkpointing.load(sd, str(path),
                                                 sharded_strategy=self._load_strategy(path))
            except _LOAD_ERRORS as e:  # megatron and torch raise several types
                raise CheckpointError(f"{path}: does not match this model/optimizer: "
                                      f"{_first_line(e)[:300]}") from None
            model.load_state_dict(loaded["model"], strict=True)
            with torch.no_grad():  # fix 3
                optimizer.load_state_dict(loaded["optimizer"])
        _unshare_step_tensors(optimizer)
        if same_layout:
            set_rng_state(loaded["rng_state"])
        return common
