"""The ablation report's figures (matplotlib, Agg), each a function of the runs that returns a
figure or None when the runs have nothing to show. The per-run NIAH heatmap is
results.heatmap_figure; recall by distance is drawn per configuration here."""

from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

from .report_data import (Run, by_length, kind_mean, mean, merge_grids, schedule_text, train_window,
                          _num)
from .results import _fmt_tokens, _pyplot, draw_percent_grid

KIND_WORDS = {"generation": "NIAH (generation tasks) average",
              "probes": "recall probes average",
              "lm_eval": "short-context (lm-eval) average"}


def _colours(runs: Sequence[Run]) -> Dict[str, tuple]:
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if len(runs) <= 10 else "tab20")
    return {r.label: cmap(i % cmap.N) for i, r in enumerate(runs)}


def _tokens_formatter(binary: bool = False):
    """Tick labels 50k, 1.5M (binary: 1k = 1024 tokens where the value is a multiple of 1024,
    as the context lengths are)."""
    from matplotlib.ticker import FuncFormatter

    def fmt(x, _pos):
        if x >= 1024 and float(x).is_integer() and int(x) % 1024 == 0 and binary:
            return _fmt_tokens(int(x))
        for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
            if abs(x) >= div:
                return f"{x / div:g}{unit}"
        return f"{x:g}"

    return FuncFormatter(fmt)


def ema(values: Sequence[float], span: float) -> List[float]:
    """Debiased exponential moving average with time constant `span` points."""
    w = math.exp(-1.0 / max(span, 1e-9))
    out, acc, norm = [], 0.0, 0.0
    for v in values:
        acc, norm = w * acc + (1 - w) * v, w * norm + (1 - w)
        out.append(acc / norm)
    return out


def loss_figure(runs: Sequence[Run]):
    """Train loss (faint), its moving average (solid) and validation loss (dashed, markers) of
    every run against training tokens (steps when the recipe does not say the batch)."""
    series = []
    for r in runs:
        train = [(x["step"], float(x["loss"])) for x in r.history if x.get("kind") == "train"
                 and isinstance(x.get("step"), int) and _num(x.get("loss")) is not None]
        val = [(x["step"], float(x["val_loss"])) for x in r.history if x.get("kind") == "eval"
               and isinstance(x.get("step"), int) and _num(x.get("val_loss")) is not None]
        if train or val:
            series.append((r, train, val))
    if not series:
        return None
    by_tokens = all(r.tokens_per_step for r, _, _ in series)
    plt = _pyplot()
    colours = _colours(runs)
    fig, ax = plt.subplots(figsize=(6.2, 3.0), dpi=110, layout="constrained")
    for r, train, val in series:
        scale = r.tokens_per_step if by_tokens else 1
        c = colours[r.label]
        if train:
            xs, ys = [s * scale for s, _ in train], [v for _, v in train]
            ax.plot(xs, ys, color=c, lw=0.6, alpha=0.25)
            ax.plot(xs, ema(ys, max(1.0, len(ys) / 25)), color=c, lw=1.6, label=r.label)
        if val:
            ax.plot([s * scale for s, _ in val], [v for _, v in val], color=c, ls="--",
                    marker="o", ms=4, lw=1.0, label=None if train else r.label)
    ax.set_xlabel("training tokens" if by_tokens else "step")
    if by_tokens:
        ax.xaxis.set_major_formatter(_tokens_formatter())
    ax.set_ylabel("loss (nats / token)")
    ax.set_title("train (faint: raw, solid: smoothed), validation (dashed)", fontsize=8)
    ax.grid(alpha=0.3)
    fig.legend(fontsize=7, loc="outside right upper")
    return fig


def probe_figure(groups: Sequence[Tuple[str, Sequence[Run]]]):
    """The training-time recall probe (metrics.jsonl records of kind "probe": eval.probe_task at
    the model's window) against the step: one panel per configuration, one line per seed. Recall
    tends to appear as a jump; this shows when, and in how many of a configuration's seeds."""
    panels = []
    for label, runs in zip(_group_titles(groups), (g for _, g in groups)):
        lines = []
        for r in runs:
            pts = sorted((x["step"], float(x["score"])) for x in r.history
                         if x.get("kind") == "probe" and isinstance(x.get("step"), int)
                         and _num(x.get("score")) is not None)
            if pts:
                lines.append((r, pts))
        if lines:
            panels.append((label, lines))
    if not panels:
        return None
    fig, axes = _subplots(len(panels), width=3.3, height=2.4)
    for ax, (label, lines) in zip(axes, panels):
        for r, pts in lines:
            seed = r.get("run.seed")
            ax.plot([s for s, _ in pts], [v for _, v in pts], marker=".", ms=4, lw=1.2,
                    label=r.label if seed is None else f"seed {seed}")
        _percent_panel(ax, label, "step", "probe accuracy (%)")
    task = next((x.get("task") for _, lines in panels for r, _ in lines for x in r.history
                 if x.get("kind") == "probe"), "probe")
    fig.suptitle(f"recall during training ({task})", fontsize=8)
    _run_legend(fig, axes)
    return fig


