"""Aggregating scored records (`Task.record` / `Task.score_probes`) into JSON-able results, and
plotting them.

    grid = accuracy_grid(records)            # length x depth accuracy, percent
    save_heatmap(grid, "run/eval/niah_single_1.png")
    buckets = distance_buckets(probe_records, edges=[0, 64, 128, 256, 512])
    save_distance_plot({"short window": buckets}, "run/eval/mqar_distance.png")
    write_json("run/eval/niah_single_1.json", {"grid": grid, ...})

Accuracies are percentages (RULER reports 0-100); a cell without records is None (null).
"""

from __future__ import annotations

import json
import math
import os
from typing import Iterable, Mapping, Sequence

from ..files import atomic_path, atomic_write


def _mean(xs: Sequence[float]) -> float | None:
    return 100.0 * sum(xs) / len(xs) if xs else None


def accuracy_grid(records: Iterable[Mapping], *, task: str | None = None) -> dict:
    """Mean score (percent) per (length, depth) cell, per length, per depth and overall.
    `matrix[i][j]` is depth `depths[i]` at length `lengths[j]` (rows: depths, as plotted);
    `counts` likewise. Records need "length", "depth" (None for depth-less tasks) and "score"
    in [0, 1]."""
    cells: dict[tuple, list[float]] = {}
    for r in records:
        score = float(r["score"])
        if not 0.0 <= score <= 1.0:
            raise ValueError(f"score must be within [0, 1], got {score}")
        cells.setdefault((int(r["length"]), r.get("depth")), []).append(score)
        if task is None:
            task = r.get("task")
    lengths = sorted({k[0] for k in cells})
    depths = sorted({k[1] for k in cells}, key=lambda d: (d is None, d or 0.0))
    matrix = [[_mean(cells.get((L, d), [])) for L in lengths] for d in depths]
    counts = [[len(cells.get((L, d), [])) for L in lengths] for d in depths]
    by_length = {str(L): _mean([s for (l2, _), v in cells.items() if l2 == L for s in v])
                 for L in lengths}
    by_depth = {str(d): _mean([s for (_, d2), v in cells.items() if d2 == d for s in v])
                for d in depths}
    every = [s for v in cells.values() for s in v]
    return {"task": task, "metric": "accuracy_percent", "lengths": lengths, "depths": depths,
            "matrix": matrix, "counts": counts, "by_length": by_length, "by_depth": by_depth,
            "mean": _mean(every), "n": len(every)}


def distance_buckets(records: Iterable[Mapping], edges: Sequence[int] | None = None, *,
                     num_buckets: int = 8) -> dict:
    """Mean score (percent) per distance bucket [edges[i], edges[i+1]) (the last bucket closed).
    Without edges: `num_buckets` equal buckets from 0 to the largest distance. Records need
    "distance" and "score"; also split by "length" when records have several."""
    recs = [r for r in records if r.get("distance") is not None]
    if not recs:
        raise ValueError("no records with a distance")
    if edges is None:
        top = max(int(r["distance"]) for r in recs)
        step = max(1, math.ceil((top + 1) / num_buckets))
        edges = [i * step for i in range(num_buckets + 1)]
    edges = [int(e) for e in edges]
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"edges must increase, got {edges}")

    def bucket(d: int) -> int | None:
        if d < edges[0] or d > edges[-1]:
            return None
        for i in range(len(edges) - 1):
            if d < edges[i + 1]:
                return i
        return len(edges) - 2

    def summarise(rs) -> dict:
        groups: list[list[float]] = [[] for _ in range(len(edges) - 1)]
        for r in rs:
            b = bucket(int(r["distance"]))
            if b is not None:
                groups[b].append(float(r["score"]))
        return {"accuracy": [_mean(g) for g in groups], "counts": [len(g) for g in groups]}

    out = {"edges": edges, **summarise(recs)}
    lengths = sorted({int(r["length"]) for r in recs if r.get("length") is not None})
    if len(lengths) > 1:
        out["by_length"] = {str(L): summarise([r for r in recs if r.get("length") == L])
                            for L in lengths}
    return out


