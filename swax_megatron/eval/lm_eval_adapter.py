"""lm-evaluation-harness (lm_eval 0.4.x, the `eval` extra) on the Hugging Face export, offline.

    from swax_megatron.eval.lm_eval_adapter import evaluate_lm_eval
    out = evaluate_lm_eval("runs/tiny-swax-1a2b3c4d", ["my_mc_task"], include_path="tasks/")
    out["my_mc_task"].metrics    # {"acc": 0.4, "acc_stderr": 0.24, "acc_norm": 0.6, ...}
    out["my_mc_task"].path       # RUN_DIR/eval/lm_eval-my_mc_task-w<window>-<hash8>.json

`target` is an export directory (tools/convert_to_hf.py) or a run directory / checkpoint, which is
exported first to a temporary directory with `export_to_hf` (removed afterwards). The export is
loaded with `trust_remote_code=True` (its own modelling files, no swax_megatron import needed) and
evaluated through lm_eval's `HFLM` with `simple_evaluate`, with HF_HUB_OFFLINE=1 and
HF_DATASETS_OFFLINE=1: tasks are lm_eval's own (when their data is available locally) or local task
YAMLs found under `include_path` (e.g. `dataset_path: json`, `dataset_kwargs: {data_files: {test:
FILE}}`, `test_split: test`, `output_type: multiple_choice`).

Each task writes one results file in the harness' format (eval/report_data.py reads it):
`<results_dir>/lm_eval-<name>-w<window>-<hash8>.json` with format 1, task "lm_eval:<name>", kind
"lm_eval", window, checkpoint {path, step}, settings, settings_hash, created, metrics {name: value}
(lm_eval's "acc,none" is "acc"; other filters keep the ",filter" suffix) and score (the main
accuracy in percent: acc, else acc_norm, exact_match, ...; null when none); stderrs are null
(bootstrap_iters=0: no bootstrapping). The settings hash
covers the evaluation settings and the bytes of the include path's files, so editing a local task
redoes it; a file already there with the same checkpoint step and hash is skipped (nothing loaded).
`results_dir` defaults to RUN_DIR/eval for a run and EXPORT_DIR/eval for an export.

lm_eval's RULER tasks (`niah_single_1`, ...: RULER_TASKS) build their samples with the export's
tokenizer at lengths given as metadata (`max_seq_lengths`). Here they get the recipe's
`eval.lengths` (a run's resolved.yaml, an export's swax_export.json; `lengths=` overrides) and are
run once per length with `eval.samples x len(eval.depths)` samples (lm_eval's `limit`; as many as
one length of our own NIAH grid), since a limit over all lengths at once would take the first
length only. Their results file has metrics {"<length>": fraction} and lengths {"<length>":
percent}; score is the mean over lengths. RULER needs `wonderwords` and `nltk` (lm_eval's ruler
extra, in our eval extra); at import it tries `nltk.download("punkt_tab")`, which fails offline
without harm: only the essay haystacks (niah_single_2, ...) use it, and those download their
essays too, so they fail offline (one line). niah_single_1 (noise haystack), niah_multikey_2/3
(needle haystacks) run offline. HFLM's max_length is raised to the longest length.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

from .harness import RESULTS_FORMAT, EvalError, _is_done, _Job, settings_hash

KIND = "lm_eval"
# The headline metric, first one present wins (lm_eval's names without the filter).
MAIN_METRICS = ("acc", "acc_norm", "exact_match", "f1", "mcc", "bleu")
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
# lm_eval's RULER tasks: synthetic, sized by the model's tokenizer to `max_seq_lengths`.
RULER_TASKS = ("niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2",
               "niah_multikey_3", "niah_multivalue", "niah_multiquery", "cwe", "fwe", "vt", "qa_hotpot",
               "qa_squad")


@dataclass
class LmEvalResult:
    task: str  # lm_eval's task name
    path: Path  # the results file
    metrics: Dict[str, Optional[float]] = field(default_factory=dict)
    score: Optional[float] = None  # percent
    skipped: bool = False  # found done, not evaluated now


def _say(progress: bool, text: str) -> None:
    if progress:
        print(f"swax eval (lm_eval): {text}", file=sys.stderr, flush=True)


def _require_lm_eval():
    try:
        import lm_eval  # noqa: F401
        from lm_eval.models.huggingface import HFLM  # noqa: F401  (needs lm_eval's hf extra)
    except ImportError as e:
        raise EvalError(f"lm-eval is not installed ({e}): pip install -c constraints/cpu.txt -e '.[eval]'") from e
    return lm_eval


def _files_hash(include_path: Optional[Path]) -> Optional[str]:
    """sha256 over the relative names and bytes of every file under the include path."""
    if include_path is None:
        return None
    h = hashlib.sha256()
    for p in sorted(q for q in include_path.rglob("*") if q.is_file() and "__pycache__" not in q.parts):
        h.update(str(p.relative_to(include_path)).encode() + b"\0")
        h.update(p.read_bytes() + b"\0")
    return h.hexdigest()


def _require_ruler() -> None:
    try:
        import nltk  # noqa: F401
        import wonderwords  # noqa: F401
    except ImportError as e:
        raise EvalError(f"lm_eval's RULER tasks need wonderwords and nltk ({e}): "
                        f"pip install -c constraints/cpu.txt -e '.[eval]'") from e


def _ruler_defaults(recipe: Optional[dict]) -> tuple:
    """(lengths, samples per length) from a recipe's eval section (a dict); a recipe's defaults
    (config.schema.EvalConfig) where it has none."""
    from ..config.schema import EvalConfig

    e = {**dataclasses.asdict(EvalConfig()), **((recipe or {}).get("eval") or {})}
    return [int(x) for x in e["lengths"]], int(e["samples"]) * max(1, len(e["depths"]))


def _is_export(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def _export_step_window(export: Path) -> tuple:
    """(checkpoint path or the export, step or None, window, recipe dict or None) of an export
    directory (its swax_export.json, when there, has the step, checkpoint and recipe)."""
    from ..hf.convert import EXPORT_INFO

    config = json.loads((export / "config.json").read_text())
    info_path = export / EXPORT_INFO
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    step = (info.get("training") or {}).get("step")
    ck_path = (info.get("source") or {}).get("checkpoint") or str(export)
    return ck_path, step, config.get("sliding_window"), info.get("recipe")


def clean_metrics(task_results: Dict[str, Any]) -> Dict[str, Optional[float]]:
    """lm_eval's {"acc,none": 0.4, "acc_stderr,none": "N/A", "alias": ...} as {"acc": 0.4,
    "acc_stderr": None}: numbers only (NaN and "N/A" are None)."""
    out: Dict[str, Optional[float]] = {}
    for key, value in task_results.items():
        if key in ("alias", "name", "sample_len", "samples") or not isinstance(key, str):
            continue
        name, _, filt = key.partition(",")
        if filt and filt != "none":
            name = key
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if value in ("N/A", None):
                out[name] = None
            continue
        out[name] = float(value) if math.isfinite(value) else None
    return out


def main_score(metrics: Dict[str, Optional[float]]) -> Optional[float]:
    for name in MAIN_METRICS:
        v = metrics.get(name)
        if isinstance(v, float):
            return 100.0 * v
    return None


def evaluate_lm_eval(target, tasks: Iterable[str], *, include_path=None, results_dir=None,
                     step: Optional[int] = None, window: Optional[int] = None, batch_size: int = 4,
                     max_length: Optional[int] = None, limit: Optional[float] = None,
                     num_fewshot: Optional[int] = None, device: str = "cpu", seed: int = 1234,
                     progress: bool = True, lengths: Optional[Iterable[int]] = None,
                     samples: Optional[int] = None) -> Dict[str, LmEvalResult]:
    """Evaluate `tasks` with lm_eval on the export of `target` (an export directory, or a run
    directory / checkpoint exported first); {task: LmEvalResult}, written now or found done.
    `step`/`window` choose the checkpoint and eval window of a run (an export has its own).
    `lengths` / `samples` (per length) for RULER tasks: default from the recipe's eval section."""
    for k, v in OFFLINE_ENV.items():
        os.environ[k] = v
    names = list(dict.fromkeys(tasks))
    if not names:
        raise EvalError("no lm_eval tasks to evaluate")
    target = Path(target)
    if not target.exists():
        raise EvalError(f"{target}: no such run directory or export")
    inc = Path(include_path) if include_path is not None else None
    if inc is not None and not inc.is_dir():
        raise EvalError(f"{inc}: the lm_eval include path is not a directory")
    lm_eval = _require_lm_eval()

    export = target if _is_export(target) else None
    if export is not None:
        if step is not None or window is not None:
            raise EvalError(f"{target}: an export has its own checkpoint and window (export again "
                            f"with --step/--window)")
        ck_path, ck_step, ck_window, recipe = _export_step_window(export)
        default_results = export / "eval"
    else:
        from ..config.resolve import resolve
        from ..hf.convert import find_source

        source = find_source(target, step)  # ConversionError if no checkpoint
        ck_path, ck_step = str(source.checkpoint), source.step
        run_dir = Path(source.run_dir or target)
        resolved = run_dir / "resolved.yaml"
        # the run's recipe: its window unless given, its eval section for RULER's lengths
        run_recipe = None
        if window is None or (any(n in RULER_TASKS for n in names) and resolved.is_file()):
            run_recipe = resolve(str(resolved), []).recipe
        ck_window = run_recipe.model.swa.window if window is None else window
        recipe = dataclasses.asdict(run_recipe) if run_recipe is not None else None
        default_results = run_dir / "eval"
    results_dir = Path(results_dir) if results_dir is not None else default_results
    ck_window = int(ck_window) if ck_window is not None else 0

    settings = {"window": ck_window, "batch_size": batch_size, "max_length": max_length, "limit": limit,
                "num_fewshot": num_fewshot, "seed": seed, "lm_eval": getattr(lm_eval, "__version__", None)}
    ruler_lengths, ruler_samples = _ruler_defaults(recipe)
    ruler = {"lengths": sorted(set(int(x) for x in lengths)) if lengths is not None else ruler_lengths,
             "samples_per_length": int(samples) if samples is not None else ruler_samples}
    if any(n in RULER_TASKS for n in names):
        _require_ruler()
        if not ruler["lengths"] or min(ruler["lengths"]) <= 0 or ruler["samples_per_length"] <= 0:
            raise EvalError(f"RULER tasks need positive lengths and samples, got {ruler}")
    jobs = []
    for name in names:
        config = {"lm_eval_task": name, "include_files": _files_hash(inc)}
        job_settings = dict(settings, **ruler) if name in RULER_TASKS else settings
        h = settings_hash(job_settings, config)
        safe = name.replace("/", "_")
        jobs.append(_Job(f"lm_eval:{name}", KIND, ck_window, dict(job_settings, task=name), h,
                         results_dir / f"lm_eval-{safe}-w{ck_window}-{h[:8]}.json"))
    out: Dict[str, LmEvalResult] = {}
    todo = []
    for name, job in zip(names, jobs):
        if _is_done(job, ck_step):
            data = json.loads(job.path.read_text())
            out[name] = LmEvalResult(name, job.path, data.get("metrics") or {}, data.get("score"), True)
            _say(progress, f"{name}: done at step {ck_step} ({job.path.name}), skipped")
        else:
            todo.append((name, job))
    if not todo:
        return out

    with tempfile.TemporaryDirectory(prefix="swax_lm_eval_") as tmp:
        if export is None:
            from ..hf.convert import export_to_hf

            _say(progress, f"exporting {ck_path} (step {ck_step}, window {ck_window})")
            export = Path(tmp) / "export"
            export_to_hf(target, export, step=ck_step, window=ck_window, dtype="fp32",
                         report=lambda s: None)
        _evaluate(lm_eval, export, todo, out, inc, settings, ck_path, ck_step, batch_size, max_length,
                  limit, num_fewshot, device, seed, results_dir, progress)
    return out


