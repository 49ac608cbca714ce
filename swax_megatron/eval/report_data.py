"""Reading an ablation's run directories for the report (`report.py`): the recipe, the training
history and summary, and the evaluation results files, into plain `Run` objects.

    runs, missing = collect(["runs/a-1234abcd", "runs/b-5678ef01"])     # or a sweep recipe
    run.results_of("generation")          # latest result per (task, eval window) of that kind

A results file (written by the evaluation harness) is `RUN_DIR/eval/<task>-w<window>-<hash8>.json`:
    {"format": 1, "task": ..., "kind": "generation" | "probes" | "ppl_by_position" | "lm_eval",
     "window": int, "checkpoint": {"path", "step"}, "settings": {...}, "settings_hash": str,
     "created": ISO time, "score": percent or null,
     "grid": accuracy_grid(...) (generation), "buckets": distance_buckets(...) (probes),
     "ppl": {"train_length", "buckets": [{"start", "end", "loss", "tokens"}]},
     "metrics": {name: value} (lm_eval)}
When one (task, window) has several files (other settings or checkpoints), the latest checkpoint
step wins, then the latest `created`; the others are listed in the report's notes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .results import read_json

RESULTS_FORMAT = 1
KINDS = ("generation", "probes", "ppl_by_position", "lm_eval")


class ReportInputError(ValueError):
    """A bad command-line input (no such path, not a run directory, a recipe that does not
    resolve): the front end prints it as one line and exits 2."""


@dataclass
class Result:
    path: Path
    task: str
    kind: str
    window: int
    step: Optional[int]
    settings_hash: str
    created: str
    score: Optional[float]
    data: Dict[str, Any]

    @property
    def grid(self) -> Optional[dict]:
        return self.data.get("grid")

    @property
    def buckets(self) -> Optional[dict]:
        return self.data.get("buckets")

    @property
    def ppl(self) -> Optional[dict]:
        return self.data.get("ppl")

    @property
    def metrics(self) -> Dict[str, Any]:
        return self.data.get("metrics") or {}

    @property
    def value(self) -> Optional[float]:
        """The headline percent: `score`, else the grid's or buckets' overall mean."""
        if _num(self.score) is not None:
            return float(self.score)
        if self.grid:
            return _num(_grid_overall(self.grid))
        if self.buckets:
            return _bucket_mean(self.buckets)
        return None


@dataclass
class Run:
    label: str
    path: Path
    exists: bool = False
    recipe: Optional[Dict[str, Any]] = None      # the resolved recipe as a nested dict
    recipe_obj: Any = None                       # config.schema.Recipe when it resolved
    summary: Dict[str, Any] = field(default_factory=dict)
    exit: Optional[Dict[str, Any]] = None
    done: bool = False
    history: List[Dict[str, Any]] = field(default_factory=list)
    results: List[Result] = field(default_factory=list)
    superseded: List[Result] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    params: Optional[Dict[str, int]] = None

    # -- recipe access ---------------------------------------------------------------------------
    def get(self, dotted: str, default=None):
        node: Any = self.recipe or {}
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    @property
    def layers(self) -> str:
        pattern = self.get("model.layer_pattern")
        if not isinstance(pattern, str):
            return ""
        try:
            from ..config.pattern import expand

            return expand(pattern)
        except Exception:  # noqa: BLE001 - a pattern of another version: show it as written
            return pattern

    @property
    def has_swa(self) -> bool:
        return "S" in self.layers

    # -- training --------------------------------------------------------------------------------
    @property
    def tokens_per_step(self) -> Optional[int]:
        gbs, seq = self.get("train.global_batch_size"), self.get("train.seq_length")
        return gbs * seq if isinstance(gbs, int) and isinstance(seq, int) else None

    @property
    def steps_done(self) -> Optional[int]:
        if isinstance(self.summary.get("steps"), int):
            return self.summary["steps"]
        steps = [r["step"] for r in self.history
                 if r.get("kind") == "train" and isinstance(r.get("step"), int)]
        return max(steps) if steps else None

    @property
    def tokens_trained(self) -> Optional[int]:
        if isinstance(self.summary.get("tokens_trained"), int):
            return self.summary["tokens_trained"]
        seq = self.get("train.seq_length")
        for r in reversed(self.history):
            if r.get("kind") == "train" and isinstance(r.get("consumed_samples"), int) and seq:
                return r["consumed_samples"] * seq
        return None

    @property
    def final_val(self) -> Tuple[Optional[float], Optional[int]]:
        """(final validation loss, the window it was measured at)."""
        v = _num(self.summary.get("val_loss"))
        if v is not None:
            w = self.summary.get("eval_window")
            return v, w if isinstance(w, int) else self.eval_window
        for r in reversed(self.history):
            if r.get("kind") == "eval" and _num(r.get("val_loss")) is not None:
                return float(r["val_loss"]), r.get("window")
        return None, None

    @property
    def eval_window(self) -> Optional[int]:
        """The window the run is judged at: the summary's, else model.swa.window."""
        w = self.summary.get("eval_window")
        if isinstance(w, int):
            return w
        w = self.get("model.swa.window")
        return w if self.has_swa and isinstance(w, int) else None

    @property
    def status(self) -> str:
        target = self.get("train.steps")
        done_steps = self.steps_done
        if self.done:
            return "done"
        if self.exit and self.exit.get("code") not in (0, None):
            return f"stopped (exit {self.exit.get('code')}) at step {self.exit.get('step')}"
        if done_steps is None:
            return "not started"
        return f"incomplete: step {done_steps} of {target}"

    # -- results ---------------------------------------------------------------------------------
    def results_of(self, kind: str, window: Optional[int] = None) -> List[Result]:
        return [r for r in self.results if r.kind == kind and (window is None or r.window == window)]

    def windows_of(self, kind: str) -> List[int]:
        return sorted({r.window for r in self.results_of(kind) if r.window is not None})

    def primary_window(self, kind: str) -> Optional[int]:
        """The eval window a kind's headline number is taken at: the run's own eval window when
        it has results there, else the window with the most results of that kind (the largest
        on a tie)."""
        windows = self.windows_of(kind)
        if not windows:
            return None
        if self.eval_window in windows:
            return self.eval_window
        return max(windows, key=lambda w: (len(self.results_of(kind, w)), w))