def _group_titles(groups: Sequence[Tuple[str, Sequence[Run]]]) -> List[str]:
    """A panel title per configuration: its layer pattern and window schedule in words ("XS*2,
    fixed 16"); configurations that share those are told apart by the parts of their labels
    (sweep names: name__key=value__...) the others do not share."""
    base = []
    for label, runs in groups:
        r, pattern = runs[0], runs[0].get("model.layer_pattern")
        base.append(f"{pattern}, {schedule_text(r)}" if r.recipe is not None and pattern else label)
    return _told_apart(base, [label for label, _ in groups], "\n")


def _told_apart(titles: Sequence[str], labels: Sequence[str], sep: str = " ") -> List[str]:
    """Each title; where several share one, each gets the parts of its label (sweep names:
    name__key=value__...) that the others with that title do not share, in parentheses."""
    out = []
    for title, label in zip(titles, labels):
        same = [other.split("__") for t, other in zip(titles, labels) if t == title]
        if len(same) == 1:
            out.append(title)
            continue
        common = set.intersection(*map(set, same))
        own = ", ".join(p for p in label.split("__") if p not in common)
        out.append(f"{title}{sep}({own or label})")
    return out


def _percent_panel(ax, title: str, xlabel: str, ylabel: str) -> None:
    """The small-multiple style of the per-configuration figures: 0-100% with a margin."""
    ax.set_title(title, fontsize=7)
    ax.set_ylim(-3, 103)
    ax.set_xlabel(xlabel, fontsize=7)
    ax.set_ylabel(ylabel, fontsize=7)
    ax.tick_params(labelsize=6)
    ax.grid(alpha=0.3)


def _subplots(n: int, width: float = 4.2, height: float = 3.3):
    plt = _pyplot()
    cols = 2 if n == 4 else min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols + 0.6, height * rows), dpi=110,
                             squeeze=False, layout="constrained")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _run_legend(fig, axes) -> None:
    """One legend for the figure, right of the panels: every label any panel has, once."""
    seen = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    if seen:
        fig.legend(list(seen.values()), list(seen), fontsize=7, loc="outside right upper")


def _log2_lengths(ax, lengths: Sequence[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(lengths), [_fmt_tokens(L) for L in lengths])
    ax.minorticks_off()


def niah_length_figure(runs: Sequence[Run], kind: str = "generation"):
    """Accuracy (%) against context length (tokens), one panel per eval window, one line per
    run (its generation tasks averaged); the eval window as a dotted line."""
    windows = sorted({w for r in runs for w in r.windows_of(kind)})
    if not windows:
        return None
    colours = _colours(runs)
    fig, axes = _subplots(len(windows), width=3.3, height=3.0)
    for ax, w in zip(axes, windows):
        lengths_here = set()
        for r in runs:
            grid = merge_grids([x.grid for x in r.results_of(kind, w)])
            if grid is None:
                continue
            pts = sorted((L, v) for L, v in by_length(grid).items() if v is not None)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=4,
                        color=colours[r.label], label=r.label)
                lengths_here |= {p[0] for p in pts}
        if lengths_here:
            _log2_lengths(ax, sorted(lengths_here))
            if min(lengths_here) <= w <= max(lengths_here):
                ax.axvline(w, color="gray", ls=":", lw=1, label="eval window")
        ax.set_ylim(-2, 102)
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"eval window {w} tokens", fontsize=9)
        ax.grid(alpha=0.3)
    _run_legend(fig, axes)
    fig.suptitle("NIAH accuracy against context length", fontsize=10)
    return fig


def _window_runs(runs: Sequence[Run]) -> List[Tuple[Run, tuple, str]]:
    out = []
    for r in runs:
        tw = train_window(r)
        if tw is not None:
            out.append((r, *tw))
    return sorted(out, key=lambda t: t[1])


SCORE_PANELS = ("generation", "probes", "lm_eval", "val_loss")


