"""Fault injection for the resume tests: kill or signal the job at an exact point.

A real job is killed at arbitrary moments; a test needs the worst moments on purpose. The plan
comes from the environment variable SWAX_FAULT (unset in normal runs: then nothing here runs):

    SWAX_FAULT="kill@after_shards_written:4"   every rank SIGKILLs itself once the step-4
                                               checkpoint's shards are written, before `latest`
                                               moves to it (a crash in the middle of a save)
    SWAX_FAULT="kill@after_save:4"             every rank SIGKILLs itself right after the step-4
                                               checkpoint is complete (a node failure)
    SWAX_FAULT="signal@step:3:USR1:1"          rank 1 alone sends itself SIGUSR1 after step 3
                                               (one rank gets the signal; all must agree)

Several entries may be joined with commas. The kills are real SIGKILLs (no cleanup, no
flush), the signals go through the real handlers.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from typing import List, Optional

ENV = "SWAX_FAULT"


class FaultSpecError(ValueError):
    pass


@dataclass(frozen=True)
class Fault:
    action: str  # kill | signal
    point: str  # after_shards_written | after_save | step
    step: int
    signal_name: str = "KILL"
    rank: Optional[int] = None  # None: every rank


@dataclass
class FaultPlan:
    faults: List[Fault]

    @classmethod
    def from_env(cls) -> Optional["FaultPlan"]:
        text = os.environ.get(ENV, "").strip()
        return cls(parse(text)) if text else None

    def at_point(self, point: str, step: int) -> None:
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_initialized() else 0
        for f in self.faults:
            if f.point != point or f.step != step or (f.rank is not None and f.rank != rank):
                continue
            if f.action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            else:
                os.kill(os.getpid(), getattr(signal, "SIG" + f.signal_name))


def parse(text: str) -> List[Fault]:
    out = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        try:
            action, rest = item.split("@", 1)
            parts = rest.split(":")
            if action == "kill" and len(parts) == 2 and parts[0] in ("after_shards_written",
                                                                      "after_save"):
                out.append(Fault("kill", parts[0], int(parts[1])))
            elif action == "signal" and parts[0] == "step" and len(parts) in (3, 4):
                if not hasattr(signal, "SIG" + parts[2]):
                    raise ValueError
                rank = int(parts[3]) if len(parts) == 4 else None
                out.append(Fault("signal", "step", int(parts[1]), parts[2], rank))
            else:
                raise ValueError
        except ValueError:
            raise FaultSpecError(f"{ENV}: cannot parse {item!r}; expected kill@after_shards_"
                                 f"written:STEP, kill@after_save:STEP or "
                                 f"signal@step:STEP:USR1[:RANK]") from None
    return out