def _num(x) -> Optional[float]:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)


def _grid_overall(grid: dict):
    for key in ("mean", "overall"):
        if key in grid:
            return grid[key]
    return None


def _bucket_mean(b: dict) -> Optional[float]:
    acc, counts = b.get("accuracy") or [], b.get("counts") or []
    pairs = [(a, c) for a, c in zip(acc, counts) if _num(a) is not None and c]
    n = sum(c for _, c in pairs)
    return sum(a * c for a, c in pairs) / n if n else None


# -- reading -------------------------------------------------------------------------------------

def read_result(path: Path) -> Tuple[Optional[Result], Optional[str]]:
    """(result, None) or (None, why the file is skipped)."""
    data = read_json(path)
    if data is None:
        return None, f"{path.name}: not a readable JSON object"
    if data.get("format") != RESULTS_FORMAT:
        return None, f"{path.name}: results format {data.get('format')!r}, expected {RESULTS_FORMAT}"
    task, kind = data.get("task"), data.get("kind")
    if not isinstance(task, str) or kind not in KINDS:
        return None, f"{path.name}: no task or an unknown kind {kind!r}"
    window = data.get("window")
    if isinstance(window, bool) or not isinstance(window, int):
        return None, f"{path.name}: no eval window (an integer), got {window!r}"
    ck = data.get("checkpoint") if isinstance(data.get("checkpoint"), dict) else {}
    step = ck.get("step")
    return Result(path=path, task=task, kind=kind, window=window,
                  step=step if isinstance(step, int) else None,
                  settings_hash=str(data.get("settings_hash", "")), created=str(data.get("created", "")),
                  score=_num(data.get("score")), data=data), None


