"""Haystacks sized to the token and items placed at depths: the layout machinery shared by
NIAH and the recall tasks.

A haystack is `count` atoms (the grain of length fitting) grouped into units (the places items
may go between): noise sentences in lines of five, essay words in sentences, corpus words in
their lines. `units(count)` gives the unit texts and their token costs (each measured with the
separator before it), `atoms_for(tokens)` an estimate of the atoms that fill `tokens`, and
`tolerance` the most one atom can cost (+ slack): the length fit misses its target by less.

`render(head, tail, units, costs, items, sep)` joins the units with the items (dicts with
"text", "cost", "depth_target" in percent) at the unit boundaries nearest to their depths,
measured in estimated tokens of the context, and marks where everything went.
"""

from __future__ import annotations

import bisect
import functools
import random
import re
from typing import Sequence

from .tasks import Layout
from .text import NOISE, NOISE_SENTENCES, TokenCosts, source_lines, source_words, unit_costs


def render(head: str, tail: str, units: Sequence[str], costs: Sequence[int],
           items: Sequence[dict], sep: str, pin: int | None = None) -> Layout:
    """head + context + tail; the context is `units` and `items` joined by `sep`, each item at
    the unit boundary whose estimated token offset is nearest to `depth_target` percent of the
    context (0: first, 100: last). Items keep their depth order; equal depths keep list order.
    Item `pin` (the one whose depth is measured) is placed last, at the insertion point nearest
    its depth among all unit and item boundaries, so no other item pushes it away.
    Marks: "context" (one span), "item<i>" (per item), and "pin_bound": [tokens], half the
    larger gap between the pinned item's position and its neighbouring insertion points (the
    grain of its depth; the text between them is one unit or one item)."""
    cum = [0]
    for c in costs:
        cum.append(cum[-1] + c)
    total = cum[-1] + sum(it["cost"] for it in items)
    order = sorted((i for i in range(len(items)) if i != pin),
                   key=lambda i: (items[i]["depth_target"], i))
    slots: dict[int, list[int]] = {}
    before = 0  # tokens of the items placed so far (all earlier in the text)
    last = 0
    for i in order:
        want = items[i]["depth_target"] / 100 * (total - items[i]["cost"]) - before
        k = bisect.bisect_left(cum, want)
        if k > 0 and (k == len(cum) or want - cum[k - 1] <= cum[k] - want):
            k -= 1
        k = max(k, last)
        slots.setdefault(k, []).append(i)
        before += items[i]["cost"]
        last = k
    bound = 0
    if pin is not None:
        want = items[pin]["depth_target"] / 100 * (total - items[pin]["cost"])
        cands = []  # (token position, slot, index within the slot)
        run = 0
        for k in range(len(units) + 1):
            in_slot = slots.get(k, [])
            for j in range(len(in_slot) + 1):
                cands.append((run, k, j))
                if j < len(in_slot):
                    run += items[in_slot[j]]["cost"]
            if k < len(units):
                run += costs[k]
        best = min(range(len(cands)), key=lambda c: (abs(cands[c][0] - want), c))
        _, k, j = cands[best]
        slots.setdefault(k, []).insert(j, pin)
        here = cands[best][0]
        gaps = [here - cands[best - 1][0] if best > 0 else 0,
                cands[best + 1][0] - here if best + 1 < len(cands) else 0]
        bound = (max(gaps) + 1) // 2
    layout = Layout()
    layout.add(head)
    start = layout.pos
    first = True
    for k in range(len(units) + 1):
        for i in slots.get(k, ()):
            if not first:
                layout.add(sep)
            layout.add(items[i]["text"], mark=f"item{i}")
            first = False
        if k < len(units):
            if not first:
                layout.add(sep)
            layout.add(units[k])
            first = False
    layout.marks["context"] = [(start, layout.pos)]
    layout.add(tail)
    layout.marks["pin_bound"] = [(bound, bound)]
    return layout


class Haystack:
    tolerance: int
    sep: str = "\n"

    def units(self, count: int) -> tuple[list[str], list[int]]:
        raise NotImplementedError

    def atoms_for(self, tokens: int) -> int:
        raise NotImplementedError

    def max_atoms(self, tokens: int) -> int:
        return tokens + 2  # every atom costs at least one token