def _evaluate(lm_eval, export: Path, todo, out, inc, settings, ck_path, ck_step, batch_size, max_length,
              limit, num_fewshot, device, seed, results_dir: Path, progress: bool) -> None:
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers.utils import logging as hf_logging

    from .results import keep_previous, write_json

    hf_logging.set_verbosity_error()
    ruler_max = max((max(job.settings["lengths"]) for name, job in todo if name in RULER_TASKS), default=None)
    if ruler_max is not None:  # else HFLM cuts the prompts to the model's default length
        max_length = max(max_length or 0, ruler_max)
    kw = {"max_length": max_length} if max_length is not None else {}
    lm = HFLM(pretrained=str(export), trust_remote_code=True, backend="causal", device=device,
              batch_size=batch_size, dtype="float32", **kw)
    tm = TaskManager(include_path=str(inc) if inc is not None else None)
    unknown = [n for n, _ in todo if n not in tm.all_tasks]
    if unknown:
        raise EvalError(f"unknown lm_eval task(s) {', '.join(unknown)}"
                        + ("" if inc else " (local task YAMLs need an include path)"))
    results_dir.mkdir(parents=True, exist_ok=True)
    for name, job in todo:
        _say(progress, f"{name} (step {ck_step}, window {job.window})")
        if name in RULER_TASKS:
            data = _evaluate_ruler(lm_eval, lm, export, inc, name, job, ck_path, ck_step, seed, progress)
            keep_previous(job.path, ck_step)  # an earlier checkpoint's results move to eval/previous/
            write_json(job.path, data)
            out[name] = LmEvalResult(name, job.path, data["metrics"], data["score"], False)
            _say(progress, f"{name}: score {data['score']:.1f}%, wrote {job.path}")
            continue
        res = lm_eval.simple_evaluate(model=lm, tasks=[name], task_manager=tm, limit=limit,
                                      num_fewshot=num_fewshot, random_seed=seed, numpy_random_seed=seed,
                                      torch_random_seed=seed, fewshot_random_seed=seed,
                                      log_samples=False, bootstrap_iters=0)
        task_res = (res.get("results") or {}).get(name) or (res.get("groups") or {}).get(name)
        if task_res is None:
            raise EvalError(f"lm_eval returned no results for {name}")
        metrics = clean_metrics(task_res)
        n = (res.get("n-samples") or {}).get(name) or {}
        score = main_score(metrics)
        data = {"format": RESULTS_FORMAT, "task": job.task, "kind": KIND, "window": job.window,
                "checkpoint": {"path": str(ck_path), "step": ck_step}, "settings": job.settings,
                "settings_hash": job.settings_hash,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "score": score, "metrics": metrics, "samples": n.get("effective")}
        keep_previous(job.path, ck_step)
        write_json(job.path, data)
        out[name] = LmEvalResult(name, job.path, metrics, score, False)
        shown = "" if score is None else f"score {score:.1f}%, "
        _say(progress, f"{name}: {shown}wrote {job.path}")


