"""Per-step sliding-window size: fixed, stochastic (SWAX paper) or an explicit cycled list.

The window of step `s` is a pure function of (seed, s): a counter-based hash (splitmix64), not a
stateful RNG. So every rank and every pipeline stage computes the same window without any
communication, a resumed run draws exactly the sequence the uninterrupted run would have drawn,
and nothing here reads or advances Python / numpy / torch global RNG state.

Kinds
-----
fixed       every step uses `long`.
stochastic  each step uses `short` with probability `p_short`, else `long` (paper: 128 / 2048,
            p = 0.5 at 1.4B and 0.75 at 7B). From step `anneal_start` =
            ceil((1 - anneal_fraction) * total_steps) on, the window is fixed at `long`
            (paper: the last 10% of training).
list        step `s` uses `windows[s % len(windows)]`: the list is *cycled*, so a short list is a
            periodic schedule (e.g. [128, 128, 128, 2048] is a deterministic twin of p = 0.75).
            An explicit list is taken literally: no anneal phase (write the tail into the list).

Fields a kind does not use (short / p_short / anneal_fraction / windows for fixed, windows for
stochastic, short / long / p_short / anneal_fraction for list) are ignored, so a recipe can switch `kind` without clearing them.

`step` is the 0-based index of the optimizer step (Megatron's `iteration` before it is
incremented). Steps at or past `total_steps` stay in the anneal phase when there is one.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any, Iterable

KINDS = ("fixed", "stochastic", "list")

_MASK64 = (1 << 64) - 1
# Domain tag so that reusing the training seed here does not correlate the window draws with any
# other counter-based stream keyed by the same seed.
_STREAM_TAG = 0x5357_4158_5749_4E44  # "SWAXWIND"


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def uniform(seed: int, step: int) -> float:
    """Uniform draw in [0, 1) for (seed, step); 53 random bits, identical on every machine."""
    key = _splitmix64((seed & _MASK64) ^ _STREAM_TAG)
    return (_splitmix64(key ^ (step & _MASK64)) >> 11) * (1.0 / (1 << 53))


class WindowScheduleError(ValueError):
    """An invalid window-schedule parameter."""


@dataclass(frozen=True)
class WindowSchedule:
    kind: str = "fixed"
    short: int | None = None
    long: int | None = None
    p_short: float = 0.0
    anneal_fraction: float = 0.0
    windows: tuple[int, ...] = ()
    seed: int = 0
    total_steps: int | None = None
    anneal_start: int | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        # Lists from YAML arrive as lists: store a tuple so the schedule stays hashable and frozen.
        object.__setattr__(self, "windows", tuple(self.windows or ()))
        self._validate()
        start = None
        if self.kind == "stochastic" and self.anneal_fraction > 0:
            # Fraction(repr(x)) reads the decimal the user wrote (0.1, not 0.1000000000000000055),
            # so ceil() does not jump a step because of binary rounding.
            keep = 1 - Fraction(repr(float(self.anneal_fraction)))
            start = math.ceil(keep * self.total_steps)
        object.__setattr__(self, "anneal_start", start)

    def _validate(self) -> None:
        def fail(msg: str) -> None:
            raise WindowScheduleError(f"window_schedule: {msg}")

        def positive_int(name: str, value: Any) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                fail(f"{name} must be a positive integer, got {value!r}")

        if self.kind not in KINDS:
            fail(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            fail(f"seed must be an integer, got {self.seed!r}")
        for name in ("p_short", "anneal_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                fail(f"{name} must be a number in [0, 1], got {value!r}")
        if self.total_steps is not None:
            positive_int("total_steps", self.total_steps)

        if self.kind in ("fixed", "stochastic"):
            positive_int("long", self.long)
        if self.kind == "stochastic":
            positive_int("short", self.short)
            if self.short > self.long:
                fail(f"short ({self.short}) must not exceed long ({self.long})")
        if self.kind == "list":
            if not self.windows:
                fail("kind 'list' needs a non-empty windows list")
            for i, w in enumerate(self.windows):
                positive_int(f"windows[{i}]", w)

        if self.kind == "stochastic" and self.anneal_fraction > 0 and self.total_steps is None:
            fail("anneal_fraction > 0 needs total_steps (the anneal phase is the last "
                 "fraction of training)")

    # -- construction ----------------------------------------------------------------------------

    @classmethod
    def from_config(cls, section: Any, *, seed: int, total_steps: int | None) -> "WindowSchedule":
        """Build from a recipe's `train.window_schedule` section (an object or a mapping with
        kind, short, long, p_short, anneal_fraction, windows); `seed` and `total_steps` come from
        the training section."""
        names = ("kind", "short", "long", "p_short", "anneal_fraction", "windows")
        get = section.get if isinstance(section, Mapping) else (lambda k, d=None: getattr(section, k, d))
        values = {k: get(k, None) for k in names}
        values = {k: v for k, v in values.items() if v is not None}
        return cls(**values, seed=seed, total_steps=total_steps)

    def state_dict(self) -> dict:
        """Everything that determines the sequence: stored in checkpoints so a resume can check
        that the schedule did not change underneath it."""
        sd = asdict(self)
        sd.pop("anneal_start")
        sd["windows"] = list(self.windows)
        return sd

    @classmethod
    def from_state_dict(cls, sd: Mapping) -> "WindowSchedule":
        return cls(**dict(sd))

    # -- queries ---------------------------------------------------------------------------------

    def window(self, step: int) -> int:
        try:
            index = operator.index(step)  # int, numpy or torch integer scalars
        except TypeError:
            index = -1
        if index < 0 or isinstance(step, bool):
            raise WindowScheduleError(f"window_schedule: step must be a non-negative integer, got {step!r}")
        step = index
        if self.kind == "fixed":
            return self.long
        if self.kind == "list":
            return self.windows[step % len(self.windows)]
        if self.anneal_start is not None and step >= self.anneal_start:
            return self.long
        return self.short if uniform(self.seed, step) < self.p_short else self.long

    def windows_for(self, steps: Iterable[int]) -> list[int]:
        return [self.window(s) for s in steps]

    @property
    def max_window(self) -> int:
        """Largest window any step can use (sizes attention buffers, and the eval window)."""
        return max(self.windows) if self.kind == "list" else self.long

    def describe(self) -> str:
        if self.kind == "fixed":
            text = f"fixed {self.long}"
        elif self.kind == "stochastic":
            text = f"stochastic {self.short} (p={self.p_short}) / {self.long}"
        else:
            text = f"list {list(self.windows)} (cycled)"
        if self.anneal_start is not None:
            text += f", fixed at {self.long} from step {self.anneal_start} of {self.total_steps}"
        return text