def read_results(run_dir: Path) -> Tuple[List[Result], List[Result], List[str]]:
    """(latest result per (task, window), superseded results, notes on skipped files)."""
    eval_dir = run_dir / "eval"
    if not eval_dir.is_dir():
        return [], [], []
    notes, by_key = [], {}
    for path in sorted(eval_dir.glob("*.json")):
        result, why = read_result(path)
        if result is None:
            notes.append(f"skipped eval/{why}")
            continue
        by_key.setdefault((result.task, result.window), []).append(result)
    latest, superseded = [], []
    for key in sorted(by_key, key=lambda k: (k[0], k[1] if k[1] is not None else -1)):
        group = sorted(by_key[key], key=lambda r: (r.step if r.step is not None else -1, r.created))
        latest.append(group[-1])
        superseded += group[:-1]
    return latest, superseded, notes


def _load_recipe(run: Run) -> None:
    path = run.path / "resolved.yaml"
    try:
        from ..config.resolve import resolve

        run.recipe_obj = resolve(str(path)).recipe
        run.recipe = dataclasses.asdict(run.recipe_obj)
        return
    except Exception as e:  # noqa: BLE001 - show the run with what its YAML says
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
    try:
        import yaml

        data = yaml.safe_load(path.read_text())
        run.recipe = data if isinstance(data, dict) else {}
        run.notes.append(f"resolved.yaml does not resolve with this version ({why}): "
                         "shown as written, parameters not counted")
    except Exception as e:  # noqa: BLE001
        run.recipe = {}
        run.notes.append(f"resolved.yaml unreadable: {e}")


def load_run(path: Path, label: Optional[str] = None) -> Run:
    """A run directory as far as it exists (a missing directory is a Run with exists=False)."""
    run = Run(label=label or path.name, path=path)
    if not (path / "resolved.yaml").is_file():
        return run
    run.exists = True
    _load_recipe(run)
    run.label = label or str(run.get("run.name") or path.name)
    run.summary = read_json(path / "summary.json") or {}
    run.exit = read_json(path / "exit.json")
    run.done = (path / "DONE").is_file()
    from ..training.metrics import read_metrics

    run.history = read_metrics(path / "metrics.jsonl")
    run.results, run.superseded, notes = read_results(path)
    run.notes += notes
    run.params = count_parameters(run)
    return run


# -- parameters ----------------------------------------------------------------------------------

def _vocab_size(run: Run) -> Optional[int]:
    """model.vocab_size, else the tokenizer's: the SentencePiece model's size when the recipe
    names one, else data.tokenizer_vocab_size (the default tokenizer is trained to that size)."""
    v = run.get("model.vocab_size")
    if isinstance(v, int):
        return v
    model_file = run.get("data.tokenizer_model")
    if model_file:
        try:
            import sentencepiece

            return sentencepiece.SentencePieceProcessor(model_file=str(model_file)).vocab_size()
        except Exception:  # noqa: BLE001
            run.notes.append(f"tokenizer {model_file} unreadable: parameters not counted")
            return None
    v = run.get("data.tokenizer_vocab_size")
    return v if isinstance(v, int) else None


_PARAM_CACHE: Dict[str, Dict[str, int]] = {}


def count_parameters(run: Run) -> Optional[Dict[str, int]]:
    """Parameter counts by kind (models.reference.parameter_breakdown), built on the meta
    device from the resolved recipe: nothing is allocated, any size works."""
    if run.recipe_obj is None:
        return None
    vocab = _vocab_size(run)
    if vocab is None:
        return None
    model_cfg = run.recipe_obj.model
    key = json.dumps([dataclasses.asdict(model_cfg), vocab], sort_keys=True, default=str)
    if key not in _PARAM_CACHE:
        try:
            import torch

            from ..models.reference import ReferenceConfig, SwaxReference, parameter_breakdown

            cfg = ReferenceConfig.from_model_config(model_cfg, vocab_size=vocab)
            with torch.device("meta"):
                model = SwaxReference(cfg)
            _PARAM_CACHE[key] = parameter_breakdown(model)
        except Exception as e:  # noqa: BLE001 - a report, not a check: say so and go on
            run.notes.append(f"parameters not counted: {e}")
            return None
    return dict(_PARAM_CACHE[key])


