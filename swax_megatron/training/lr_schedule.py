"""Learning rate as a pure function of the step: linear warmup, then cosine, WSD or constant.

    lr = lr_at(step, LRSchedule(lr=3e-3, min_lr=3e-4, warmup_steps=20, total_steps=200))

`step` is the 0-based index of the optimizer step about to be taken. Warmup rises linearly
from lr/warmup_steps at step 0 to lr at step warmup_steps - 1 (Megatron's scheduler gives 0 at
step 0, which wastes a step). Being a function of the step (no scheduler state), the schedule
resumes exactly and every rank computes the same value.

Kinds after warmup:
cosine    lr -> min_lr along half a cosine, reaching min_lr at total_steps.
wsd       warmup-stable-decay: lr until the last `decay_fraction` of total_steps, then a linear
          decay to min_lr at total_steps (MiniCPM / "WSD" schedules).
constant  lr.
Steps at or past total_steps stay at the final value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

KINDS = ("cosine", "wsd", "constant")


class LRScheduleError(ValueError):
    """An invalid learning-rate schedule parameter."""


@dataclass(frozen=True)
class LRSchedule:
    lr: float
    min_lr: float = 0.0
    warmup_steps: int = 0
    total_steps: int = 1
    kind: str = "cosine"
    decay_fraction: float = 0.2  # wsd only

    def __post_init__(self) -> None:
        def fail(msg: str) -> None:
            raise LRScheduleError(f"lr schedule: {msg}")

        if self.kind not in KINDS:
            fail(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            fail(f"lr must be a positive number, got {self.lr!r}")
        if not (isinstance(self.min_lr, (int, float)) and 0 <= self.min_lr <= self.lr):
            fail(f"min_lr must be in [0, lr={self.lr}], got {self.min_lr!r}")
        if isinstance(self.total_steps, bool) or not isinstance(self.total_steps, int) \
                or self.total_steps < 1:
            fail(f"total_steps must be a positive integer, got {self.total_steps!r}")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) \
                or not 0 <= self.warmup_steps <= self.total_steps:
            fail(f"warmup_steps must be an integer in [0, total_steps={self.total_steps}], "
                 f"got {self.warmup_steps!r}")
        if not 0 <= self.decay_fraction <= 1:
            fail(f"decay_fraction must be in [0, 1], got {self.decay_fraction!r}")

    @classmethod
    def from_recipe(cls, recipe) -> "LRSchedule":
        o = recipe.optim
        return cls(lr=o.lr, min_lr=o.min_lr, warmup_steps=o.warmup_steps,
                   total_steps=recipe.train.steps, kind=o.schedule,
                   decay_fraction=o.decay_fraction)

    @property
    def decay_start(self) -> int:
        """wsd: first step of the decay phase (never before the end of warmup)."""
        start = self.total_steps - int(round(self.decay_fraction * self.total_steps))
        return max(start, self.warmup_steps)


def lr_at(step: int, s: LRSchedule) -> float:
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise LRScheduleError(f"lr schedule: step must be a non-negative integer, got {step!r}")
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    if s.kind == "constant":
        return s.lr
    if s.kind == "cosine":
        span = s.total_steps - s.warmup_steps
        progress = 1.0 if span <= 0 else min(1.0, (step - s.warmup_steps) / span)
        return s.min_lr + (s.lr - s.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    start = s.decay_start  # wsd
    if step < start:
        return s.lr
    span = s.total_steps - start
    progress = 1.0 if span <= 0 else min(1.0, (step - start) / span)
    return s.lr + (s.min_lr - s.lr) * progress
