"""Synthetic recall tasks a tiny model trained on them can solve, and training documents made
from them (issue 14's CPU-scale reproduction).

- `PasskeyTask` (Mohtashami & Jaggi's passkey retrieval, their wording): an introduction, filler,
  "The pass key is 12345. Remember it. 12345 is the pass key." at the requested depth, more
  filler, "What is the pass key? The pass key is" and the answer.
- `MQARTask` (multi-query associative recall in text): key-value statements "The code for
  falcon is 4821." planted in filler and each queried once later, "What is the code for
  falcon? It is 4821.", with the plant-to-query distances spread evenly (stratified) over
  [min_distance, max_distance] tokens (default: as short as possible to the whole sample).

Both put their items on their own lines (a newline is always its own token, so positions are
exact) between filler lines: the embedded corpus ("corpus": the held-out test plays for
evaluation, the training plays for training documents), RULER's noise ("noise") or any local
text file. A sample's `text`/`ids` is the whole document, answers included, at most `length`
tokens and short of it by less than `metadata["tolerance"]`; its probes are the answers
(teacher-forced scoring, bucketed by `distance`: tokens from the planted value to the answer);
its `prompt` ends right before the last answer (generation scoring, exact match of the value).

`training_documents(task, tokenizer, count=..., length=...)` yields the texts of split="train"
samples: different random streams and filler from evaluation, documents of at most `length`
tokens (the data pipeline appends the end-of-document token), ready to blend with plain text.
"""

from __future__ import annotations

import json
import os
import random
from typing import Iterable, Iterator

from ..files import atomic_write
from .haystack import Haystack, LineHaystack, NoiseHaystack, render
from .tasks import Probe, Sample, Task, char_to_token, fit_count
from .text import NOUNS, TokenizerLike, random_number, random_word

PASSKEY_INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and "
                 "memorize them. I will quiz you about the important information there.")
PASSKEY_NEEDLE = "The pass key is {passkey}. Remember it. {passkey} is the pass key."
PASSKEY_QUERY = "What is the pass key? The pass key is"
MQAR_PLANT = "The code for {key} is {value}."
MQAR_QUERY = "What is the code for {key}? It is {value}."
FILLERS = ("corpus", "noise")
KEY_KINDS = ("noun", "words", "number")


def filler_source(filler: str, split: str) -> str | None:
    """The haystack source of a filler setting: None for noise."""
    if filler == "noise":
        return None
    if filler == "corpus":
        return "embedded:train" if split == "train" else "embedded:test"
    return filler


def _filler(tokenizer, filler: str, split: str, rng: random.Random) -> Haystack:
    source = filler_source(filler, split)
    if source is None:
        return NoiseHaystack(tokenizer)
    return LineHaystack(tokenizer, source, rng)


def _check_filler(filler: str) -> None:
    if filler not in FILLERS and not os.path.isfile(filler):
        raise ValueError(f"filler must be one of {FILLERS} or a text file, got {filler!r}")


class _RecallTask(Task):
    metric = "string_match_all"

    def _fit(self, tokenizer, length, hay: Haystack, head: str, tail: str, items: list[dict],
             pin: int | None = None):
        for it in items:
            it["cost"] = len(tokenizer.tokenize("\n" + it["text"]))

        def layout_of(count):
            units, costs = hay.units(count)
            return render(head, tail, units, costs, items, "\n", pin=pin)

        fixed = len(tokenizer.tokenize(head + tail)) + sum(it["cost"] for it in items)
        try:
            count, _ = fit_count(lambda c: len(tokenizer.tokenize(layout_of(c).text)), length,
                                 hay.atoms_for(length - fixed), lo=0, hi=hay.max_atoms(length))
        except ValueError as err:
            raise ValueError(f"{self.name}: length {length} is too short for "
                             f"{len(items)} item(s) ({err})") from None
        layout = layout_of(count)
        return layout, count

    @staticmethod
    def _value_span(tokenizer, ids, text, span, value: str) -> tuple[int, int]:
        a, b = span
        at = text.index(value, a, b)
        return (char_to_token(tokenizer, ids, text, at),
                char_to_token(tokenizer, ids, text, at + len(value)))


