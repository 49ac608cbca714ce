"""The task interface shared by needle-in-a-haystack and the synthetic recall tasks.

A task turns (tokenizer, length in tokens, depth, seed, index) into a `Sample`, deterministically,
and scores what a model made of it, in two ways:

- generation (RULER's way): feed `sample.prompt_ids` (the prompt, which ends with the answer
  prefix), decode greedily up to `sample.gen_tokens` tokens, and call
  `task.score(sample, generated_text)` -> a fraction in [0, 1] (RULER's string-match-all);
- teacher forcing (cheap, one forward pass, used for the recall tasks and for probes during
  training): run the model on `sample.ids` (the full text, answers included), take
  `argmax_next = logits.argmax(-1)` (position t predicts token t+1), and call
  `task.score_probes(sample, argmax_next)` -> one record per probe: the probe is right when
  every answer token is predicted.

`task.record(sample, output)` gives the JSON-able record of one scored generation (length, depth,
distance, score, prediction); `swax_megatron.eval.results` aggregates records into the
length x depth grid, distance buckets and heatmaps.

Lengths: a generation prompt has `length - gen_tokens` tokens at most and at least that minus the
task's stated tolerance (`sample.metadata["tolerance"]`), so prompt plus generation fits the
evaluation window; the recall tasks' full teacher-forced text fits `length`. Positions in
metadata are token indices into `prompt_ids` (and `ids`, which starts with the same tokens).
No BOS is added: the harness prepends one if its model was trained with one.
"""

from __future__ import annotations

import abc
import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

from .text import TokenizerLike, rng_for

DEFAULT_DEPTHS = tuple(float(d) for d in range(0, 101, 10))  # percent of the context


@dataclass(frozen=True)
class Probe:
    """An answer inside `Sample.ids` for teacher-forced scoring: `ids[start:end]` are the answer
    tokens, `distance` is how many tokens back the information sits (`start` minus the first
    token of the planted value)."""

    start: int
    end: int
    answer: str
    distance: int


@dataclass(frozen=True)
class Sample:
    task: str
    prompt: str
    prompt_ids: tuple[int, ...]
    answers: tuple[str, ...]
    gen_tokens: int
    metadata: dict[str, Any]
    text: str | None = None          # full text with the answers (teacher forcing, training)
    ids: tuple[int, ...] | None = None
    probes: tuple[Probe, ...] = ()

    @property
    def length(self) -> int:
        return self.metadata["length"]

    @property
    def depth(self) -> float | None:
        return self.metadata.get("depth")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["prompt_ids"] = list(self.prompt_ids)
        d["answers"] = list(self.answers)
        d["ids"] = None if self.ids is None else list(self.ids)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Sample":
        return cls(task=d["task"], prompt=d["prompt"], prompt_ids=tuple(d["prompt_ids"]),
                   answers=tuple(d["answers"]), gen_tokens=d["gen_tokens"],
                   metadata=dict(d["metadata"]), text=d.get("text"),
                   ids=None if d.get("ids") is None else tuple(d["ids"]),
                   probes=tuple(Probe(**p) for p in d.get("probes", ())))


# Scoring (RULER's, scaled to [0, 1]; reports multiply by 100) ---------------------------------

_CONTROL = re.compile(r"[\x00-\x1f]")


def postprocess_prediction(text: str) -> str:
    """RULER's postprocessing: strip, control characters -> newline, strip."""
    return _CONTROL.sub("\n", text.strip()).strip()


def string_match_all(prediction: str, references: Sequence[str]) -> float:
    """RULER's NIAH metric for one sample: the fraction of references found (case-insensitive
    substring) in the prediction."""
    if not references:
        raise ValueError("no references to match")
    pred = postprocess_prediction(prediction).lower()
    return sum(r.lower() in pred for r in references) / len(references)


def string_match_part(prediction: str, references: Sequence[str]) -> float:
    """RULER's metric for its QA tasks: 1 if any reference is found, else 0."""
    if not references:
        raise ValueError("no references to match")
    pred = postprocess_prediction(prediction).lower()
    return float(any(r.lower() in pred for r in references))


METRICS: dict[str, Callable[[str, Sequence[str]], float]] = {
    "string_match_all": string_match_all, "string_match_part": string_match_part}


# Token positions and length fitting -----------------------------------------------------------

def char_to_token(tokenizer: TokenizerLike, ids: Sequence[int], text: str, char_pos: int) -> int:
    """Index of the token of `ids` (= tokenize(text)) that holds character `char_pos`: exact
    where a token boundary falls at `char_pos` (checked by tokenizing the prefix), otherwise the
    token that straddles it (bisection on detokenized prefixes)."""
    if char_pos <= 0:
        return 0
    if char_pos >= len(text):
        return len(ids)
    head = tokenizer.tokenize(text[:char_pos])
    if len(head) <= len(ids) and list(ids[:len(head)]) == head:
        return len(head)
    lo, hi = 0, len(ids)  # largest k with len(detokenize(ids[:k])) <= char_pos
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(tokenizer.detokenize(ids[:mid])) <= char_pos:
            lo = mid
        else:
            hi = mid - 1
    return lo


