"""Layer patterns: one symbol per layer, with repetition and pipeline-stage markers.

    S  sliding-window attention (the step's window)
    G  global (full causal) attention
    X  mLSTM

`UNIT*N` repeats UNIT N times and `|` separates pipeline stages: "XS*12" is the 24-layer
SWAX-1.4B, "XS*3|XS*3" the same 12 layers cut into two explicit stages.
"""

from __future__ import annotations

import re
from typing import List, Optional

SYMBOLS = {"S": "sliding-window attention", "G": "global attention", "X": "mLSTM"}

_TOKEN = re.compile(r"([A-Za-z]+)(?:\*(\d+))?")


class PatternError(ValueError):
    pass


def _expand_segment(segment: str, pattern: str) -> str:
    out, pos = [], 0
    while pos < len(segment):
        m = _TOKEN.match(segment, pos)
        if not m:
            raise PatternError(f"layer pattern {pattern!r}: cannot parse {segment[pos:]!r} "
                               f"(expected symbols {''.join(SYMBOLS)} with optional *N)")
        unit, count = m.group(1), m.group(2)
        bad = sorted(set(unit) - set(SYMBOLS))
        if bad:
            known = ", ".join(f"{k} ({v})" for k, v in SYMBOLS.items())
            raise PatternError(f"layer pattern {pattern!r}: unknown symbol {bad[0]!r}; known: {known}")
        n = int(count) if count is not None else 1
        if n < 1:
            raise PatternError(f"layer pattern {pattern!r}: repeat count must be >= 1")
        out.append(unit * n)
        pos = m.end()
    return "".join(out)


def parse_stages(pattern: str) -> List[str]:
    """The expanded pattern split at `|`: one string of symbols per explicit stage."""
    if not isinstance(pattern, str) or not pattern.strip():
        raise PatternError("layer pattern is empty")
    compact = re.sub(r"\s+", "", pattern)
    stages = [_expand_segment(seg, pattern) for seg in compact.split("|")]
    if any(not s for s in stages):
        raise PatternError(f"layer pattern {pattern!r}: empty pipeline stage between '|' markers")
    return stages


def expand(pattern: str) -> str:
    """The full expanded pattern, one symbol per layer, without stage markers."""
    return "".join(parse_stages(pattern))


def split_for_pipeline(pattern: str, pp: int) -> List[str]:
    """The symbols each of `pp` pipeline stages builds: the `|` stages if the pattern has them
    (their number must equal pp), else an even split of the layers."""
    stages = parse_stages(pattern)
    if len(stages) > 1:
        if len(stages) != pp:
            raise PatternError(f"layer pattern {pattern!r} has {len(stages)} stages ('|' markers) "
                               f"but pipeline_model_parallel_size is {pp}")
        return stages
    layers = stages[0]
    if len(layers) % pp:
        raise PatternError(f"layer pattern {pattern!r}: {len(layers)} layers do not split evenly "
                           f"into {pp} pipeline stages (add '|' markers for an uneven split)")
    n = len(layers) // pp
    return [layers[i * n:(i + 1) * n] for i in range(pp)]


def stage_offset(pattern: str, pp: int, stage: int) -> int:
    """Global index of the first layer of `stage` (0-based)."""
    return sum(len(s) for s in split_for_pipeline(pattern, pp)[:stage])


def count(pattern: str, symbol: Optional[str] = None) -> int:
    layers = expand(pattern)
    return len(layers) if symbol is None else layers.count(symbol)