class PasskeyTask(_RecallTask):
    """Passkey retrieval: one `digits`-digit key at `depth` percent of the filler."""

    name = "passkey"

    def __init__(self, *, digits: int = 5, filler: str = "noise", gen_tokens: int | None = None):
        if not isinstance(digits, int) or not 1 <= digits <= 30:
            raise ValueError(f"digits must be an integer in [1, 30], got {digits!r}")
        _check_filler(filler)
        self.digits = digits
        self.filler = filler
        self.gen_tokens = digits + 4 if gen_tokens is None else gen_tokens

    def config(self) -> dict:
        return {"task": self.name, "digits": self.digits, "filler": self.filler}

    def _sample(self, tokenizer, length, depth, rng, meta, split) -> Sample:
        passkey = random_number(rng, self.digits)
        depth_target = float(depth) if depth is not None else rng.uniform(0, 100)
        hay = _filler(tokenizer, self.filler, split, rng)
        items = [{"text": PASSKEY_NEEDLE.format(passkey=passkey), "depth_target": depth_target}]
        answer = f" {passkey}."
        layout, count = self._fit(tokenizer, length, hay, PASSKEY_INTRO + "\n",
                                  "\n" + PASSKEY_QUERY + answer, items, pin=0)
        text = layout.text
        ids = tokenizer.tokenize(text)
        (c0, c1), = layout.marks["context"]
        ctx0, ctx1 = (char_to_token(tokenizer, ids, text, c) for c in (c0, c1))
        needle = layout.marks["item0"][0]
        n0, n1 = (char_to_token(tokenizer, ids, text, c) for c in needle)
        v0, _ = self._value_span(tokenizer, ids, text, needle, passkey)
        q0, q1 = self._value_span(tokenizer, ids, text, (len(text) - len(answer), len(text)),
                                  passkey)
        prompt = text[:len(text) - len(answer)]
        span = max(1, ctx1 - ctx0 - (n1 - n0))
        meta.update(filler=self.filler, passkey=passkey, text_tokens=len(ids),
                    target_tokens=length, tolerance=hay.tolerance, haystack_units=count,
                    context_start=ctx0, context_end=ctx1, needle_start=n0, needle_end=n1,
                    depth=depth_target, depth_actual=100.0 * (n0 - ctx0) / span,
                    depth_bound_tokens=layout.marks["pin_bound"][0][0] + 4,
                    distance=q0 - v0)
        return Sample(task=self.name, prompt=prompt, prompt_ids=tuple(tokenizer.tokenize(prompt)),
                      answers=(passkey,), gen_tokens=self.gen_tokens, metadata=meta, text=text,
                      ids=tuple(ids), probes=(Probe(q0, q1, passkey, q0 - v0),))


