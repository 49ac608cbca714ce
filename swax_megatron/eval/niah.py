"""Needle in a haystack in RULER's format (NVIDIA/RULER, `niah` tasks), generated offline and
deterministically by seed, with the needle placed at a requested depth.

RULER's definitions (its synthetic.yaml and niah.py), all kept:
- needle: "One of the special magic {type_needle_v} for {key} is: {value}." with keys and values
  words ("adjective-noun"), 7-digit numbers or UUID4s;
- haystacks: "noise" (RULER's `repeat`: "The grass is green. ... There and back again." one
  block per line), "essay" (essays with whitespace collapsed, needles between sentences; RULER
  downloads Paul Graham's essays, here any local text: the embedded corpus' held-out plays by
  default), "needle" (one distractor needle per line, same format, other keys);
- variants: single_1 noise words->numbers; single_2 essay words->numbers; single_3 essay
  words->uuids; multikey_1 essay with 4 keys (one queried); multikey_2 needle haystack
  words->numbers; multikey_3 needle haystack uuids->uuids; multivalue essay, 4 values for the
  key; multiquery essay, 4 keys all queried;
- the template and the answer prefix (below), singular ("A special magic number is ...", "...
  text is") when one value is asked for; the prompt the model continues is the input followed by
  the answer prefix; 128 tokens are generated;
- scoring: string-match-all recall (the fraction of expected values found in the output).

Where this differs from RULER (to make a length x depth grid measurable, and offline):
- the queried needle (the first value of the first queried key) sits at the requested depth,
  measured in tokens of the context; RULER draws depths at random. The other needles (multikey,
  multivalue, multiquery) get distinct depths drawn from RULER's list of 40 depths;
- the haystack is sized to the token, not in RULER's steps of 500 words / 25 lines: the prompt
  has at most `length - gen_tokens` tokens and misses it by less than one haystack unit (a word
  for essays, a sentence for noise, a distractor line for the needle haystack; the bound is
  `metadata["tolerance"]`);
- an essay haystack starts at a sentence drawn by the seed and wraps around the source when it is
  too short; sentences are split by a punctuation rule instead of NLTK's punkt;
- word keys come from our own 200 x 200 adjective/noun lists (RULER: wonderwords').
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, replace

from .haystack import EssayHaystack, Haystack, NoiseHaystack, render
from .tasks import Sample, Task, char_to_token, fit_count
from .text import NEEDLE_KINDS, distinct_needles, random_needle

NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
TEMPLATE = ("Some special magic {type_needle_v} are hidden within the following text. Make sure "
            "to memorize it. I will quiz you about the {type_needle_v} afterwards.\n{context}\n"
            "What are all the special magic {type_needle_v} for {query} mentioned in the "
            "provided text?")
ANSWER_PREFIX = " The special magic {type_needle_v} for {query} mentioned in the provided text are"
TOKENS_TO_GENERATE = 128
# RULER's depths (percent): where its other needles go.
RULER_DEPTHS = tuple(int(round(x * 100 / 39)) for x in range(40))
HAYSTACKS = ("noise", "essay", "needle")
DEFAULT_ESSAY_SOURCE = "embedded:test"


@dataclass(frozen=True)
class NiahVariant:
    haystack: str
    type_needle_k: str
    type_needle_v: str
    num_needle_k: int = 1
    num_needle_v: int = 1
    num_needle_q: int = 1

    def validate(self) -> None:
        if self.haystack not in HAYSTACKS:
            raise ValueError(f"haystack must be one of {HAYSTACKS}, got {self.haystack!r}")
        for kind in (self.type_needle_k, self.type_needle_v):
            if kind not in NEEDLE_KINDS:
                raise ValueError(f"needle type must be one of {NEEDLE_KINDS}, got {kind!r}")
        for name in ("num_needle_k", "num_needle_v", "num_needle_q"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer")


VARIANTS: dict[str, NiahVariant] = {
    "single_1": NiahVariant("noise", "words", "numbers"),
    "single_2": NiahVariant("essay", "words", "numbers"),
    "single_3": NiahVariant("essay", "words", "uuids"),
    "multikey_1": NiahVariant("essay", "words", "numbers", num_needle_k=4),
    "multikey_2": NiahVariant("needle", "words", "numbers"),
    "multikey_3": NiahVariant("needle", "uuids", "uuids"),
    "multivalue": NiahVariant("essay", "words", "numbers", num_needle_v=4),
    "multiquery": NiahVariant("essay", "words", "numbers", num_needle_q=4),
}


def prompt_template(type_needle_v: str, num_answers: int) -> tuple[str, str, str]:
    """(template with {context} and {query}, answer prefix with {query}, the value type as the
    prompt names it), singular when one value is asked for, as RULER rewrites it."""
    template = TEMPLATE + ANSWER_PREFIX
    if num_answers == 1:
        for old, new in (("Some", "A"), ("are all", "is"), ("are", "is"), ("answers", "answer")):
            template = template.replace(old, new)
        type_needle_v = type_needle_v[:-1]
    template = template.replace("{type_needle_v}", type_needle_v)
    cut = template.rindex(" The special magic")
    return template[:cut], template[cut:], type_needle_v


def join_queries(queries: list[str]) -> str:
    return queries[0] if len(queries) == 1 else ", ".join(queries[:-1]) + ", and " + queries[-1]


class NiahTask(Task):
    """One RULER NIAH variant. Keyword overrides (haystack, type_needle_k, ...) change the
    variant's definition; the task name then says so (e.g. niah_single_1@haystack=essay).
    `essay_source`: "embedded:<split>" or a local text file, for essay haystacks."""

    def __init__(self, variant: str = "single_1", *, gen_tokens: int = TOKENS_TO_GENERATE,
                 essay_source: str = DEFAULT_ESSAY_SOURCE, **overrides):
        if variant not in VARIANTS:
            raise ValueError(f"unknown NIAH variant {variant!r}; expected one of "
                             f"{', '.join(VARIANTS)}")
        spec = replace(VARIANTS[variant], **overrides)
        spec.validate()
        if not isinstance(gen_tokens, int) or gen_tokens < 0:
            raise ValueError(f"gen_tokens must be a non-negative integer, got {gen_tokens!r}")
        self.variant = variant
        self.spec = spec
        self.gen_tokens = gen_tokens
        self.essay_source = essay_source
        self.name = f"niah_{variant}"
        if overrides:
            self.name += "@" + ",".join(f"{k}={v}" for k, v in sorted(overrides.items()))

    def config(self) -> dict:
        cfg = {"task": self.name, **asdict(self.spec), "gen_tokens": self.gen_tokens}
        if self.spec.haystack == "essay":
            cfg["essay_source"] = self.essay_source
        return cfg

    # Sampling ----------------------------------------------------------------------------------

    def _sample(self, tokenizer, length, depth, rng, meta, split) -> Sample:
        s = self.spec
        num_keys = max(s.num_needle_k, s.num_needle_q)
        keys = distinct_needles(s.type_needle_k, rng, num_keys)
        flat = distinct_needles(s.type_needle_v, rng, num_keys * s.num_needle_v, exclude=keys)
        values = [flat[k * s.num_needle_v:(k + 1) * s.num_needle_v] for k in range(num_keys)]
        queried = rng.sample(range(num_keys), s.num_needle_q)
        answers = [v for q in queried for v in values[q]]
        needles = [{"key": keys[k], "value": v, "queried": k in queried,
                    "text": NEEDLE.format(type_needle_v=s.type_needle_v, key=keys[k], value=v)}
                   for k in range(num_keys) for v in values[k]]
        target = next(i for i, n in enumerate(needles)
                      if n["key"] == keys[queried[0]] and n["value"] == values[queried[0]][0])
        target_depth = float(depth) if depth is not None else float(rng.choice(RULER_DEPTHS))
        others = rng.sample(RULER_DEPTHS, len(needles) - 1)
        for i, n in enumerate(needles):
            n["target"] = i == target
            n["depth_target"] = target_depth if i == target else float(others.pop())

        template, prefix, type_v = prompt_template(s.type_needle_v, len(answers))
        query = join_queries([keys[q] for q in queried])
        head, tail = template.split("{context}")
        head = head.format(query=query)
        tail = tail.format(query=query) + prefix.format(query=query)
        target_tokens = length - self.gen_tokens
        if target_tokens <= 0:
            raise ValueError(f"length {length} leaves no room for a prompt next to "
                             f"{self.gen_tokens} generated tokens")

        hay = _haystack(s, tokenizer, rng, keys + flat, self.essay_source)
        for n in needles:
            n["cost"] = len(tokenizer.tokenize(hay.sep + n["text"]))

        def layout_of(count: int):
            units, costs = hay.units(count)
            return render(head, tail, units, costs, needles, hay.sep, pin=target)

        fixed = len(tokenizer.tokenize(head + tail)) + sum(n["cost"] for n in needles)
        estimate = hay.atoms_for(target_tokens - fixed)
        try:
            count, _ = fit_count(lambda c: len(tokenizer.tokenize(layout_of(c).text)),
                                 target_tokens, estimate, lo=0, hi=hay.max_atoms(target_tokens))
        except ValueError as err:
            raise ValueError(f"{self.name}: length {length} is too short for the template, "
                             f"{len(needles)} needle(s) and {self.gen_tokens} generated tokens "
                             f"({err})") from None
        layout = layout_of(count)
        prompt = layout.text
        ids = tokenizer.tokenize(prompt)

        (c0, c1), = layout.marks["context"]
        ctx_start = char_to_token(tokenizer, ids, prompt, c0)
        ctx_end = char_to_token(tokenizer, ids, prompt, c1)
        placed = []
        for i, n in enumerate(needles):
            a, b = layout.marks[f"item{i}"][0]
            start = char_to_token(tokenizer, ids, prompt, a)
            end = char_to_token(tokenizer, ids, prompt, b)
            span = max(1, ctx_end - ctx_start - (end - start))
            placed.append({"key": n["key"], "value": n["value"], "queried": n["queried"],
                           "target": n["target"], "start": start, "end": end,
                           "depth_target": n["depth_target"],
                           "depth": 100.0 * (start - ctx_start) / span})
        tgt = placed[target]
        meta.update(
            variant=self.variant, haystack=s.haystack, prompt_tokens=len(ids),
            target_tokens=target_tokens, tolerance=hay.tolerance, haystack_units=count,
            context_start=ctx_start, context_end=ctx_end, needles=placed,
            depth=target_depth if depth is None else depth, depth_actual=tgt["depth"],
            # the needle sits between units (or other needles): half the larger neighbour,
            # plus slack for the estimate
            depth_bound_tokens=layout.marks["pin_bound"][0][0] + 4,
            distance=len(ids) - tgt["start"], query=query, type_needle_v=type_v,
            answer_prefix=prefix.format(query=query))
        return Sample(task=self.name, prompt=prompt, prompt_ids=tuple(ids),
                      answers=tuple(answers), gen_tokens=self.gen_tokens, metadata=meta)


def _haystack(spec: NiahVariant, tokenizer, rng: random.Random, needles: list[str],
              essay_source: str) -> Haystack:
    if spec.haystack == "noise":
        return NoiseHaystack(tokenizer)
    if spec.haystack == "essay":
        return EssayHaystack(tokenizer, essay_source, rng)
    return _NeedleHaystack(tokenizer, spec, random.Random(rng.getrandbits(64)), needles)


class _NeedleHaystack(Haystack):
    """RULER's needle haystack: distractor needles (other keys and values, same format), one per
    line, drawn as needed."""

    def __init__(self, tokenizer, spec: NiahVariant, rng: random.Random, exclude: list[str]):
        self.tokenizer = tokenizer
        self.spec = spec
        self.rng = rng
        self.exclude = set(exclude)
        self.lines: list[str] = []
        self.costs: list[int] = []

    @property
    def tolerance(self) -> int:
        # the fit stops one line short of overflowing; that line was drawn and measured
        return max(self.costs, default=0) + 2

    def _draw(self, kind: str) -> str:
        while True:
            x = random_needle(kind, self.rng)
            if x not in self.exclude:
                return x

    def _grow(self, count: int) -> None:
        new = [NEEDLE.format(type_needle_v=self.spec.type_needle_v,
                             key=self._draw(self.spec.type_needle_k),
                             value=self._draw(self.spec.type_needle_v))
               for _ in range(count - len(self.lines))]
        if new:
            self.lines.extend(new)
            batch = getattr(self.tokenizer, "tokenize_batch", None)
            texts = ["\n" + x for x in new]
            ids = batch(texts) if batch else [self.tokenizer.tokenize(t) for t in texts]
            self.costs.extend(len(x) for x in ids)

    def units(self, count):
        self._grow(count)
        return self.lines[:count], self.costs[:count]

    def atoms_for(self, tokens):
        total, n = 0, 0
        while True:
            self._grow(n + 1)
            if total + self.costs[n] > tokens:
                return n
            total += self.costs[n]
            n += 1

    def max_atoms(self, tokens):
        return math.ceil(tokens / 8) + 2  # a distractor line has well over 8 tokens


def niah_tasks(**overrides) -> dict[str, NiahTask]:
    """All eight RULER variants."""
    return {f"niah_{v}": NiahTask(v, **overrides) for v in VARIANTS}
