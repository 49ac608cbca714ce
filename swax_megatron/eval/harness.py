"""`swax eval RUN_DIR`: the run's latest checkpoint, converted to the Hugging Face model in memory
once, evaluated at every eval window x task of the recipe's `eval:` section.

    from swax_megatron.eval.harness import evaluate_run
    paths = evaluate_run("runs/tiny-swax-1a2b3c4d", tasks=["niah_single_1"],
                         overrides=["eval.lengths=[512]", "eval.samples=2"])

Each (task, window) writes RUN_DIR/eval/<task>-w<window>-<hash8>.json (atomic; the format
eval/report_data.py reads: format 1, task, kind, window, checkpoint {path, step}, settings,
settings_hash, layout, created, score, and grid / buckets / ppl by kind), and a generation task also
<same name>.png, its length x depth heatmap. A file that exists with the same checkpoint step and
settings hash is skipped, so re-running does nothing; a new checkpoint or changed settings redo it.

Kinds (swax_megatron.eval.names):
- generation (niah_*): greedy decoding with the constant-memory cache, batched and left-padded
  (`eval.batch_size` prompts at a time), scored by the task (RULER's string-match-all);
- probes (passkey, mqar): one forward per sample, teacher forced: task.score_probes on the argmax
  of each position, aggregated into distance buckets;
- ppl_by_position: `eval.ppl_sequences` sequences of `eval.ppl_length_factor` x train.seq_length
  tokens of the run's validation text (the validation documents of its first indexed dataset by
  data.split, or the embedded corpus' valid plays), mean loss per position bucket.

Every prompt and sequence starts with the end-of-document token, the way every training document
but the first is preceded by one (and `swax generate` starts an empty prompt).

Layouts (`layout=`, `swax eval --layout`): "single" (default) converts the checkpoint to the
Hugging Face model in this process (TP = PP = 1: the checkpoint reshards on load); "run" loads it
into the megatron model at the run's own TP x PP, as many processes (eval/layout.py), with the
model's incremental decoding. Both compute the same numbers (tests/eval/test_eval_layout.py): a
results file records the layout that wrote it, and its settings hash does not depend on it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

from .names import EVAL_TASKS, PPL_TASK, task_kind
from .results import read_json

RESULTS_FORMAT = 1
LAYOUTS = ("single", "run")  # swax eval --layout: the HF model in one process, or the run's TP x PP
LOGITS_CHUNK = 2048  # positions per lm_head call: logits of 131k x vocab never exist at once


class EvalError(ValueError):
    """Bad input for `swax eval` (not a run directory, unknown task, bad override): one line."""


def bad_input_errors() -> tuple:
    """What `swax eval` reports as one line and exit 2."""
    from ..hf.convert import bad_input_errors as convert_errors

    return (EvalError, *convert_errors())


@dataclass
class _Job:
    task: str
    kind: str
    window: int
    settings: Dict[str, Any]
    settings_hash: str
    path: Path

    @property
    def png(self) -> Path:
        return self.path.with_suffix(".png")


def settings_hash(settings: Dict[str, Any], task_config: Dict[str, Any]) -> str:
    """sha256 of the canonical JSON of the harness settings and the task's own config."""
    blob = json.dumps({"settings": settings, "task": task_config}, sort_keys=True,
                      separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def _say(progress: bool, text: str) -> None:
    if progress:
        print(f"swax eval: {text}", file=sys.stderr, flush=True)


def _is_done(job: _Job, step: int) -> bool:
    data = read_json(job.path)
    if data is None or data.get("format") != RESULTS_FORMAT:
        return False
    ck = data.get("checkpoint") if isinstance(data.get("checkpoint"), dict) else {}
    if ck.get("step") != step or data.get("settings_hash") != job.settings_hash:
        return False
    return job.kind != "generation" or job.png.is_file()


def ppl_edges(buckets: Optional[Sequence[int]], train_length: int, length: int) -> List[int]:
    """Bucket edges over positions [0, length]: the given ones up to `length`, else 0, S/4, S/2,
    S, 2S, 4S, ... (S = the training length), always ending at `length` when they reach it."""
    if buckets is None:
        edges = {0, train_length // 4, train_length // 2}
        x = train_length
        while x < length:
            edges.add(x)
            x *= 2
        edges.add(length)
        return sorted(e for e in edges if 0 <= e <= length)
    edges = [int(e) for e in buckets if e < length]
    if not edges or buckets[-1] >= length:
        edges.append(length)
    return edges


def _plan(run_dir: Path, recipe, names: Sequence[str], windows: Sequence[int]) -> List[_Job]:
    from . import get_task

    e = recipe.eval
    jobs = []
    for window in windows:
        for name in names:
            kind = task_kind(name)
            if kind == "ppl_by_position":
                length = e.ppl_length_factor * recipe.train.seq_length
                settings = {"window": window, "length": length, "sequences": e.ppl_sequences,
                            "buckets": ppl_edges(e.ppl_buckets, recipe.train.seq_length, length),
                            "data": _ppl_data_name(recipe), "start": "eod"}
                config = {"task": PPL_TASK}
            else:
                task = get_task(name)
                depths = [float(d) for d in e.depths] if task.uses_depth else None
                settings = {"window": window, "lengths": list(e.lengths), "depths": depths,
                            "samples": e.samples, "seed": e.seed, "start": "eod"}
                config = task.config()
            h = settings_hash(settings, config)
            jobs.append(_Job(name, kind, window, settings, h,
                             run_dir / "eval" / f"{name}-w{window}-{h[:8]}.json"))
    return jobs


def _setup(run_dir: Path, tasks: Optional[Iterable[str]], overrides: Sequence[str]):
    """(recipe, jobs, source) of an evaluation; raises one of bad_input_errors() on bad input."""
    from ..config.resolve import resolve

    if not run_dir.is_dir():
        raise EvalError(f"{run_dir}: not a directory (expected a run directory)")
    if not (run_dir / "resolved.yaml").is_file():
        raise EvalError(f"{run_dir}: not a run directory (no resolved.yaml)")
    overrides = list(overrides)
    for o in overrides:
        if not o.startswith("eval."):
            raise EvalError(f"override `{o}`: only eval.* settings can be changed at evaluation "
                            f"(the model is the checkpoint's)")
    recipe = resolve(str(run_dir / "resolved.yaml"), overrides).recipe
    names = list(recipe.eval.tasks) if tasks is None else list(tasks)
    if not names:
        raise EvalError("no tasks to evaluate")
    for name in names:
        if name not in EVAL_TASKS:
            raise EvalError(f"unknown evaluation task {name!r}; expected one of {', '.join(EVAL_TASKS)}")
    names = list(dict.fromkeys(names))
    windows = list(dict.fromkeys(recipe.eval.windows or [recipe.model.swa.window]))

    from ..hf.convert import find_source

    source = find_source(run_dir)  # the checkpoint `latest` names; ConversionError if none
    return recipe, _plan(run_dir, recipe, names, windows), source


def pending_evaluations(run_dir, tasks: Optional[Iterable[str]] = None,
                        overrides: Sequence[str] = ()) -> List[str]:
    """What `evaluate_run` with these arguments would still compute: `<task>-w<window>` for each
    (task, window) whose results file is missing or is not of the latest checkpoint's step and
    these settings; [] when all are done. Raises one of bad_input_errors() like evaluate_run (no
    checkpoint: the conversion's error)."""
    _, jobs, source = _setup(Path(run_dir), tasks, overrides)
    return [f"{j.task}-w{j.window}" for j in jobs if not _is_done(j, source.step)]


def evaluate_run(run_dir, tasks: Optional[Iterable[str]] = None, overrides: Sequence[str] = (),
                 progress: bool = True, layout: str = "single") -> List[Path]:
    """Evaluate the run's latest checkpoint; the results files of every (window, task), written
    now or found done. layout: "single" (the Hugging Face model in this process) or "run" (the
    megatron model at the run's TP x PP, eval/layout.py). Raises one of bad_input_errors() on bad
    input."""
    run_dir = Path(run_dir)
    if layout not in LAYOUTS:
        raise EvalError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    if layout == "run":
        from .layout import evaluate_at_run_layout

        return evaluate_at_run_layout(run_dir, tasks, overrides, progress)
    recipe, jobs, source = _setup(run_dir, tasks, overrides)
    todo = _todo(jobs, source, progress)
    if not todo:
        return [j.path for j in jobs]

    from ..hf.convert import convert_checkpoint, quiet, single_process_world

    quiet()
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # not the reminder that prompts outgrow the training length
    _say(progress, f"converting {source.checkpoint} (step {source.step}) to the Hugging Face model")
    with single_process_world():
        converted = convert_checkpoint(source, dtype="fp32", window=todo[0].window)
        converted.megatron = None  # holds process groups: freed with the world
    run_jobs(HFBackend(converted.hf), TaskTokenizer(converted.tokenizer), recipe, run_dir, source, todo,
             progress)
    return [j.path for j in jobs]


def _todo(jobs: List[_Job], source, progress: bool) -> List[_Job]:
    todo = [j for j in jobs if not _is_done(j, source.step)]
    for j in jobs:
        if j not in todo:
            _say(progress, f"{j.task} at window {j.window}: done at step {source.step} ({j.path.name}), skipped")
    return todo


def run_jobs(backend, tok, recipe, run_dir: Path, source, todo: List[_Job], progress: bool,
             write: bool = True) -> None:
    """Compute `todo` with `backend` (HFBackend, or layout.MegatronBackend on every rank of its
    world) and, where `write`, write their results files (with the backend's layout: which one
    computed them; not part of the settings hash, the numbers are the same)."""
    import torch

    from .results import keep_previous, save_heatmap, write_json

    if write:
        (run_dir / "eval").mkdir(exist_ok=True)
    checkpoint = {"path": str(source.checkpoint), "step": source.step}
    torch.set_grad_enabled(False)
    try:
        for job in todo:
            backend.set_window(job.window)
            _say(progress, f"{job.task} at window {job.window} (step {source.step})")
            if job.kind == "generation":
                body = _run_generation(backend, tok, recipe, job, progress)
            elif job.kind == "probes":
                body = _run_probes(backend, tok, recipe, job, progress)
            else:
                body = _run_ppl(backend, tok, recipe, job, progress)
            if not write:
                continue
            out = {"format": RESULTS_FORMAT, "task": job.task, "kind": job.kind, "window": job.window,
                   "checkpoint": checkpoint, "settings": job.settings,
                   "settings_hash": job.settings_hash, "layout": dict(backend.layout),
                   "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   **body}
            keep_previous(job.path, source.step)  # an older checkpoint's results move to eval/previous/
            if job.kind == "generation":
                save_heatmap(out["grid"], job.png,
                             title=f"{run_dir.name}: {job.task}, window {job.window}, step {source.step}")
            write_json(job.path, out)  # last: the JSON says the evaluation is done
            shown = "" if out.get("score") is None else f"score {out['score']:.1f}%, "
            _say(progress, f"{job.task} at window {job.window}: {shown}wrote {job.path}")
    finally:
        torch.set_grad_enabled(True)


# --- the model -------------------------------------------------------------------------------------

class TaskTokenizer:
    """The run's tokenizer (HF, built from its SentencePiece model) as the tasks' TokenizerLike."""

    def __init__(self, tok):
        self.hf = tok.hf
        self.fingerprint = tok.fingerprint
        self.eod = tok.hf.eos_token_id
        if self.eod is None:
            raise EvalError("the run's tokenizer has no end-of-document token")

    def tokenize(self, text: str) -> List[int]:
        return list(self.hf(text, add_special_tokens=False)["input_ids"])

    def detokenize(self, ids) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=True)


class HFBackend:
    """The single-process backend: the converted Hugging Face model (TP = PP = 1). The interface
    every backend serves (layout.MegatronBackend too): set_window, next_argmax, token_losses,
    generate, layout."""

    layout = {"kind": "single", "backend": "hf", "tp": 1, "pp": 1}

    def __init__(self, model):
        self.model = model

    def set_window(self, window: int) -> None:
        """The sliding layers' window (the converted model is built at the first one)."""
        from ..hf.modeling_swax import SwaxAttention

        self.model.config.sliding_window = window
        for m in self.model.modules():
            if isinstance(m, SwaxAttention) and m.window is not None:
                m.window = window

    def _logit_chunks(self, ids):
        """(start, logits [n, vocab]) of one sequence, LOGITS_CHUNK positions at a time."""
        import torch

        from ..hf.modeling_swax import soft_cap

        model = self.model
        x = torch.tensor([ids], dtype=torch.long)
        h = model.model(input_ids=x, use_cache=False).last_hidden_state[0]
        for a in range(0, h.shape[0], LOGITS_CHUNK):
            yield a, soft_cap(model.lm_head(h[a:a + LOGITS_CHUNK]), model.config.output_logit_soft_cap)

    def next_argmax(self, ids: Sequence[int]) -> List[int]:
        """The most likely next token after each prefix ids[:t+1] (teacher forced)."""
        out: List[int] = []
        for _, logits in self._logit_chunks(ids):
            out += logits.argmax(-1).tolist()
        return out

    def token_losses(self, ids: Sequence[int], targets: Sequence[int]):
        """Cross entropy [len(targets)] of targets[t] after ids[:t+1] (fp32)."""
        import torch

        target = torch.tensor(list(targets), dtype=torch.long)
        parts = []
        for a, logits in self._logit_chunks(ids):
            n = min(logits.shape[0], len(target) - a)
            if n <= 0:
                break
            parts.append(torch.nn.functional.cross_entropy(logits[:n].float(), target[a:a + n], reduction="none"))
        return torch.cat(parts)

    def generate(self, prompts: Sequence[Sequence[int]], new_tokens: int, eos: int) -> List[List[int]]:
        """Greedy continuations (up to new_tokens each; after an eos, anything) of a batch of
        prompts, run left-padded with the model's constant-memory cache.

        The prompts' common prefix is prefilled once and its cache copied to every row (a NIAH batch
        of one length and depth shares its haystack up to the needle: RULER's noise haystack is the
        same text for every sample); then the rest of each prompt, left-padded, and greedy steps.
        `reference_generate` (transformers' generate() on the whole prompts) is what this equals."""
        import torch

        from ..hf.cache_swax import SwaxCache

        model, pad = self.model, self._pad(eos)
        shared = min(common_prefix_length(prompts), min(len(p) for p in prompts) - 1)
        if len(prompts) == 1 or shared < MIN_SHARED_PREFIX:
            shared = 0
        cache = SwaxCache(model.config)
        if shared:
            model(input_ids=torch.tensor([list(prompts[0][:shared])]), cache=cache, use_cache=True, logits_to_keep=1)
            cache.batch_repeat_interleave(len(prompts))
        rest = [list(p[shared:]) for p in prompts]
        width = max(len(r) for r in rest)
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rest], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rest], dtype=torch.long)
        logits = model(input_ids=ids, attention_mask=mask, cache=cache, use_cache=True, logits_to_keep=1).logits
        out, done = [], torch.zeros(len(prompts), dtype=torch.bool)
        for step in range(new_tokens):
            nxt = logits[:, -1].argmax(-1).masked_fill(done, pad)  # as generate(): pad after the eos
            out.append(nxt)
            done |= nxt == eos
            if bool(done.all()) or step == new_tokens - 1:
                break
            logits = model(input_ids=nxt[:, None], cache=cache, use_cache=True, logits_to_keep=1).logits
        return torch.stack(out, 1).tolist()

    def reference_generate(self, prompts: Sequence[Sequence[int]], new_tokens: int, eos: int) -> List[List[int]]:
        """transformers' generate() on the whole left-padded prompts (greedy): the plain reference."""
        import torch

        pad = self._pad(eos)
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long)
        out = self.model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                                  pad_token_id=pad, eos_token_id=eos)
        return out[:, width:].tolist()

    def _pad(self, eos: int) -> int:
        pad = self.model.generation_config.pad_token_id
        return eos if pad is None else pad


