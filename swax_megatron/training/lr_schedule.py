"""Learning rate of each step: megatron-core's OptimizerParamScheduler (linear warmup, then
cosine, WSD or constant), driven by the step count.

    s = LRSchedule.from_recipe(recipe)
    sched = scheduler(s, optimizer, step=0)    # the optimizer's groups hold step 0's LR
    ... optimizer step ...; sched.step(1)      # now step 1's
    lr = lr_at(step, s)                        # the same value without an optimizer

Counting. Megatron gives the LR after `num_steps` increments, with linear warmup from init_lr
(0 by default) at num_steps 0 to lr at num_steps = warmup_steps; Megatron-LM runs its first
iteration at num_steps 0, that is at LR 0, a step that moves no weight. Here step s (0-based, the
optimizer step about to be taken) runs at num_steps = s + 1, with init_lr 0: warmup rises from
lr/warmup_steps at step 0 to lr at step warmup_steps - 1, and the decay reaches min_lr on the last
step, total_steps - 1. Every value is megatron's formula; only the step it is read at is ours.
The schedule counts steps, skipped (NaN/Inf) ones included, as the window schedule does, so a
skipped step does not shift the rest of the schedule (Megatron-LM advances only on updates).

Kinds after warmup (megatron's lr_decay_style, lr_decay_steps = total_steps):
cosine    lr -> min_lr along half a cosine.
wsd       warmup-stable-decay ("WSD", lr_wsd_decay_style linear): lr, then over the last
          `decay_fraction` of total_steps (never starting inside warmup; megatron's
          wsd_decay_steps) a linear decay to min_lr.
constant  lr.
Past total_steps: min_lr (cosine, wsd) or lr (constant).

The schedule before this module used megatron's name for none of it: the same warmup, but
the decay reached min_lr one step after the last (step total_steps), so after warmup every
step's LR was that of the step before here. Checkpoints of that code carry no scheduler state;
they load, and continue by this definition (loop.py logs it). The scheduler's state_dict
travels in every checkpoint (common entry `lr_scheduler`) and is loaded on resume, so a resumed
run's LRs are bitwise those of an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Dict

KINDS = ("cosine", "wsd", "constant")
_STYLE = {"cosine": "cosine", "wsd": "WSD", "constant": "constant"}  # megatron lr_decay_style


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
        """wsd: the first step of the decay phase (never before the end of warmup)."""
        start = self.total_steps - int(round(self.decay_fraction * self.total_steps))
        return max(start, self.warmup_steps)

    def megatron_kwargs(self, weight_decay: float = 0.0) -> Dict[str, Any]:
        """OptimizerParamScheduler's arguments (weight decay constant, as in the recipe)."""
        return dict(
            init_lr=0.0, max_lr=float(self.lr), min_lr=float(self.min_lr),
            lr_warmup_steps=self.warmup_steps,
            # Megatron needs warmup < decay steps; with warmup_steps == total_steps every step
            # is a warmup step (num_steps <= warmup_steps) and the decay is never reached.
            lr_decay_steps=max(self.total_steps, self.warmup_steps + 1),
            lr_decay_style=_STYLE[self.kind],
            start_wd=float(weight_decay), end_wd=float(weight_decay),
            wd_incr_steps=self.total_steps, wd_incr_style="constant",
            # Resume loads the checkpoint's state and checks its settings equal these (a run
            # resumes only its own checkpoints: same recipe hash).
            use_checkpoint_opt_param_scheduler=False, override_opt_param_scheduler=False,
            wsd_decay_steps=self.total_steps - self.decay_start if self.kind == "wsd" else None,
            lr_wsd_decay_style="linear" if self.kind == "wsd" else None)


def scheduler(s: LRSchedule, optimizer, step: int = 0, weight_decay: float = 0.0):
    """megatron's OptimizerParamScheduler over `optimizer`, positioned at `step` (0-based): the
    optimizer's param groups hold that step's LR and weight decay (per-group max/min LR and
    wd_mult as megatron's optimizer set them). Advance with `.step(1)` after each step."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    _check_step(step)
    sched = OptimizerParamScheduler(optimizer, **s.megatron_kwargs(weight_decay))
    sched.step(step + 1)
    return sched


def load_scheduler_state(sched, state: Dict[str, Any], step: int) -> None:
    """A checkpoint's `lr_scheduler` entry into a scheduler built at step 0 (megatron asserts the
    settings equal); the checkpoint must be at `step`."""
    num_steps = sched.num_steps
    sched.num_steps = 0
    try:
        sched.load_state_dict(state)
    except AssertionError as e:
        sched.num_steps = num_steps
        raise LRScheduleError(f"lr schedule: the checkpoint's scheduler differs from the "
                              f"recipe's: {e}") from None
    if sched.num_steps != step + 1:
        raise LRScheduleError(f"lr schedule: the checkpoint's scheduler is at num_steps "
                              f"{sched.num_steps}, its train state at step {step} (expected "
                              f"{step + 1})")


def current_lr(sched) -> float:
    """The LR the scheduler gives now, before per-group multipliers (what is logged)."""
    return sched.get_lr({})


def lr_at(step: int, s: LRSchedule) -> float:
    """The LR of step `step` (0-based): megatron's formula at num_steps = step + 1."""
    _check_step(step)
    return current_lr(scheduler(s, SimpleNamespace(param_groups=[]), step))


def _check_step(step) -> None:
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise LRScheduleError(f"lr schedule: step must be a non-negative integer, got {step!r}")