def _evaluate_ruler(lm_eval, lm, export: Path, inc, name: str, job: _Job, ck_path, ck_step, seed: int,
                    progress: bool) -> dict:
    """One RULER task at each length (see the module docstring): its results file's body."""
    from lm_eval.tasks import TaskManager

    metrics: Dict[str, Optional[float]] = {}
    counts: Dict[str, Optional[int]] = {}
    n = job.settings["samples_per_length"]
    for length in job.settings["lengths"]:
        tm = TaskManager(include_path=str(inc) if inc is not None else None,
                         metadata={"max_seq_lengths": [length], "tokenizer": str(export)})
        try:
            res = lm_eval.simple_evaluate(model=lm, tasks=[name], task_manager=tm, limit=n,
                                          random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                                          fewshot_random_seed=seed, log_samples=False, bootstrap_iters=0)
        except EvalError:
            raise
        except Exception as e:  # noqa: BLE001 - lm_eval's own failure, e.g. essays it cannot download
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise EvalError(f"lm_eval's {name} at length {length} failed offline ({type(e).__name__}: {first}); "
                            f"niah_single_1 and niah_multikey_2/3 need no download") from None
        task_res = (res.get("results") or {}).get(name) or {}
        value = clean_metrics(task_res).get(str(length))
        if value is None or value < 0:  # lm_eval's -1: no sample of this length
            raise EvalError(f"lm_eval's {name} returned no score at length {length} "
                            f"(metrics {sorted(task_res)})")
        metrics[str(length)] = value
        counts[str(length)] = ((res.get("n-samples") or {}).get(name) or {}).get("effective")
        _say(progress, f"  {name} at {length} tokens: {100.0 * value:.1f}% ({counts[str(length)]} samples)")
    values = [v for v in metrics.values() if v is not None]
    return {"format": RESULTS_FORMAT, "task": job.task, "kind": KIND, "window": job.window,
            "checkpoint": {"path": str(ck_path), "step": ck_step}, "settings": job.settings,
            "settings_hash": job.settings_hash,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "score": 100.0 * sum(values) / len(values), "metrics": metrics,
            "lengths": {k: 100.0 * v for k, v in metrics.items()}, "samples": counts}
