"""Sweep blocks: one recipe file describes an ablation as a list of entries.

    sweep:
      grid:                      # cartesian product, first key varies slowest
        train.window_schedule.long: [128, 512, 2048]
      zip:                       # paired values: one axis
        train.window_schedule.kind: [fixed, stochastic]
        train.window_schedule.p_short: [0.0, 0.5]
      seeds: [1, 2]              # run.seed, innermost axis

Entry order is deterministic (grid keys as written, then the zip axis, then seeds), and each entry's
name is `<run.name>__<key>=<value>...`, so entry i means the same run on every submission.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from .errors import RecipeError, did_you_mean

SWEEP_KEYS = ("grid", "zip", "seeds")
# Every entry is resolved and validated before anything is submitted, and SLURM arrays are
# bounded too (MaxArraySize is 1001 by default): a sweep larger than this is a typo.
MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class SweepEntry:
    index: int
    values: Tuple[Tuple[str, Any], ...]  # (dotted key, value) pairs to set, in order
    suffix: str  # appended to run.name


def _check_axis_values(key: str, values: Any, origin: str) -> List[Any]:
    if not isinstance(values, list) or not values:
        raise RecipeError("sweep values must be a non-empty list", path=key, origin=origin)
    return values


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, (list, tuple)):
        text = "-".join(_fmt(v) for v in value)
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text)


def _short_names(keys: List[str]) -> Dict[str, str]:
    """Last key segment, or more of it where two swept keys would share a name."""
    out = {}
    for k in keys:
        parts = k.split(".")
        n = 1
        while n < len(parts) and sum(1 for o in keys if o.split(".")[-n:] == parts[-n:]) > 1:
            n += 1
        out[k] = ".".join(parts[-n:])
    return out


def expand_sweep(sweep: Optional[Dict[str, Any]], origins: Dict[str, str]) -> List[SweepEntry]:
    """The entries of a sweep block (one empty entry when there is no sweep)."""
    if sweep is None:
        return [SweepEntry(0, (), "")]
    if not isinstance(sweep, dict):
        raise RecipeError("must be a mapping with grid / zip / seeds", path="sweep",
                          origin=origins.get("sweep"))
    for key in sweep:
        if key not in SWEEP_KEYS:
            raise RecipeError(f"unknown key in section `sweep`{did_you_mean(key, SWEEP_KEYS)}",
                              path=f"sweep.{key}", origin=origins.get(f"sweep.{key}"))
    axes: List[List[Tuple[Tuple[str, Any], ...]]] = []
    seen: List[str] = []
    grid = sweep.get("grid") or {}
    zipped = sweep.get("zip") or {}
    for block, name in ((grid, "grid"), (zipped, "zip")):
        if not isinstance(block, dict):
            raise RecipeError("must be a mapping of dotted.key: [values]", path=f"sweep.{name}",
                              origin=origins.get(f"sweep.{name}"))
    for key, values in grid.items():
        path = f"sweep.grid.{key}"
        values = _check_axis_values(path, values, origins.get(path))
        axes.append([((key, v),) for v in values])
        seen.append(key)
    if zipped:
        lists = {}
        for key, values in zipped.items():
            path = f"sweep.zip.{key}"
            lists[key] = _check_axis_values(path, values, origins.get(path))
            if key in seen:
                raise RecipeError("key is swept in both grid and zip", path=path, origin=origins.get(path))
            seen.append(key)
        lengths = {len(v) for v in lists.values()}
        if len(lengths) != 1:
            raise RecipeError(f"zip lists must have equal lengths, got {sorted(lengths)}",
                              path="sweep.zip", origin=origins.get("sweep.zip"))
        n = lengths.pop()
        axes.append([tuple((k, lists[k][i]) for k in lists) for i in range(n)])
    if "seeds" in sweep:
        seeds = _check_axis_values("sweep.seeds", sweep["seeds"], origins.get("sweep.seeds"))
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            raise RecipeError("seeds must be integers", path="sweep.seeds", origin=origins.get("sweep.seeds"))
        if len(set(seeds)) != len(seeds):
            raise RecipeError("seeds repeat", path="sweep.seeds", origin=origins.get("sweep.seeds"))
        if "run.seed" in seen:
            raise RecipeError("run.seed is swept twice (seeds and grid/zip)", path="sweep.seeds",
                              origin=origins.get("sweep.seeds"))
        axes.append([(("run.seed", s),) for s in seeds])
        seen.append("run.seed")
    if not axes:
        raise RecipeError("sweep has no grid, zip or seeds", path="sweep", origin=origins.get("sweep"))
    count = 1
    for axis in axes:  # counted before itertools.product builds anything
        count *= len(axis)
    if count > MAX_ENTRIES:
        sizes = " x ".join(str(len(axis)) for axis in axes)
        raise RecipeError(f"sweep has {sizes} = {count:,} entries (at most {MAX_ENTRIES:,})",
                          path="sweep", origin=origins.get("sweep"))
    names = _short_names(seen)
    entries = []
    for i, combo in enumerate(itertools.product(*axes)):
        values = tuple(kv for axis_value in combo for kv in axis_value)
        suffix = "__".join(f"{names[k]}={_fmt(v)}" for k, v in values)
        entries.append(SweepEntry(i, values, suffix))
    return entries