class NoiseHaystack(Haystack):
    """RULER's noise: the five sentences, one block per line; the last line may stop after any
    sentence."""

    def __init__(self, tokenizer):
        per = len(NOISE_SENTENCES)
        self.partial = [" ".join(NOISE_SENTENCES[:m]) for m in range(per + 1)]
        self.partial_cost = [len(tokenizer.tokenize("\n" + p)) for p in self.partial]
        self.per = per
        self.tolerance = max(unit_costs(tokenizer, NOISE_SENTENCES, " ", cache_key="noise")
                             .costs) + 2

    def units(self, count):
        full, rest = divmod(count, self.per)
        units = [NOISE] * full + ([self.partial[rest]] if rest else [])
        costs = [self.partial_cost[self.per]] * full + ([self.partial_cost[rest]] if rest else [])
        return units, costs

    def atoms_for(self, tokens):
        full, rest = divmod(max(0, tokens), self.partial_cost[self.per])
        return full * self.per + max(0, bisect.bisect_right(self.partial_cost, rest) - 1)


@functools.lru_cache(maxsize=8)
def _sentence_ends(source: str) -> tuple[bool, ...]:
    """For each word of an essay source: does a sentence end with it?"""
    end = re.compile(r"[.!?][\"')\]]?$")
    return tuple(bool(end.search(w)) for w in source_words(source))


class EssayHaystack(Haystack):
    """RULER's essay haystack: the source with whitespace collapsed, from a sentence start drawn
    by `rng`, wrapping around; units are sentences, joined by spaces."""

    sep = " "

    def __init__(self, tokenizer, source: str, rng: random.Random):
        self.words = source_words(source)
        self.ends = _sentence_ends(source)
        self.costs: TokenCosts = unit_costs(tokenizer, self.words, " ",
                                            cache_key=("essay", source))
        starts = [0] + [i + 1 for i, e in enumerate(self.ends[:-1]) if e]
        self.start = rng.choice(starts)
        self.tolerance = self.costs.max + 2

    def units(self, count):
        n = len(self.words)
        units, costs = [], []
        cur: list[str] = []
        cost = 0
        for j in range(count):
            i = (self.start + j) % n
            cur.append(self.words[i])
            cost += self.costs.at(i)
            if self.ends[i] or j == count - 1:
                units.append(" ".join(cur))
                costs.append(cost)
                cur, cost = [], 0
        return units, costs

    def atoms_for(self, tokens):
        if tokens <= 0:
            return 0
        lo, hi = 0, max(1, tokens)  # prefix costs grow by >= 1 per word
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.costs.prefix(self.start, mid) <= tokens:
                lo = mid
            else:
                hi = mid - 1
        return lo


@functools.lru_cache(maxsize=8)
def _line_word_counts(source: str) -> tuple[int, ...]:
    return tuple(len(line.split(" ")) for line in source_lines(source))


class LineHaystack(Haystack):
    """Lines of a text source (blank lines dropped), from a line drawn by `rng`, wrapping around;
    atoms are words, so the last line may stop after any word. Units are lines, joined by
    newlines: the filler of the recall tasks, with the line structure of the training text."""

    def __init__(self, tokenizer, source: str, rng: random.Random):
        self.tokenizer = tokenizer
        self.lines = source_lines(source)
        self.words = _line_word_counts(source)
        self.costs = unit_costs(tokenizer, self.lines, "\n", cache_key=("lines", source))
        self.start = rng.randrange(len(self.lines))
        word_costs = unit_costs(tokenizer, source_words(source), " ",
                                cache_key=("essay", source))
        self.tolerance = word_costs.max + 3

    def _walk(self, count: int):
        """(line index, words taken) for the lines `count` atoms cover."""
        i, left = self.start, count
        while left > 0:
            j = i % len(self.lines)
            take = min(left, self.words[j])
            yield j, take
            left -= take
            i += 1

    def units(self, count):
        units, costs = [], []
        for j, take in self._walk(count):
            if take == self.words[j]:
                units.append(self.lines[j])
                costs.append(self.costs.at(j))
            else:
                part = " ".join(self.lines[j].split(" ")[:take])
                units.append(part)
                costs.append(len(self.tokenizer.tokenize("\n" + part)))
        return units, costs

    def atoms_for(self, tokens):
        total, atoms, i = 0, 0, self.start
        while True:
            j = i % len(self.lines)
            c = self.costs.at(j)
            if total + c > tokens:
                return atoms + int(self.words[j] * max(0, tokens - total) / c)
            total += c
            atoms += self.words[j]
            i += 1
