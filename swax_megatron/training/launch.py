"""Local launcher: `python -m swax_megatron.train RECIPE` on one machine, N processes.

Started without torchrun / srun, a recipe whose world size (slurm.nodes x slurm.gpus_per_node)
is N > 1 on one node is run as N child processes with the torchrun variables set. Unlike
torchrun, this launcher returns the workers' own exit code, so EXIT_REQUEUE (42, "checkpointed,
requeue me") reaches the caller (torchrun reports every worker failure as 1). SIGUSR1 / SIGTERM
/ SIGINT sent to the launcher are forwarded to every worker. Workers start with all three
ignored (Python's default for SIGUSR1 is to die, for SIGINT a traceback) until the trainer
installs its handlers, so a stop request is re-sent every RESEND_SECONDS until they exit; a
second Ctrl-C kills them. If a worker fails, the others are stopped (they would otherwise wait in
a collective until the timeout).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import List, Sequence

from .distributed import free_port
from ..exit_codes import EXIT_REQUEUE

FORWARDED = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
GRACE_SECONDS = 20.0
RESEND_SECONDS = 20.0


def _stop(procs: List[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)


def launch_local(nproc: int, argv: Sequence[str]) -> int:
    port = str(free_port())
    procs: List[subprocess.Popen] = []
    cores = os.cpu_count() or 1
    stop = {"signal": None, "sent": 0.0}

    def forward(signum, frame):  # noqa: ARG001
        if signum == signal.SIGINT and stop["signal"] == signal.SIGINT:
            print("swax-train: second Ctrl-C: killing the workers", file=sys.stderr, flush=True)
            _stop(procs)
            return
        stop["signal"], stop["sent"] = signum, time.monotonic()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, signal.SIG_IGN) for s in FORWARDED}
    for rank in range(nproc):  # the workers inherit the ignored stop signals
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_RANK=str(rank),
                   LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        env.setdefault("OMP_NUM_THREADS", str(max(1, cores // nproc)))
        procs.append(subprocess.Popen([sys.executable, "-m", "swax_megatron.train", *argv],
                                      env=env))
    for s in FORWARDED:
        signal.signal(s, forward)
    try:
        failed_at = None
        while True:
            codes = [p.poll() for p in procs]
            if all(c is not None for c in codes):
                break
            if stop["signal"] is not None and time.monotonic() - stop["sent"] > RESEND_SECONDS:
                forward(stop["signal"], None)
            bad = [c for c in codes if c is not None and c not in (0, EXIT_REQUEUE)]
            if bad and failed_at is None:
                failed_at = time.monotonic()
            if failed_at is not None and time.monotonic() - failed_at > GRACE_SECONDS:
                _stop(procs)
            time.sleep(0.1)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _stop(procs)
    return combine_exit_codes([p.returncode for p in procs])


def combine_exit_codes(codes: Sequence[int]) -> int:
    """One exit code for the job from the workers' (Popen returncodes: -N = killed by N).

    All 0 -> 0; all EXIT_REQUEUE -> EXIT_REQUEUE; otherwise the first failure that is not a
    requeue, written the shell's way for a signal (128 + N)."""
    codes = [128 - c if c < 0 else c for c in codes]
    failures = [c for c in codes if c != 0]
    if not failures:
        return 0
    worst = [c for c in failures if c != EXIT_REQUEUE]
    if worst:
        return worst[0]
    # Some ranks requeue and some finished cleanly cannot happen (they agree on the step);
    # requeueing is the safe answer.
    return EXIT_REQUEUE