# A common prefix shorter than this is prefilled with each row (the saving would not pay for the extra call).
MIN_SHARED_PREFIX = 64


def common_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """Length of the longest prefix every row starts with."""
    n = min(len(r) for r in rows)
    for i in range(n):
        t = rows[0][i]
        if any(r[i] != t for r in rows[1:]):
            return i
    return n


def _samples(task, tok, job: _Job) -> list:
    s = job.settings
    try:
        return list(task.grid(tok, lengths=s["lengths"], depths=s["depths"] if task.uses_depth else None,
                              num_samples=s["samples"], seed=s["seed"]))
    except ValueError as e:
        raise EvalError(f"{job.task}: cannot build its samples ({str(e).splitlines()[0]})") from None


def _run_generation(backend, tok: TaskTokenizer, recipe, job: _Job, progress: bool) -> dict:
    from . import get_task
    from .results import accuracy_grid

    task = get_task(job.task)
    samples = _samples(task, tok, job)
    batch_size = recipe.eval.batch_size
    records = []
    for b in range(0, len(samples), batch_size):
        batch = samples[b:b + batch_size]
        prompts = [[tok.eod, *s.prompt_ids] for s in batch]
        new = max(s.gen_tokens for s in batch)
        for s, row in zip(batch, backend.generate(prompts, new, tok.eod)):
            row = row[:s.gen_tokens]
            if tok.eod in row:
                row = row[:row.index(tok.eod)]
            records.append(task.record(s, tok.detokenize(row)))
        _say(progress, f"  {job.task}: {len(records)}/{len(samples)} prompts")
    grid = accuracy_grid(records, task=job.task)
    for r in records:  # keep the file small and readable
        r["prediction"] = r["prediction"][:200]
    return {"score": grid["mean"], "grid": grid, "records": records}


