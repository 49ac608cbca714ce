"""The ablation report: tables and plots over a set of runs, as markdown and as one
self-contained HTML page.

    from swax_megatron.eval.report import write_report
    out = write_report(["recipes/tiny/window_sweep.yaml"], "reports/window_sweep")
    out.markdown, out.html, out.figures, out.missing

(`tools/summarize.py RUN_DIRS_OR_SWEEP --out DIR` is the command-line front end.)

Inputs are run directories or sweep recipes (every entry's run directory). A run that does not
exist yet or has no evaluation results is listed, not an error; a path that does not exist, a
directory that is not a run directory or a recipe that does not resolve is (ReportInputError).

DIR/report.md opens with what a person reads first, one screen: the runs table (window schedule,
parameters, training tokens, final validation loss, NIAH / recall / short-context averages) and
the main plots (loss curves, NIAH accuracy against context length, the train window x eval
window grid, scores against the training window). Below a rule come the details: NIAH average
by context length per eval window, recall by distance, short-context tasks, perplexity by
position, NIAH heatmaps, the runs' sizes and states, and notes (skipped or superseded results
files). The figures are PNGs in DIR/figures/; DIR/report.html has the same content with the
figures inline (base64 data: URIs) and inline CSS: no network, no scripts.

Averages: each task weighs the same (RULER's average over tasks); a run's headline numbers are
at its own eval window (model.swa.window) when it has results there, else at the window with the
most results of that kind (the cell then names the window).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..files import atomic_write
from . import report_plots as plots
from .report_data import (Ablation, ReportInputError, Run, by_length, collect, kind_mean,
                          merge_grids, schedule_text, _num)
from .results import _fmt_tokens, _pyplot, _save

DASH = "—"


# -- formatting ----------------------------------------------------------------------------------

def fmt_count(n: Optional[float]) -> str:
    """1234 -> 1.23k, 81920 -> 81.9k, 1.41e9 -> 1.41B (three significant digits)."""
    if n is None:
        return DASH
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:g}"


def fmt_pct(v: Optional[float]) -> str:
    return DASH if v is None else f"{v:.1f}"


def fmt_loss(v: Optional[float]) -> str:
    return DASH if v is None else f"{v:.4f}"


# -- document blocks (rendered to markdown and to HTML) ------------------------------------------

@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Para:
    text: str


@dataclass
class Bullets:
    items: List[str]


@dataclass
class Table:
    header: List[str]
    rows: List[List[str]]
    numeric: List[bool] = field(default_factory=list)  # right-aligned columns


@dataclass
class Figures:
    items: List[Tuple[str, str]]  # (file name under figures/, alt text)


@dataclass
class Fold:
    """Where the one-screen summary ends and the details begin."""


Block = Any


@dataclass
class ReportOutput:
    markdown: Path
    html: Path
    figures: List[Path]
    runs: List[Run]
    missing: List[str]  # runs listed as not there / without results, one line each


# -- tables --------------------------------------------------------------------------------------

def _with_window(value: str, window: Optional[int], shown: Optional[int]) -> str:
    if value == DASH or window is None or window == shown:
        return value
    return f"{value} (w={window})"


def runs_table(runs: Sequence[Run]) -> Table:
    """One row per run that exists: the headline numbers."""
    present = [r for r in runs if r.exists]
    has = {k: any(r.results_of(k) for r in present) for k in ("probes", "lm_eval")}
    show_status = any(r.status != "done" for r in present)
    header = ["run", "window schedule", "params", "training tokens", "final val loss",
              "eval window", "NIAH avg (%)"]
    header += ["recall avg (%)"] * has["probes"] + ["short-context avg (%)"] * has["lm_eval"]
    header += ["status"] * show_status
    rows = []
    for r in present:
        w_niah = r.primary_window("generation")
        shown = w_niah if w_niah is not None else r.eval_window
        row = [r.label, schedule_text(r), fmt_count(r.params["total"]) if r.params else DASH,
               fmt_count(r.tokens_trained), fmt_loss(r.final_val[0]),
               DASH if shown is None else str(shown),
               fmt_pct(kind_mean(r, "generation", w_niah))]
        for kind in ("probes", "lm_eval"):
            if has[kind]:
                w = r.primary_window(kind)
                row.append(_with_window(fmt_pct(kind_mean(r, kind, w)), w, shown))
        if show_status:
            row.append(r.status)
        rows.append(row)
    numeric = [False, False] + [True] * (len(header) - 2 - show_status) + [False] * show_status
    return Table(header, rows, numeric)


def niah_length_table(runs: Sequence[Run]) -> Optional[Table]:
    """Rows (run, eval window), columns the context lengths: generation tasks averaged."""
    lengths = sorted({L for r in runs for x in r.results_of("generation") if x.grid
                      for L in by_length(x.grid)})
    if not lengths:
        return None
    rows = []
    for r in runs:
        for w in r.windows_of("generation"):
            grid = merge_grids([x.grid for x in r.results_of("generation", w)])
            if grid is None:
                continue
            bl = by_length(grid)
            rows.append([r.label, str(w)] + [fmt_pct(bl.get(L)) for L in lengths]
                        + [fmt_pct(kind_mean(r, "generation", w))])
    header = ["run", "eval window"] + [f"{_fmt_tokens(L)} tokens" for L in lengths] + ["avg"]
    return Table(header, rows, [False] + [True] * (len(header) - 1))


def _bucket_label(a: int, b: int, last: bool) -> str:
    return f"[{a}, {b}]" if last else f"[{a}, {b})"


def recall_tables(runs: Sequence[Run]) -> List[Tuple[str, Table]]:
    """Per probe task (and bucket edges): rows (run, eval window), columns distance buckets."""
    groups: Dict[Tuple[str, tuple], List[List[str]]] = {}
    for r in runs:
        for x in r.results_of("probes"):
            b = x.buckets or {}
            edges = tuple(int(e) for e in b.get("edges") or ())
            if len(edges) < 2:
                continue
            acc = list(b.get("accuracy") or [])
            groups.setdefault((x.task, edges), []).append(
                [r.label, str(x.window)] + [fmt_pct(_num(a)) for a in acc]
                + [fmt_pct(x.value)])
    out = []
    for (task, edges), rows in groups.items():
        cols = [_bucket_label(a, b, i == len(edges) - 2)
                for i, (a, b) in enumerate(zip(edges, edges[1:]))]
        header = ["run", "eval window"] + cols + ["avg"]
        out.append((task, Table(header, rows, [False] + [True] * (len(header) - 1))))
    return out


_SEED_NAME = re.compile(r"(__)?seed=\d+")


def _seed_groups(runs: Sequence[Run]) -> List[Tuple[str, List[Run]]]:
    """Runs that differ only in run.seed (same model, train, optim and data sections), in order
    of first appearance, labelled by the first run's label without its seed. A run without a
    readable recipe is a group of its own."""
    import dataclasses
    import json

    groups: Dict[str, List[Run]] = {}
    for i, r in enumerate(runs):
        if r.recipe_obj is None:
            groups[f"#{i}"] = [r]
            continue
        d = dataclasses.asdict(r.recipe_obj)
        key = json.dumps({k: d[k] for k in ("model", "train", "optim", "data")}, sort_keys=True,
                         default=str)
        groups.setdefault(key, []).append(r)
    return [(_SEED_NAME.sub("", g[0].label) or g[0].label, g) for g in groups.values()]


def mean_spread(xs: Sequence[Optional[float]]) -> Tuple[Optional[float], Optional[float], int]:
    """(mean, sample standard deviation or None below two values, count) of the values given."""
    v = [float(x) for x in xs if x is not None]
    if not v:
        return None, None, 0
    m = sum(v) / len(v)
    sd = (sum((x - m) ** 2 for x in v) / (len(v) - 1)) ** 0.5 if len(v) > 1 else None
    return m, sd, len(v)


def _fmt_ms(xs: Sequence[Optional[float]], fmt) -> str:
    m, sd, _ = mean_spread(xs)
    if m is None:
        return DASH
    return fmt(m) if sd is None else f"{fmt(m)} ± {fmt(sd)}"


def seed_tables(runs: Sequence[Run]) -> List[Tuple[str, Table]]:
    """Mean ± standard deviation over seeds (runs that differ only in run.seed): the final
    validation loss, and per probe task, eval window and bucket edges the recall by distance.
    Empty when no two runs share a configuration."""
    groups = _seed_groups(runs)
    if not any(len(g) > 1 for _, g in groups):
        return []
    out = [("final validation loss", Table(
        ["runs", "seeds", "final val loss"],
        [[label, str(len(g)), _fmt_ms([r.final_val[0] for r in g], fmt_loss)]
         for label, g in groups], [False, True, True]))]
    keys = []
    for _, g in groups:
        for r in g:
            for x in r.results_of("probes"):
                edges = tuple(int(e) for e in (x.buckets or {}).get("edges") or ())
                if len(edges) >= 2 and (x.task, x.window, edges) not in keys:
                    keys.append((x.task, x.window, edges))
    for task, window, edges in keys:
        rows = []
        for label, g in groups:
            found = [x for r in g for x in r.results_of("probes", window)
                     if x.task == task and tuple(int(e) for e in (x.buckets or {}).get("edges") or ()) == edges]
            if not found:
                continue
            accs = [list((x.buckets or {}).get("accuracy") or []) for x in found]
            cells = [_fmt_ms([_num(a[i]) if i < len(a) else None for a in accs], fmt_pct)
                     for i in range(len(edges) - 1)]
            rows.append([label, str(len(found))] + cells
                        + [_fmt_ms([x.value for x in found], fmt_pct)])
        cols = [_bucket_label(a, b, i == len(edges) - 2)
                for i, (a, b) in enumerate(zip(edges, edges[1:]))]
        header = ["runs", "seeds"] + cols + ["avg"]
        out.append((f"`{task}` at eval window {window}",
                    Table(header, rows, [False] + [True] * (len(header) - 1))))
    return out


def short_context_table(runs: Sequence[Run]) -> Optional[Table]:
    tasks = sorted({x.task for r in runs for x in r.results_of("lm_eval")})
    if not tasks:
        return None
    rows = []
    for r in runs:
        for w in r.windows_of("lm_eval"):
            got = {x.task: x.value for x in r.results_of("lm_eval", w)}
            rows.append([r.label, str(w)] + [fmt_pct(got.get(t)) for t in tasks]
                        + [fmt_pct(kind_mean(r, "lm_eval", w))])
    names = [t[len("lm_eval:"):] if t.startswith("lm_eval:") else t for t in tasks]
    header = ["run", "eval window"] + names + ["avg"]
    return Table(header, rows, [False] + [True] * (len(header) - 1))


def ppl_table(runs: Sequence[Run]) -> Optional[Table]:
    """Rows (run, eval window), columns the position buckets: loss (nats/token)."""
    spans = sorted({(b["start"], b["end"]) for r in runs for x in r.results_of("ppl_by_position")
                    for b in (x.ppl or {}).get("buckets", [])})
    if not spans:
        return None
    rows = []
    for r in runs:
        for x in r.results_of("ppl_by_position"):
            ppl = x.ppl or {}
            got = {(b["start"], b["end"]): _num(b.get("loss")) for b in ppl.get("buckets", [])}
            tl = ppl.get("train_length")
            rows.append([r.label, str(x.window), DASH if tl is None else str(tl)]
                        + [fmt_loss(got.get(s)) for s in spans])
    header = ["run", "eval window", "training length"] + [
        f"{_fmt_tokens(a)}-{_fmt_tokens(b)}" for a, b in spans]
    return Table(header, rows, [False] + [True] * (len(header) - 1))


def details_table(runs: Sequence[Run]) -> Table:
    header = ["run", "directory", "layers", "hidden", "params: embeddings / attention / mLSTM "
              "/ MLP", "steps", "val loss window", "results (checkpoint step)", "status"]
    rows = []
    for r in runs:
        if not r.exists:
            rows.append([r.label, str(r.path), DASH, DASH, DASH, DASH, DASH, DASH,
                         "no run directory"])
            continue
        p = r.params
        breakdown = (" / ".join(fmt_count(p[k]) for k in ("embeddings", "attention", "mlstm",
                                                         "mlp")) if p else DASH)
        steps = r.steps_done
        target = r.get("train.steps")
        steps_text = DASH if steps is None else (f"{steps}" + (f" of {target}" if target and
                                                               target != steps else ""))
        ck = sorted({x.step for x in r.results if x.step is not None})
        results = (f"{len(r.results)} ({', '.join(map(str, ck))})" if ck
                   else str(len(r.results)))
        val_w = r.final_val[1]
        rows.append([r.label, str(r.path), r.get("model.layer_pattern") or DASH,
                     str(r.get("model.hidden_size") or DASH), breakdown, steps_text,
                     DASH if val_w is None else str(val_w), results, r.status])
    return Table(header, rows, [False] * len(header))


def missing_lines(runs: Sequence[Run]) -> List[str]:
    out = []
    for r in runs:
        if not r.exists:
            out.append(f"{r.label}: no run directory ({r.path})")
        elif not r.results:
            out.append(f"{r.label}: no evaluation results ({r.path / 'eval'}; {r.status})")
    return out


# -- the document --------------------------------------------------------------------------------

class _FigureWriter:
    def __init__(self, fig_dir: Path):
        self.dir, self.paths, self.used = fig_dir, [], set()

    def add(self, name: str, fig, alt: str) -> Optional[Tuple[str, str]]:
        if fig is None:
            return None
        stem = re.sub(r"[^A-Za-z0-9_.=-]+", "_", name).strip("_") or "figure"
        candidate, i = stem, 2
        while candidate in self.used:
            candidate, i = f"{stem}_{i}", i + 1
        self.used.add(candidate)
        path = self.dir / f"{candidate}.png"
        _save(fig, path)
        _pyplot().close(fig)
        self.paths.append(path)
        return path.name, alt


def build(ab: Ablation, figs: _FigureWriter) -> List[Block]:
    runs = ab.runs
    present = ab.present
    with_results = [r for r in present if r.results]
    blocks: List[Block] = [Heading(1, f"Ablation report: {ab.title}")]
    when = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    blocks.append(Para(
        f"{len(present)} of {len(runs)} runs found, {len(with_results)} with evaluation results; "
        f"from {', '.join(f'`{s}`' for s in ab.sources)}; generated {when}. Loss in nats per "
        f"token, accuracies in percent, windows and lengths in tokens; averages weigh each task "
        f"the same."))
    if present:
        blocks.append(runs_table(runs))
    missing = missing_lines(runs)
    if missing:
        blocks.append(Para("Not evaluated yet:"))
        blocks.append(Bullets(missing))

    top = [figs.add("loss_curves", plots.loss_figure(present), "loss curves"),
           figs.add("niah_by_length", plots.niah_length_figure(present),
                    "NIAH accuracy against context length"),
           figs.add("window_grid_niah", plots.window_grid_figure(present, "generation"),
                    "train window x eval window grid (NIAH)"),
           figs.add("scores_by_train_window",
                    plots.window_scores_figure(present, ("generation", "lm_eval")),
                    "long-context (NIAH) and short-context scores against the training window")]
    top = [t for t in top if t]
    if top:
        blocks.append(Figures(top))
    blocks.append(Fold())

    blocks.append(Heading(2, "Details"))
    f = figs.add("more_scores_by_train_window",
                 plots.window_scores_figure(present, ("probes", "val_loss"),
                                            title="recall and validation loss against the "
                                                  "training window"),
                 "recall and validation loss against the training window")
    if f:
        blocks.append(Figures([f]))
    t = niah_length_table(present)
    if t is not None:
        tasks = sorted({x.task for r in present for x in r.results_of("generation")})
        blocks += [Heading(3, "NIAH average by context length"),
                   Para(f"Generation tasks averaged: {', '.join(f'`{x}`' for x in tasks)}; "
                        "accuracy (%) per context length, per eval window of the S layers."), t]

    groups = _seed_groups(present)
    recall = recall_tables(present)
    if recall:
        blocks.append(Heading(3, "Recall by distance"))
        blocks.append(Para("Recall accuracy (%) by distance (tokens from the stored value to "
                           "the query), teacher-forced probes."))
        for task, table in recall:
            blocks += [Para(f"`{task}`"), table]
        items = []
        for task in sorted({x.task for r in present for x in r.results_of("probes")}):
            for w in sorted({x.window for r in present for x in r.results_of("probes")
                             if x.task == task and x.window is not None}):
                items.append(figs.add(f"recall_{task}_w{w}",
                                      plots.recall_distance_figure(groups, task, w),
                                      f"{task} recall by distance at eval window {w}"))
        items = [i for i in items if i]
        if items:
            blocks.append(Figures(items))
        g = figs.add("window_grid_recall", plots.window_grid_figure(present, "probes"),
                     "train window x eval window grid (recall probes)")
        if g:
            blocks.append(Figures([g]))

    f = figs.add("recall_during_training", plots.probe_figure(groups),
                 "recall probe during training, per configuration and seed")
    if f:
        blocks += [Heading(3, "Recall during training"),
                   Para("The training-time recall probe (`eval.probe_task`, at the model's "
                        "window) every `train.eval_every` steps: one panel per configuration, "
                        "one line per seed."), Figures([f])]

    spread = seed_tables(present)
    if spread:
        blocks.append(Heading(3, "Mean and spread over seeds"))
        blocks.append(Para("Runs that differ only in their seed, pooled: mean ± standard "
                           "deviation over the seeds (loss in nats per token, recall in %)."))
        for what, table in spread:
            blocks += [Para(what), table]

    t = short_context_table(present)
    if t is not None:
        blocks += [Heading(3, "Short-context tasks (lm-eval)"),
                   Para("Score (%) per lm-evaluation-harness task on the Hugging Face export."), t]

    t = ppl_table(present)
    if t is not None:
        blocks += [Heading(3, "Perplexity by position"),
                   Para("Validation loss (nats/token) per position bucket (tokens), for sequences "
                        "longer than the training length."), t]
        f = figs.add("ppl_by_position", plots.ppl_figure(present), "loss by position")
        if f:
            blocks.append(Figures([f]))

    heat, other = [], []
    for r in present:
        primary = r.primary_window("generation")
        for w in r.windows_of("generation"):
            item = figs.add(f"niah_heatmap_{r.label}_w{w}", plots.heatmap_for(r, w),
                            f"NIAH heatmap of {r.label} at eval window {w}")
            if item:
                (heat if w == primary else other).append(item)
    if heat:
        blocks += [Heading(3, "NIAH heatmaps"),
                   Para("Accuracy (%) per context length (tokens) and needle depth (% of the "
                        "context), generation tasks averaged cell by cell; at each run's own eval "
                        "window."), Figures(heat)]
        if other:
            blocks += [Para("At the other eval windows:"), Figures(other)]

    blocks += [Heading(3, "Runs"), details_table(runs)]
    notes = []
    for r in runs:
        notes += [f"{r.label}: {n}" for n in r.notes]
        for x in r.superseded:
            notes.append(f"{r.label}: `eval/{x.path.name}` superseded by a later result of "
                         f"{x.task} at window {x.window} (checkpoint step {x.step})")
        steps = {x.step for x in r.results if x.step is not None}
        if len(steps) > 1:
            notes.append(f"{r.label}: results come from different checkpoints (steps "
                         f"{', '.join(map(str, sorted(steps)))})")
        if r.done and r.steps_done is not None and steps and max(steps) < r.steps_done:
            notes.append(f"{r.label}: results are from step {max(steps)}, the run trained "
                         f"{r.steps_done} steps")
    if notes:
        blocks += [Heading(3, "Notes"), Bullets(notes)]
    return blocks


# -- rendering -----------------------------------------------------------------------------------

def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: Sequence[Block]) -> str:
    out: List[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"{'#' * b.level} {b.text}\n")
        elif isinstance(b, Para):
            out.append(b.text + "\n")
        elif isinstance(b, Bullets):
            out.append("\n".join(f"- {i}" for i in b.items) + "\n")
        elif isinstance(b, Table):
            numeric = b.numeric + [False] * (len(b.header) - len(b.numeric))
            lines = ["| " + " | ".join(_md_cell(h) for h in b.header) + " |",
                     "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            out.append("\n".join(lines) + "\n")
        elif isinstance(b, Figures):
            out.append("\n".join(f"![{alt}](figures/{name})" for name, alt in b.items) + "\n")
        elif isinstance(b, Fold):
            out.append("---\n")
    return "\n".join(out)


def _inline(text: str) -> str:
    parts = str(text).split("`")
    return "".join(f"<code>{html.escape(p)}</code>" if i % 2 else html.escape(p)
                   for i, p in enumerate(parts))


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.2em auto;
max-width:1600px;padding:0 1em;color:#1d1d1f}
h1{font-size:1.5em;margin:.2em 0 .3em}h2{font-size:1.25em;margin-top:1.2em}
h3{font-size:1.08em;margin:1.1em 0 .4em}p{margin:.35em 0}
table{border-collapse:collapse;margin:.4em 0 .8em;font-size:13px}
th,td{border:1px solid #c8c8c8;padding:3px 8px;vertical-align:top}
th{background:#f0f0f3;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}
tr:nth-child(even) td{background:#fafafa}
code{background:#f2f2f5;padding:0 3px;border-radius:3px;font-size:12px}
.figs{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}
.figs figure{margin:0}.figs img{max-width:100%;height:auto;border:1px solid #e2e2e2}
figcaption{font-size:12px;color:#555}
hr{margin:1.2em 0;border:0;border-top:2px solid #bbb}
"""


