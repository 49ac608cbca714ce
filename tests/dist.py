"""Run a test body on N gloo processes forked from the (already megatron-importing) test process.

Forking skips the 5-7 s re-import of megatron that spawn or torchrun pay per test: a 2-process
test costs well under a second. Each child gets a fresh free port, one torch thread (OpenMP is not
fork-safe once the parent has used it), optionally megatron's model-parallel groups, and reports
either its pickled result or its traceback. The parent enforces a hard timeout and kills stragglers.

    results = run_distributed(body, world_size=2, tp=2)   # body(rank) -> picklable, per rank
"""

from __future__ import annotations

import io
import multiprocessing as mp
import os
import queue
import socket
import time
import traceback

import torch


class DistributedTestError(AssertionError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dumps(obj) -> bytes:
    # torch.save instead of Queue pickling: shared-memory tensor handles die with the child.
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _child(rank, world_size, port, body, args, model_parallel, seed, results):
    status, payload = "ok", None
    try:
        torch.set_num_threads(1)
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                          WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
        torch.distributed.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
        if model_parallel is not None:
            from megatron.core import parallel_state
            from swax_megatron.parallel import cpu_compat

            tp, pp = model_parallel
            parallel_state.initialize_model_parallel(
                tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
            cpu_compat.model_parallel_seed(seed)
        payload = body(rank, *args)
    except BaseException:  # noqa: BLE001 - the parent re-raises with this traceback
        status, payload = "error", traceback.format_exc()
    finally:
        try:
            if model_parallel is not None:
                from megatron.core import parallel_state

                parallel_state.destroy_model_parallel()
            if torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
        except BaseException:  # noqa: BLE001
            pass
    try:
        results.put((rank, status, _dumps(payload) if status == "ok" else payload))
    except BaseException:  # noqa: BLE001
        results.put((rank, "error", traceback.format_exc()))
    results.close()
    results.join_thread()
    os._exit(0)


def run_distributed(body, world_size, *args, tp=None, pp=1, seed=1234, timeout=120.0):
    """Run `body(rank, *args)` on `world_size` forked gloo ranks; return the results by rank.

    With `tp` set, megatron's parallel_state is initialised with (tp, pp) and the RNG seeded with
    `seed` before the body runs (DP is what is left of world_size).
    """
    ctx = mp.get_context("fork")
    results = ctx.Queue()
    port = free_port()
    model_parallel = None if tp is None else (tp, pp)
    procs = [ctx.Process(target=_child, daemon=True,
                         args=(r, world_size, port, body, args, model_parallel, seed, results))
             for r in range(world_size)]
    for p in procs:
        p.start()
    outcome, deadline = {}, time.monotonic() + timeout
    try:
        while len(outcome) < world_size:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DistributedTestError(
                    f"timeout after {timeout:.0f}s: ranks {sorted(set(range(world_size)) - set(outcome))}"
                    f" did not finish" + _errors_text(outcome))
            try:
                rank, status, payload = results.get(timeout=min(left, 1.0))
            except queue.Empty:
                dead = [r for r, p in enumerate(procs)
                        if r not in outcome and not p.is_alive() and p.exitcode not in (0, None)]
                if dead:
                    raise DistributedTestError(
                        f"ranks {dead} died (exit codes {[procs[r].exitcode for r in dead]})"
                        + _errors_text(outcome))
                continue
            outcome[rank] = (status, payload)
            if status == "error":
                # One failed rank makes its peers fail or block in a collective: give them a
                # moment to report too, so the first cause is in the message.
                grace = time.monotonic() + 3.0
                while len(outcome) < world_size and time.monotonic() < grace:
                    try:
                        r, st, pl = results.get(timeout=0.2)
                        outcome[r] = (st, pl)
                    except queue.Empty:
                        pass
                raise DistributedTestError(_errors_text(outcome))
    finally:
        for p in procs:
            p.join(timeout=0.5)
            if p.is_alive():
                p.kill()
                p.join()
        results.close()
    return [torch.load(io.BytesIO(outcome[r][1]), weights_only=False) for r in range(world_size)]


def _errors_text(outcome) -> str:
    return "".join(f"\n--- rank {r} traceback ---\n{payload}"
                   for r, (status, payload) in sorted(outcome.items()) if status == "error")


def init_ulysses(u: int, tp: int = 1):
    """Inside a child of run_distributed(..., tp=None): megatron's groups with a context-parallel
    (Ulysses) group of u ranks, and deepspeed.comm on top; returns the Ulysses group."""
    from megatron.core import parallel_state

    from swax_megatron.models import ulysses
    from swax_megatron.parallel import cpu_compat

    cpu_compat.apply()
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp, context_parallel_size=u)
    cpu_compat.model_parallel_seed(1234)
    ulysses.init_deepspeed_comm()
    return ulysses.ulysses_group()