def _run_probes(backend, tok: TaskTokenizer, recipe, job: _Job, progress: bool) -> dict:
    from . import get_task
    from .results import distance_buckets

    task = get_task(job.task)
    samples = _samples(task, tok, job)
    records = []
    for i, s in enumerate(samples):
        argmax = backend.next_argmax([tok.eod, *s.ids])
        records += task.score_probes(s, argmax[1:])  # position t of s.ids is t + 1 here
        if progress and (i + 1 == len(samples) or (i + 1) % 8 == 0):
            _say(progress, f"  {job.task}: {i + 1}/{len(samples)} samples")
    edges = getattr(task, "distance_edges", None)  # a task may bucket by its own edges
    buckets = distance_buckets(records, edges(job.settings["lengths"]) if edges else None)
    score = 100.0 * sum(r["score"] for r in records) / len(records) if records else None
    return {"score": score, "buckets": buckets,
            "token_accuracy": (100.0 * sum(r["token_accuracy"] for r in records) / len(records)
                               if records else None)}


# --- perplexity by position ------------------------------------------------------------------------

def _ppl_data_name(recipe) -> str:
    src = recipe.data.source
    if isinstance(src, str):
        return f"{src}:valid"
    return f"{src[0]}:valid@{recipe.data.split}"


def validation_tokens(recipe, tok: TaskTokenizer) -> List[int]:
    """The run's validation text as one token stream (documents end with end-of-document): the
    valid split's documents of its first indexed dataset (by data.split, in document order, as
    megatron splits by document), or the embedded corpus' valid plays tokenized."""
    src = recipe.data.source
    if isinstance(src, str):
        from ..data.embedded import embedded_corpus

        out: List[int] = []
        for doc in embedded_corpus("valid"):
            out += tok.tokenize(doc) + [tok.eod]
        return out
    from ..data.indexed import read_documents

    docs = read_documents(src[0])
    parts = [float(x) for x in recipe.data.split.split(",")]
    total = sum(parts)
    a = int(round(len(docs) * parts[0] / total))
    b = int(round(len(docs) * (parts[0] + parts[1]) / total))
    out = []
    for d in docs[a:b]:
        out += [int(t) for t in d]
    return out