def window_scores_figure(runs: Sequence[Run], panels: Sequence[str] = SCORE_PANELS, *,
                         title: str = "scores against the training window"):
    """Scores against the training window (categorical axis, ordered by the longest window),
    one panel per entry of `panels` that has data: "generation" / "probes" (NIAH / recall
    average, %, a line per eval window), "lm_eval" (short-context average, %, at each run's
    window), "val_loss" (final validation loss, nats/token). Lines join fixed-window runs;
    stochastic and list schedules are diamonds. Runs without S layers have no training window
    and are left out."""
    wr = _window_runs([r for r in runs if r.exists])
    if not wr:
        return None
    labels = []
    for _, _, label in wr:
        if label not in labels:
            labels.append(label)
    x_of = {label: i for i, label in enumerate(labels)}
    drawn = []
    for panel in panels:
        if panel in ("generation", "probes"):
            windows = sorted({w for r, _, _ in wr for w in r.windows_of(panel)})
            series = {}
            for w in windows:
                pts = [(x_of[lab], kind_mean(r, panel, w), key[1] == 0) for r, key, lab in wr]
                series[f"eval window {w}"] = [p for p in pts if p[1] is not None]
            if windows:
                drawn.append((KIND_WORDS[panel] + " (%)", series, True))
        elif panel == "lm_eval":
            lm = [(x_of[lab], kind_mean(r, "lm_eval", r.primary_window("lm_eval")),
                   key[1] == 0) for r, key, lab in wr]
            lm = [p for p in lm if p[1] is not None]
            if lm:
                drawn.append((KIND_WORDS["lm_eval"] + " (%)", {"": lm}, True))
        elif panel == "val_loss":
            val = [(x_of[lab], r.final_val[0], key[1] == 0) for r, key, lab in wr]
            val = [p for p in val if p[1] is not None]
            if val:
                drawn.append(("final validation loss (nats / token)", {"": val}, False))
        else:
            raise ValueError(f"unknown panel {panel!r}; expected one of {SCORE_PANELS}")
    if not drawn:
        return None
    panels = drawn
    fig, axes = _subplots(len(panels), width=3.4, height=3.0)
    for ax, (ylabel, series, percent) in zip(axes, panels):
        for i, (name, pts) in enumerate(series.items()):
            c = f"C{i}"
            fixed = sorted((x, y) for x, y, f in pts if f)  # a line through the fixed windows
            other = sorted((x, y) for x, y, f in pts if not f)  # stochastic / list: points
            if fixed:
                ax.plot([p[0] for p in fixed], [p[1] for p in fixed], marker="o", ms=5, color=c,
                        label=name or None)
            if other:
                ax.plot([p[0] for p in other], [p[1] for p in other], ls="none", marker="D",
                        ms=5, color=c, label=None if fixed else (name or None))
        ax.set_xticks(range(len(labels)), labels, rotation=20 if len(labels) > 3 else 0,
                      fontsize=8)
        ax.set_xlim(-0.5, len(labels) - 0.5)
        ax.set_xlabel("training window (tokens)")
        ax.set_ylabel(ylabel, fontsize=8)
        if percent:
            ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        if len(series) > 1 or next(iter(series)):
            ax.legend(fontsize=7)
    fig.suptitle(f"{title}\n(line: fixed windows; diamond: stochastic or list schedule)",
                 fontsize=9)
    return fig


def _grid_row_labels(wr: Sequence[Tuple[Run, tuple, str]]) -> List[str]:
    """The training-window label of each row; where several runs share one, each is told apart
    by the parts of its run label the others do not share."""
    return _told_apart([lab for _, _, lab in wr], [r.label for r, _, _ in wr])


def window_grid_figure(runs: Sequence[Run], kind: str = "generation"):
    """Train window x eval window: rows the runs (by training window), columns the eval
    windows of their results, colour and number the kind's average (%)."""
    import numpy as np

    wr = _window_runs([r for r in runs if r.results_of(kind)])
    windows = sorted({w for r, _, _ in wr for w in r.windows_of(kind)})
    if not wr or not windows:
        return None
    rows = _grid_row_labels(wr)
    data = np.array([[np.nan if (v := kind_mean(r, kind, w)) is None else v for w in windows]
                     for r, _, _ in wr], dtype=float)
    plt = _pyplot()
    # (~0.06 inch per character of the longest row label at font size 8, so none is cut off)
    width = 2.8 + 0.9 * len(windows) + 0.06 * max(len(x) for x in rows)
    fig, ax = plt.subplots(figsize=(width, 1.5 + 0.42 * len(rows)), dpi=110, layout="constrained")
    draw_percent_grid(fig, ax, data, [str(w) for w in windows], rows)
    ax.set_xlabel("eval window (tokens)")
    ax.set_ylabel("training window (tokens)")
    ax.set_title(f"train window x eval window:\n{KIND_WORDS[kind]}", fontsize=9)
    return fig


