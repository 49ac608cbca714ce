"""The stop-request flag set by SIGUSR1 / SIGTERM / SIGINT (Ctrl-C).

The handler only records the signal; the train loop reads `StopRequest.local` at each step
boundary, agrees with the other ranks through an all-reduce (a signal may reach only some
ranks, or reach them at different steps), saves a checkpoint and exits with EXIT_REQUEUE
(exit_codes.py).
SLURM's `--signal=USR1@N` (and a scheduler's SIGTERM before a kill) then lead to a clean
requeue instead of lost work. slurm/pretrain.sh requeues on EXIT_REQUEUE.
"""

from __future__ import annotations

import signal
from typing import Iterable, Optional

# Ctrl-C is a stop request like SIGTERM: checkpoint at the step boundary, exit EXIT_REQUEUE.
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Installs handlers that set a flag; `restore()` puts the previous handlers back."""

    def __init__(self, signals: Iterable[int] = STOP_SIGNALS):
        self.received: Optional[int] = None
        self._previous = {}
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        if self.received is None:
            self.received = signum

    @property
    def local(self) -> bool:
        return self.received is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else ""

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
