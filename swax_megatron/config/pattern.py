"""Layer patterns: one symbol per layer, with repetition and pipeline-stage markers.

    S  sliding-window attention (the step's window)
    G  global (full causal) attention
    X  mLSTM

`UNIT*N` repeats UNIT N times and `|` separates pipeline stages: "XS*12" is the 24-layer
SWAX-1.4B, "XS*3|XS*3" the same 12 layers cut into two explicit stages. A pattern has at most
MAX_LAYERS layers, counted before anything is expanded ("X*3000000000" would take gigabytes).
"""

from __future__ import annotations

import re
from typing import List, Optional, Tuple

SYMBOLS = {"S": "sliding-window attention", "G": "global attention", "X": "mLSTM"}

# More layers than any model has (the paper's 7B has 32); also model.num_layers' upper bound.
MAX_LAYERS = 4096

# [0-9], not \d: \d also matches other scripts' digits.
_TOKEN = re.compile(r"([A-Za-z]+)(?:\*([0-9]+))?")

Unit = Tuple[str, int]  # (symbols, repeat count)


class PatternError(ValueError):
    pass


def shown(pattern: str) -> str:
    """The pattern quoted for a message, cut short when it is long."""
    return repr(pattern) if len(pattern) <= 60 else f"{pattern[:40]!r}... ({len(pattern)} characters)"


def _parse_segment(segment: str, pattern: str) -> List[Unit]:
    """One stage's (unit, count) pairs, counts checked but nothing expanded."""
    out, pos = [], 0
    while pos < len(segment):
        m = _TOKEN.match(segment, pos)
        if not m:
            raise PatternError(f"layer pattern {shown(pattern)}: cannot parse {segment[pos:pos + 20]!r} "
                               f"(expected symbols {''.join(SYMBOLS)} with optional *N)")
        unit, count = m.group(1), m.group(2)
        bad = sorted(set(unit) - set(SYMBOLS))
        if bad:
            known = ", ".join(f"{k} ({v})" for k, v in SYMBOLS.items())
            raise PatternError(f"layer pattern {shown(pattern)}: unknown symbol {bad[0]!r}; known: {known}")
        # A count of more digits than MAX_LAYERS has is too large: no int() of 5,000 digits.
        if count is not None and len(count.lstrip("0")) > len(str(MAX_LAYERS)):
            raise PatternError(f"layer pattern {shown(pattern)}: repeat count {count[:20]}"
                               f"{'...' if len(count) > 20 else ''} is larger than the "
                               f"{MAX_LAYERS} layers a pattern may have")
        n = int(count.lstrip("0") or "0") if count is not None else 1
        if n < 1:
            raise PatternError(f"layer pattern {shown(pattern)}: repeat count must be >= 1")
        out.append((unit, n))
        pos = m.end()
    return out


def parse_stages(pattern: str) -> List[str]:
    """The expanded pattern split at `|`: one string of symbols per explicit stage."""
    if not isinstance(pattern, str) or not pattern.strip():
        raise PatternError("layer pattern is empty")
    compact = re.sub(r"\s+", "", pattern)
    parsed = [_parse_segment(seg, pattern) for seg in compact.split("|")]
    total = sum(len(unit) * n for units in parsed for unit, n in units)
    if total > MAX_LAYERS:
        raise PatternError(f"layer pattern {shown(pattern)} has {total} layers (at most {MAX_LAYERS})")
    stages = ["".join(unit * n for unit, n in units) for units in parsed]
    if any(not s for s in stages):
        raise PatternError(f"layer pattern {shown(pattern)}: empty pipeline stage between '|' markers")
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
            raise PatternError(f"layer pattern {shown(pattern)} has {len(stages)} stages ('|' markers) "
                               f"but pipeline_model_parallel_size is {pp}")
        return stages
    layers = stages[0]
    if len(layers) % pp:
        raise PatternError(f"layer pattern {shown(pattern)}: {len(layers)} layers do not split evenly "
                           f"into {pp} pipeline stages (add '|' markers for an uneven split)")
    n = len(layers) // pp
    return [layers[i * n:(i + 1) * n] for i in range(pp)]


def stage_offset(pattern: str, pp: int, stage: int) -> int:
    """Global index of the first layer of `stage` (0-based)."""
    return sum(len(s) for s in split_for_pipeline(pattern, pp)[:stage])


def count(pattern: str, symbol: Optional[str] = None) -> int:
    layers = expand(pattern)
    return len(layers) if symbol is None else layers.count(symbol)