def ppl_figure(runs: Sequence[Run]):
    """Loss (nats/token) against position (tokens, bucket midpoints), one panel per eval
    window, one line per run; the training length dashed, the eval window dotted."""
    windows = sorted({w for r in runs for w in r.windows_of("ppl_by_position")})
    if not windows:
        return None
    colours = _colours(runs)
    fig, axes = _subplots(len(windows), width=4.6)
    for ax, w in zip(axes, windows):
        marks = set()
        for r in runs:
            for res in r.results_of("ppl_by_position", w):
                ppl = res.ppl or {}
                pts = [((b["start"] + b["end"]) / 2, b["loss"]) for b in ppl.get("buckets", [])
                       if _num(b.get("loss")) is not None]
                if not pts:
                    continue
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", ms=5,
                        color=colours[r.label], label=r.label)
                if isinstance(ppl.get("train_length"), int):
                    marks.add(ppl["train_length"])
        for i, L in enumerate(sorted(marks)):
            ax.axvline(L, color="black", ls="--", lw=0.8,
                       label="training length" if i == 0 else None)
        ax.axvline(w, color="gray", ls=":", lw=1, label="eval window")
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(_tokens_formatter(binary=True))
        ax.set_xlabel("position in the sequence (tokens)")
        ax.set_ylabel("loss (nats / token)")
        ax.set_title(f"eval window {w} tokens", fontsize=9)
        ax.grid(alpha=0.3)
    _run_legend(fig, axes)
    fig.suptitle("loss by position", fontsize=10)
    return fig


def heatmap_for(run: Run, window: int, kind: str = "generation"):
    """The run's NIAH heatmap at one eval window (results.heatmap_figure of its generation
    tasks' grids, averaged cell by cell)."""
    from .results import heatmap_figure

    results = run.results_of(kind, window)
    grid = merge_grids([x.grid for x in results])
    if grid is None:
        return None
    tasks = ", ".join(x.task for x in results)
    m = grid.get("mean")
    title = (f"{run.label}, eval window {window}\n{tasks}"
             + (f" (mean {m:.1f}%)" if m is not None else ""))
    return heatmap_figure(grid, title=title)


def recall_distance_figure(groups: Sequence[Tuple[str, Sequence[Run]]], task: str, window: int):
    """Recall by distance of one probe task at one eval window: one panel per configuration
    (runs that differ only in their seed), one colour per evaluation length, the mean over the
    seeds solid and each seed faint. Buckets double in width, so they sit evenly on the x axis;
    a dotted line marks the eval window. Lengths are kept apart because a model can recall at a
    distance inside the training length and not at the same distance in a longer sequence."""
    panels = []
    for label, runs in zip(_group_titles(groups), (g for _, g in groups)):
        per_length: Dict[str, list] = {}
        edges = None
        for r in runs:
            for x in r.results_of("probes", window):
                b = x.buckets or {}
                if x.task != task or len(b.get("edges") or ()) < 2:
                    continue
                edges = edges or [int(e) for e in b["edges"]]
                if [int(e) for e in b["edges"]] != edges:
                    continue  # another bucketing (another evaluation setting): not comparable
                lengths = b.get("by_length") or {"all lengths": {"accuracy": b.get("accuracy")}}
                for length, v in lengths.items():
                    per_length.setdefault(str(length), []).append(list(v.get("accuracy") or []))
        if per_length:
            panels.append((label, edges, per_length))
    if not panels:
        return None
    fig, axes = _subplots(len(panels), width=3.3, height=2.5)
    order = sorted({k for _, _, pl in panels for k in pl},
                   key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0))
    colours = {k: f"C{i % 10}" for i, k in enumerate(order)}
    for ax, (label, edges, per_length) in zip(axes, panels):
        n = len(edges) - 1
        for length in order:
            rows = per_length.get(length)
            if not rows:
                continue
            name = f"length {length}" if length.isdigit() else length
            for acc in rows if len(rows) > 1 else ():
                xs = [i for i in range(n) if i < len(acc) and _num(acc[i]) is not None]
                ax.plot(xs, [acc[i] for i in xs], color=colours[length], lw=0.7, alpha=0.3)
            means = [mean([_num(a[i]) for a in rows if i < len(a)]) for i in range(n)]
            xs = [i for i in range(n) if means[i] is not None]
            ax.plot(xs, [means[i] for i in xs], color=colours[length], marker="o", ms=3, lw=1.4,
                    label=name)
        if window in edges:
            ax.axvline(edges.index(window) - 0.5, color="0.4", ls=":", lw=1,
                       label="eval window")
        ax.set_xticks(range(n), [f"{a}-{b}" for a, b in zip(edges, edges[1:])], rotation=45,
                     fontsize=6)
        _percent_panel(ax, label, "distance (tokens)", "recall (%)")
    fig.suptitle(f"{task}: recall by distance at eval window {window} "
                 "(mean over seeds; faint: each seed)", fontsize=8)
    _run_legend(fig, axes)
    return fig


__all__ = ["ema", "heatmap_for", "loss_figure", "niah_length_figure", "ppl_figure",
           "recall_distance_figure", "window_grid_figure", "window_scores_figure"]