def fit_count(measure: Callable[[int], int], target: int, estimate: int, *, lo: int = 0,
              hi: int | None = None) -> tuple[int, int]:
    """The largest n in [lo, hi) with measure(n) <= target, for a measure that grows with n
    (a prompt's token count with n haystack units). Starts from `estimate`, moves by secant
    steps and bisects; returns (n, measure(n)). Raises ValueError when even `lo` does not fit."""
    known: dict[int, int] = {}

    def f(n: int) -> int:
        if n not in known:
            known[n] = measure(n)
        return known[n]

    if f(lo) > target:
        raise ValueError(f"even the smallest prompt has {f(lo)} tokens > {target}")
    best = lo
    top = hi if hi is not None else max(lo + 1, 2 * target + 2)  # exclusive; every unit >= 1 token
    n = min(max(estimate, lo), top - 1)
    while top - best > 1:
        if n <= best or n >= top:
            n = (best + top) // 2
        v = f(n)
        if v <= target:
            best = n
            slope = (v - f(lo)) / max(1, n - lo) or 1.0
            n = n + max(1, int((target - v) / slope))
        else:
            top = n
            slope = (v - f(best)) / max(1, n - best) or 1.0
            n = best + max(1, int((target - f(best)) / slope))
    return best, f(best)


# Tasks ---------------------------------------------------------------------------------------

class Task(abc.ABC):
    """A family of samples. Subclasses set `name`, `uses_depth`, `metric` and implement
    `_sample(tokenizer, length, depth, rng, meta)`."""

    name: str = "task"
    uses_depth: bool = True
    metric: str = "string_match_all"
    gen_tokens: int = 128

    def config(self) -> dict:
        """The settings that decide the samples (JSON-able): part of a result's identity."""
        return {"task": self.name}

    def sample(self, tokenizer: TokenizerLike, *, length: int, depth: float | None = None,
               seed: int = 0, index: int = 0, split: str = "eval") -> Sample:
        """Sample `index` of the stream (seed, length, depth, split). `depth` is a percentage of
        the context (0 = first, 100 = last); None draws one. split="train" gives a different
        stream (and, for corpus fillers, the training text) for training documents."""
        if isinstance(length, bool) or not isinstance(length, int) or length <= 0:
            raise ValueError(f"length must be a positive integer, got {length!r}")
        if depth is not None and not 0 <= depth <= 100:
            raise ValueError(f"depth must be within [0, 100] (percent), got {depth!r}")
        if not self.uses_depth and depth is not None:
            raise ValueError(f"task {self.name} places its items by distance; pass depth=None")
        rng = rng_for(self.config(), split, seed, length, depth, index)
        meta = {"task": self.name, "length": length, "depth": depth, "seed": seed,
                "index": index, "split": split}
        return self._sample(tokenizer, length, depth, rng, meta, split)

    @abc.abstractmethod
    def _sample(self, tokenizer, length, depth, rng, meta, split) -> Sample: ...

    def grid(self, tokenizer: TokenizerLike, *, lengths: Iterable[int],
             depths: Iterable[float | None] | None = None, num_samples: int = 1,
             seed: int = 0) -> Iterator[Sample]:
        """Samples over lengths x depths, `num_samples` each (depths default to 0, 10, ..., 100
        percent for tasks that use depth, and to [None] for the others)."""
        if depths is None:
            depths = DEFAULT_DEPTHS if self.uses_depth else (None,)
        depths = list(depths)
        for length in lengths:
            for depth in depths:
                for i in range(num_samples):
                    yield self.sample(tokenizer, length=length, depth=depth, seed=seed, index=i)

    def score(self, sample: Sample, output: str) -> float:
        """Score of one generated continuation of `sample.prompt`, in [0, 1]."""
        return METRICS[self.metric](output, sample.answers)

    def record(self, sample: Sample, output: str) -> dict:
        """JSON-able record of one scored generation (what results.accuracy_grid reads)."""
        m = sample.metadata
        return {"task": sample.task, "length": m["length"], "depth": m.get("depth"),
                "seed": m["seed"], "index": m["index"], "distance": m.get("distance"),
                "score": self.score(sample, output), "prediction": output,
                "answers": list(sample.answers)}

    def score_probes(self, sample: Sample, argmax_next: Sequence[int]) -> list[dict]:
        """Teacher-forced scoring: `argmax_next[t]` is the model's most likely token after
        `sample.ids[:t+1]`. One record per probe: score 1.0 when every answer token is
        predicted (else 0.0), token_accuracy (the fraction that is), distance, answer, length,
        depth, index, seed."""
        if sample.ids is None:
            raise ValueError(f"sample of {sample.task} has no teacher-forced ids")
        if len(argmax_next) < len(sample.ids) - 1:
            raise ValueError(f"argmax_next has {len(argmax_next)} positions, the sample needs "
                             f"{len(sample.ids) - 1}")
        out = []
        for p in sample.probes:
            hits = [int(argmax_next[j - 1]) == sample.ids[j] for j in range(p.start, p.end)]
            out.append({"task": sample.task, "length": sample.metadata["length"],
                        "depth": sample.metadata.get("depth"), "index": sample.metadata["index"],
                        "seed": sample.metadata["seed"], "distance": p.distance,
                        "answer": p.answer, "score": float(all(hits)),
                        "token_accuracy": sum(hits) / len(hits)})
        return out


def oracle_argmax(sample: Sample) -> list[int]:
    """The predictions of a model that is always right (for tests and sanity checks)."""
    return list(sample.ids[1:]) + [0]


@dataclass
class Layout:
    """A rendered text and where things are in it (characters), built piece by piece."""

    pieces: list[str] = field(default_factory=list)
    marks: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    _pos: int = 0

    def add(self, text: str, mark: str | None = None) -> None:
        if mark is not None:
            self.marks.setdefault(mark, []).append((self._pos, self._pos + len(text)))
        self.pieces.append(text)
        self._pos += len(text)

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def pos(self) -> int:
        return self._pos