def read_json(path: str | os.PathLike) -> dict | None:
    """A JSON object from `path`, or None when the file is missing, unreadable or not an object
    (a results file being written by another process is never half-read: writes are atomic)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: str | os.PathLike, obj) -> None:
    """Atomic, sorted, indented JSON (NaN is refused: a missing value is null)."""
    atomic_write(path, json.dumps(obj, indent=1, sort_keys=True, allow_nan=False) + "\n")


PREVIOUS_DIR = "previous"  # RUN/eval/previous/: results of earlier checkpoints, never read by reports


def keep_previous(path: str | os.PathLike, step: int, companions: Sequence[str] = (".png",)) -> None:
    """Before `path` (a results file) is rewritten for checkpoint `step`: move a file there of
    another step, and its companions (same stem, these suffixes), to eval/previous/ as
    `<stem>.step<N><suffix>` (`<stem>.unreadable-<mtime>` when it names no step), so evaluating a
    newer checkpoint never destroys an older one's results. Nothing happens when the file is absent
    or already of `step`; an existing file in previous/ is left as it is (same name, same results)."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        return
    data = read_json(path)
    ck = data.get("checkpoint") if isinstance(data, dict) and isinstance(data.get("checkpoint"), dict) else {}
    old = ck.get("step")
    if old == step:
        return
    tag = f"step{old}" if isinstance(old, int) else f"unreadable-{int(path.stat().st_mtime)}"
    dest = path.parent / PREVIOUS_DIR
    dest.mkdir(exist_ok=True)
    for src in [path] + [path.with_suffix(sfx) for sfx in companions]:
        target = dest / f"{src.stem}.{tag}{src.suffix}"
        if src.is_file():
            if target.exists():
                src.unlink()
            else:
                os.replace(src, target)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _fmt_tokens(n: int) -> str:
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)


def save_heatmap(grid: Mapping, path: str | os.PathLike, *, title: str | None = None) -> None:
    """The length x depth grid as a PNG heatmap: x context length (tokens), y needle depth
    (% of the context), colour accuracy (%), each cell annotated; empty cells grey."""
    fig = heatmap_figure(grid, title=title)
    _save(fig, path)
    _pyplot().close(fig)


def heatmap_figure(grid: Mapping, *, title: str | None = None):
    """The matplotlib figure save_heatmap writes."""
    import numpy as np

    plt = _pyplot()
    lengths, depths = list(grid["lengths"]), list(grid["depths"])
    if not lengths or not depths:
        raise ValueError("an empty grid has no heatmap")
    data = np.array([[np.nan if v is None else v for v in row] for row in grid["matrix"]],
                    dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(lengths), 1.4 + 0.38 * len(depths)),
                           dpi=110)
    draw_percent_grid(fig, ax, data, [_fmt_tokens(L) for L in lengths],
                      ["-" if d is None else f"{d:g}" for d in depths], fontsize=7)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth (% of context)")
    mean = grid.get("mean")
    ax.set_title(title or f"{grid.get('task') or 'NIAH'}"
                 + (f" (mean {mean:.1f}%)" if mean is not None else ""), fontsize=9)
    fig.tight_layout()
    return fig


def draw_percent_grid(fig, ax, data, xticklabels, yticklabels, fontsize: int = 8) -> None:
    """A grid of accuracies in percent (NaN: no data, grey), each cell numbered, with a colour
    bar: the look every accuracy heatmap of the reports shares."""
    import numpy as np

    cmap = _pyplot().get_cmap("RdYlGn").with_extremes(bad="#d0d0d0")
    im = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=0, vmax=100, aspect="auto",
                   origin="upper")
    ax.set_xticks(range(len(xticklabels)), xticklabels)
    ax.set_yticks(range(len(yticklabels)), yticklabels, fontsize=fontsize)
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            if not np.isnan(data[i, j]):
                ax.text(j, i, f"{data[i, j]:.0f}", ha="center", va="center", fontsize=fontsize)
    fig.colorbar(im, ax=ax, label="accuracy (%)")


def save_distance_plot(series: Mapping[str, Mapping], path: str | os.PathLike, *,
                       title: str | None = None) -> None:
    """Recall accuracy (%) against distance (tokens, bucket midpoints), one line per entry of
    `series` (label -> distance_buckets result)."""
    fig = distance_figure(series, title=title)
    _save(fig, path)
    _pyplot().close(fig)


def distance_figure(series: Mapping[str, Mapping], *, title: str | None = None):
    """The matplotlib figure save_distance_plot writes."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    for label, b in series.items():
        edges = b["edges"]
        mids = [(a + c) / 2 for a, c in zip(edges, edges[1:])]
        pts = [(m, a) for m, a in zip(mids, b["accuracy"]) if a is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.set_xlabel("distance from the stored value to the query (tokens)")
    ax.set_ylabel("recall accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    ax.set_title(title or "recall by distance", fontsize=9)
    fig.tight_layout()
    return fig


def _save(fig, path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