# -- inputs --------------------------------------------------------------------------------------

@dataclass
class Ablation:
    title: str
    sources: List[str]
    runs: List[Run]                       # every run named, in order (some may not exist)

    @property
    def present(self) -> List[Run]:
        return [r for r in self.runs if r.exists]


def _is_recipe_file(path: Path) -> bool:
    return path.is_file() and path.suffix in (".yaml", ".yml")


def collect(inputs: Sequence[str], *, title: Optional[str] = None) -> Ablation:
    """Runs from run directories and sweep recipes, in the order given. A recipe's entries
    that have no run directory yet are kept (exists=False) so the report lists them; a path
    that does not exist, a directory that is not a run directory, or a recipe that does not
    resolve raises ReportInputError."""
    if not inputs:
        raise ReportInputError("no run directories or sweep recipe given")
    entries: List[Tuple[Path, Optional[str]]] = []
    sources = []
    for text in inputs:
        p = Path(text)
        if not p.exists():
            raise ReportInputError(f"{text}: no such file or directory")
        if p.is_dir():
            if not (p / "resolved.yaml").is_file():
                hint = ""
                if any((c / "resolved.yaml").is_file() for c in p.iterdir() if c.is_dir()):
                    hint = f" (it holds run directories: pass them, e.g. {text.rstrip('/')}/*/)"
                raise ReportInputError(f"{text}: not a run directory (no resolved.yaml){hint}")
            entries.append((p, None))
            sources.append(str(p))
        elif _is_recipe_file(p):
            from ..config.errors import RecipeError
            from ..config.resolve import resolve_sweep

            try:
                resolved = resolve_sweep(str(p))
            except (RecipeError, OSError, ValueError) as e:
                msg = " ".join(str(e).split())
                raise ReportInputError(f"{text}: not a sweep recipe that resolves: {msg}") from None
            for r in resolved:
                entries.append((Path(r.run_dir), r.recipe.run.name))
            sources.append(f"{p} ({len(resolved)} entries)")
        else:
            raise ReportInputError(f"{text}: neither a run directory nor a recipe (.yaml)")
    seen, runs = set(), []
    for path, label in entries:
        key = os.path.realpath(path)
        if key in seen:
            continue
        seen.add(key)
        runs.append(load_run(path, label))
    labels = [r.label for r in runs]
    for r in runs:  # two runs of one recipe (other overrides): their directory names differ
        if labels.count(r.label) > 1:
            r.label = r.path.name
    if title is None:
        recipes = [Path(t).stem for t in inputs if _is_recipe_file(Path(t))]
        title = recipes[0] if len(recipes) == 1 and len(inputs) == 1 else _common_title(runs)
    return Ablation(title=title, sources=sources, runs=runs)


def _common_title(runs: List[Run]) -> str:
    names = [r.label for r in runs]
    prefix = os.path.commonprefix(names).rstrip("-_=.")
    if len(names) > 1 and len(prefix) >= 3:
        return prefix
    return f"{len(runs)} run{'s' if len(runs) != 1 else ''}"


# -- aggregates ----------------------------------------------------------------------------------

def mean(xs) -> Optional[float]:
    xs = [float(x) for x in xs if _num(x) is not None]
    return sum(xs) / len(xs) if xs else None


def kind_mean(run: Run, kind: str, window: Optional[int]) -> Optional[float]:
    """Average over the kind's tasks (each task weighs the same, as RULER averages) at `window`."""
    return mean(r.value for r in run.results_of(kind, window))


def _depth_key(d):
    return (d is None, float(d) if d is not None else 0.0)