def _run_ppl(backend, tok: TaskTokenizer, recipe, job: _Job, progress: bool) -> dict:
    import torch

    s = job.settings
    length, edges = s["length"], s["buckets"]
    stream = validation_tokens(recipe, tok)
    count = min(s["sequences"], len(stream) // length)
    if count == 0:
        raise EvalError(f"{PPL_TASK}: the validation text ({s['data']}) has {len(stream):,} tokens, fewer "
                        f"than one sequence of {length:,} (eval.ppl_length_factor x train.seq_length)")
    sums = [0.0] * (len(edges) - 1)
    counts = [0] * (len(edges) - 1)
    for i in range(count):
        seq = stream[i * length:(i + 1) * length]
        # position p of seq is predicted by the logits at p (after the eod)
        loss = backend.token_losses([tok.eod, *seq], seq)
        pos = torch.arange(len(seq))
        for k in range(len(edges) - 1):
            sel = (pos >= edges[k]) & (pos < edges[k + 1])
            if sel.any():
                sums[k] += float(loss[sel].sum())
                counts[k] += int(sel.sum())
        _say(progress, f"  {PPL_TASK}: {i + 1}/{count} sequences of {length:,} tokens")
    buckets = [{"start": edges[k], "end": edges[k + 1],
                "loss": sums[k] / counts[k] if counts[k] else None, "tokens": counts[k]}
               for k in range(len(edges) - 1)]
    return {"score": None, "ppl": {"train_length": recipe.train.seq_length, "length": length,
                                   "sequences": count, "buckets": buckets}}


__all__ = ["EvalError", "TaskTokenizer", "bad_input_errors", "evaluate_run", "pending_evaluations", "ppl_edges",
           "settings_hash", "validation_tokens"]