def to_html(blocks: Sequence[Block], fig_dir: Path, title: str) -> str:
    """One self-contained page: inline CSS, figures as data: URIs, no scripts; a content
    security policy forbids loading anything from anywhere else."""
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
           'img-src data:; style-src \'unsafe-inline\'">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"]
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"<h{b.level}>{_inline(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            out.append(f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Bullets):
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            numeric = b.numeric + [False] * (len(b.header) - len(b.numeric))
            rows = ["<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in b.header) + "</tr>"]
            for row in b.rows:
                rows.append("<tr>" + "".join(
                    f'<td{" class=n" if n else ""}>{html.escape(str(c))}</td>'
                    for c, n in zip(row, numeric)) + "</tr>")
            out.append("<table>" + "".join(rows) + "</table>")
        elif isinstance(b, Figures):
            items = []
            for name, alt in b.items:
                data = base64.b64encode((fig_dir / name).read_bytes()).decode("ascii")
                items.append(f'<figure><img alt="{html.escape(alt)}" '
                             f'src="data:image/png;base64,{data}">'
                             f"<figcaption>{html.escape(alt)}</figcaption></figure>")
            out.append('<div class="figs">' + "".join(items) + "</div>")
        elif isinstance(b, Fold):
            out.append("<hr>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_report(inputs: Sequence[str], out_dir, *, title: Optional[str] = None) -> ReportOutput:
    """Collect the runs, write DIR/report.md, DIR/report.html and DIR/figures/*.png."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ReportInputError(f"--out {out_dir}: exists and is not a directory")
    ab = collect(inputs, title=title)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    for old in fig_dir.glob("*.png"):  # a previous report's figures
        old.unlink()
    figs = _FigureWriter(fig_dir)
    blocks = build(ab, figs)
    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    atomic_write(md_path, to_markdown(blocks))
    atomic_write(html_path, to_html(blocks, fig_dir, f"Ablation report: {ab.title}"))
    return ReportOutput(markdown=md_path, html=html_path, figures=figs.paths, runs=ab.runs,
                        missing=missing_lines(ab.runs))


__all__ = ["ReportInputError", "ReportOutput", "build", "collect", "fmt_count", "fmt_loss",
           "fmt_pct", "to_html", "to_markdown", "write_report"]