class MQARTask(_RecallTask):
    """Multi-query associative recall: `num_pairs` key-value statements, each queried once later,
    the distances (planted value -> queried value, in tokens) stratified over
    [min_distance, max_distance]."""

    name = "mqar"
    uses_depth = False

    def __init__(self, *, num_pairs: int = 8, value_digits: int = 4, key_kind: str = "noun",
                 filler: str = "corpus", min_distance: int = 0, max_distance: int | None = None,
                 gen_tokens: int | None = None):
        if not isinstance(num_pairs, int) or not 1 <= num_pairs <= len(NOUNS):
            raise ValueError(f"num_pairs must be an integer in [1, {len(NOUNS)}]")
        if not isinstance(value_digits, int) or not 1 <= value_digits <= 30:
            raise ValueError(f"value_digits must be an integer in [1, 30], got {value_digits!r}")
        if key_kind not in KEY_KINDS:
            raise ValueError(f"key_kind must be one of {KEY_KINDS}, got {key_kind!r}")
        if min_distance < 0 or (max_distance is not None and max_distance < min_distance):
            raise ValueError("need 0 <= min_distance <= max_distance")
        _check_filler(filler)
        self.num_pairs = num_pairs
        self.value_digits = value_digits
        self.key_kind = key_kind
        self.filler = filler
        self.min_distance = min_distance
        self.max_distance = max_distance
        self.gen_tokens = value_digits + 4 if gen_tokens is None else gen_tokens

    def config(self) -> dict:
        return {"task": self.name, "num_pairs": self.num_pairs, "value_digits": self.value_digits,
                "key_kind": self.key_kind, "filler": self.filler,
                "min_distance": self.min_distance, "max_distance": self.max_distance}

    def _keys(self, rng: random.Random) -> list[str]:
        if self.key_kind == "noun":
            return rng.sample(NOUNS, self.num_pairs)
        draw = random_word if self.key_kind == "words" else (lambda r: random_number(r, 4))
        keys: list[str] = []
        while len(keys) < self.num_pairs:
            k = draw(rng)
            if k not in keys:
                keys.append(k)
        return keys

    def _geometry(self, tokenizer, key: str) -> dict:
        """Token costs of a pair's two lines (with their newline) and of what precedes the value
        in each: the distance from the planted to the queried value is
        query_start - plant_start + query_offset - plant_offset."""
        value = "0" * self.value_digits
        g = {}
        for kind, template in (("plant", MQAR_PLANT), ("query", MQAR_QUERY)):
            line = template.format(key=key, value=value)
            g[kind] = len(tokenizer.tokenize("\n" + line))
            g[kind + "_offset"] = len(tokenizer.tokenize("\n" + line[:line.index(value)]))
        return g

    def distance_range(self, tokenizer, length: int, key: str = "falcon") -> tuple[int, int]:
        """The [lo, hi] token distances (planted value -> queried value) that a sample of
        `length` tokens spreads its queries over: from the query right after its plant to the
        plant first and the query last, narrowed by min_distance/max_distance."""
        g = self._geometry(tokenizer, key)
        shift = g["query_offset"] - g["plant_offset"]
        lo, hi = g["plant"] + shift, length - g["query"] + shift
        if self.max_distance is not None:
            hi = min(hi, self.max_distance)
        lo = min(max(lo, self.min_distance), hi)
        return lo, hi

    def _sample(self, tokenizer, length, depth, rng, meta, split) -> Sample:
        keys = self._keys(rng)
        values = [random_number(rng, self.value_digits) for _ in keys]
        lo, hi = self.distance_range(tokenizer, length, keys[0])
        n = self.num_pairs
        strata = [lo + (i + rng.random()) * (hi - lo) / n for i in range(n)]
        rng.shuffle(strata)
        hay = _filler(tokenizer, self.filler, split, rng)
        items = []
        for key, value, dist in zip(keys, values, strata):
            g = self._geometry(tokenizer, key)
            shift = g["query_offset"] - g["plant_offset"]
            # token starts of the two lines: plant at p, query at p + dist - shift
            p = rng.uniform(0, max(0.0, length - g["query"] - dist + shift))
            q = min(max(p + dist - shift, p), length - g["query"])
            items.append({"text": MQAR_PLANT.format(key=key, value=value), "key": key,
                          "value": value, "kind": "plant",
                          "depth_target": min(100.0, 100.0 * p / max(1, length - g["plant"]))})
            items.append({"text": MQAR_QUERY.format(key=key, value=value), "key": key,
                          "value": value, "kind": "query",
                          "depth_target": min(100.0, 100.0 * q / max(1, length - g["query"]))})
        layout, count = self._fit(tokenizer, length, hay, "", "", items)
        text = layout.text
        ids = tokenizer.tokenize(text)
        pairs, probes = [], []
        for i in range(0, len(items), 2):
            plant_span = layout.marks[f"item{i}"][0]
            query_span = layout.marks[f"item{i + 1}"][0]
            key, value = items[i]["key"], items[i]["value"]
            v0, _ = self._value_span(tokenizer, ids, text, plant_span, value)
            # the queried value follows "? It is "
            q_at = query_span[0] + len(MQAR_QUERY.split("{value}")[0].format(key=key))
            q0, q1 = self._value_span(tokenizer, ids, text, (q_at, query_span[1]), value)
            pairs.append({"key": key, "value": value, "plant_start": v0, "query_start": q0,
                          "distance": q0 - v0, "distance_target": round(strata[i // 2], 2),
                          "query_char": q_at})
            probes.append(Probe(q0, q1, value, q0 - v0))
        last = max(pairs, key=lambda p: p["query_start"])
        prompt = text[:last["query_char"] - 1]  # up to "It is", before the space
        for p in pairs:
            del p["query_char"]
        meta.update(filler=self.filler, pairs=sorted(pairs, key=lambda p: p["query_start"]),
                    text_tokens=len(ids), target_tokens=length, tolerance=hay.tolerance,
                    haystack_units=count, distance_range=[lo, hi], distance=last["distance"])
        return Sample(task=self.name, prompt=prompt, prompt_ids=tuple(tokenizer.tokenize(prompt)),
                      answers=(last["value"],), gen_tokens=self.gen_tokens, metadata=meta,
                      text=text, ids=tuple(ids),
                      probes=tuple(sorted(probes, key=lambda p: p.start)))


class SynthRecallTask(Task):
    """The token-level recall documents the reproduction trains on (swax_megatron.data.
    recall_data: `synth_mqar` key-value pairs, `synth_passkey` a passkey, in an order-2 Markov
    haystack on reserved token ids), as held-out evaluation instances: the same generator,
    another random stream (this task's split "eval" vs the training documents' own). Teacher
    forced only (the answers are reserved ids, not text): `ids` is the document, each probe an
    answer with its distance; `length` counts the end-of-document token the harness puts first."""

    uses_depth = False
    metric = "string_match_all"

    def __init__(self, kind: str):
        from ..data.recall_data import KINDS

        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.kind = kind
        self.name = f"synth_{kind}"
        self.gen_tokens = 4

    def config(self) -> dict:
        from ..data.recall_data import FORMAT

        return {"task": self.name, "format": FORMAT}

    @staticmethod
    def distance_edges(lengths) -> list[int]:
        """Distance buckets for the report: 0, 16, 32, 64, ... doubling up to the longest
        length, so the short windows (16, 32, ...) and multiples of the training length are
        bucket edges."""
        top, edges = max(lengths), [0, 16]
        while edges[-1] < top:
            edges.append(edges[-1] * 2)
        return edges

    def _sample(self, tokenizer, length, depth, rng, meta, split) -> Sample:
        from ..data.recall_data import make_document, token_plan

        plan = token_plan(tokenizer)
        doc = make_document(self.kind, plan, length, rng)
        probes = tuple(Probe(a, b, " ".join(str(t) for t in doc.ids[a:b]), d)
                       for a, b, d in doc.probes)
        last = probes[-1]
        meta.update(text_tokens=len(doc.ids), target_tokens=length, tolerance=1,
                    distance=last.distance, probes=len(probes))
        return Sample(task=self.name, prompt="", prompt_ids=doc.ids[:last.start],
                      answers=(last.answer,), gen_tokens=last.end - last.start, metadata=meta,
                      text=None, ids=doc.ids, probes=probes)


def training_documents(task: Task, tokenizer: TokenizerLike, *, count: int, length: int,
                       seed: int = 0, start: int = 0) -> Iterator[str]:
    """Texts of `count` training samples (split="train", indices start..start+count-1), each
    at most `length` tokens. Depths (passkey) are drawn uniformly; distances (MQAR) are
    stratified over the length."""
    for i in range(start, start + count):
        yield task.sample(tokenizer, length=length, seed=seed, index=i, split="train").text


def write_jsonl(path: str | os.PathLike, documents: Iterable[str], key: str = "text") -> int:
    """Write documents as JSON lines ({key: text}), atomically; the data pipeline's
    preprocess reads them. Returns the number written."""
    lines = [json.dumps({key: doc}, ensure_ascii=False) for doc in documents]
    atomic_write(path, "".join(line + "\n" for line in lines))
    return len(lines)