def merge_grids(grids: Sequence[dict]) -> Optional[dict]:
    """The tasks' length x depth grids as one grid in accuracy_grid's layout: each cell, each
    length, each depth and the mean averaged over the tasks that have it (tasks weigh the same);
    counts summed. One grid comes back as it is."""
    grids = [g for g in grids if g and g.get("lengths") and g.get("depths")]
    if not grids:
        return None
    if len(grids) == 1:
        return grids[0]
    lengths = sorted({int(L) for g in grids for L in g["lengths"]})
    depths = sorted({None if d is None else float(d) for g in grids for d in g["depths"]},
                    key=_depth_key)
    cells: Dict[Tuple[int, Any], List[float]] = {}
    counts: Dict[Tuple[int, Any], int] = {}
    for g in grids:
        gd = [None if d is None else float(d) for d in g["depths"]]
        for i, d in enumerate(gd):
            for j, L in enumerate(g["lengths"]):
                v = g["matrix"][i][j]
                c = (g.get("counts") or [[None] * len(g["lengths"])] * len(gd))[i][j]
                if _num(v) is not None:
                    cells.setdefault((int(L), d), []).append(float(v))
                counts[(int(L), d)] = counts.get((int(L), d), 0) + (c or 0)

    def per(key: str, names) -> Dict[str, Optional[float]]:
        out = {}
        for name in names:
            out[str(name)] = mean((g.get(key) or {}).get(str(name)) for g in grids)
        return out

    return {"task": ", ".join(sorted({str(g.get("task")) for g in grids})),
            "metric": "accuracy_percent", "lengths": lengths, "depths": depths,
            "matrix": [[mean(cells.get((L, d), [])) for L in lengths] for d in depths],
            "counts": [[counts.get((L, d), 0) for L in lengths] for d in depths],
            "by_length": per("by_length", lengths),
            "by_depth": {("None" if d is None else f"{d:g}"): mean(
                _by_depth(g, d) for g in grids) for d in depths},
            "mean": mean(_num(_grid_overall(g)) for g in grids),
            "n": sum(int(g.get("n") or 0) for g in grids)}


def _by_depth(g: dict, d) -> Optional[float]:
    table = g.get("by_depth") or g.get("per_depth") or {}
    for k, v in table.items():
        if (k in ("None", "null") and d is None) or (d is not None and _float(k) == d):
            return v
    return None


def _float(text) -> Optional[float]:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def by_length(grid: dict) -> Dict[int, Optional[float]]:
    """{length: accuracy %} of a grid (accuracy_grid's `by_length`, keys as ints)."""
    table = grid.get("by_length") or grid.get("per_length") or {}
    return {int(k): _num(v) for k, v in table.items()}


def schedule_text(run: Run) -> str:
    """The training windows in words: "fixed 128", "stochastic 32/128 p=0.5, last 10% at 128",
    "list [128, 128, 2048]"; runs without S layers train no window."""
    if run.recipe is None:
        return "?"
    if not run.has_swa:
        return "none (no S layers)"
    ws = run.get("train.window_schedule") or {}
    kind = ws.get("kind")
    if kind == "fixed":
        return f"fixed {ws.get('long')}"
    if kind == "stochastic":
        text = f"stochastic {ws.get('short')}/{ws.get('long')} p={ws.get('p_short'):g}"
        frac = ws.get("anneal_fraction") or 0
        if frac:
            text += f", last {100 * frac:g}% at {ws.get('long')}"
        return text
    if kind == "list":
        w = list(ws.get("windows") or [])
        shown = ", ".join(map(str, w[:6])) + (", ..." if len(w) > 6 else "")
        return f"list [{shown}] cycled"
    return str(kind)


def train_window(run: Run) -> Optional[Tuple[tuple, str]]:
    """(sort key, short axis label) of the run's training window; None without S layers."""
    if run.recipe is None or not run.has_swa:
        return None
    ws = run.get("train.window_schedule") or {}
    kind, long_, short = ws.get("kind"), ws.get("long") or 0, ws.get("short") or 0
    if kind == "fixed":
        return (long_, 0, 0, 0.0), str(long_)
    if kind == "stochastic":
        p = ws.get("p_short") or 0.0
        return (long_, 1, short, -p), f"{short}/{long_} p={p:g}"
    w = list(ws.get("windows") or [0])
    return (max(w), 2, min(w), 0.0), f"list {min(w)}..{max(w)}"
