"""Text material of the evaluation tasks: needle keys and values (words, 7-digit numbers, UUIDs),
haystack sources (RULER's noise sentences, essay-like text from the embedded corpus or any local
file, corpus lines) and their token costs, and the deterministic random streams every task draws
from.

Everything here is a pure function of its arguments (and of the tokenizer for token counts):
no global random state is read or written.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

# RULER's "repeat" haystack ("noise" in the RULER paper): this block, repeated, one per line.
NOISE = ("The grass is green. The sky is blue. The sun is yellow. Here we go. "
         "There and back again.")
NOISE_SENTENCES = tuple(s for s in re.split(r"(?<=\.)\s+", NOISE) if s)

# Word needles are "adjective-noun" pairs (RULER draws them from wonderwords' lists; these are
# our own lists of common English words, so the key space is ours: 200 x 200 = 40,000 keys).
ADJECTIVES = tuple("""
able absent acid agile alert amber ancient angry arctic ashen awake bald barren bitter black
bland blank bleak blind blond blue bold bony brave brief bright brisk broad broken bronze brown
busy calm candid casual cheap cheerful chilly civil clean clear clever cloudy clumsy coarse cold
cosmic crimson crisp cruel curious curly cyan damp dark dear deep dense dim direct dizzy dry dull
dusty eager early earthy easy elder empty equal even exact faint fair false famous fancy far fast
fatal fierce fine firm flat fluffy fond foggy frail free fresh frosty frozen full funny fuzzy
gentle giant glad global golden good grand gray great green grim gusty happy hardy harsh hasty
heavy hidden high hollow honest huge humble hungry icy idle inner ivory jolly juicy keen kind lame
large late lazy lean light little lively lone long loose loud lucky lunar mad magic major meek
mellow mild minor misty modern moist muddy mute narrow native neat nervous new nimble noble noisy
odd old olive orange outer pale patient plain polite poor proud purple quick quiet rapid rare raw
ready real red rich rigid ripe rough round royal rude rural rusty sacred sad safe salty sandy
scarlet secret sharp shiny short shy silent silver simple sleepy slim slow small smooth soft
solar solid sour spare spicy stale steady steep stern stiff still stormy strange strict strong
sunny super sweet swift tall tame tender thick thin tidy tiny tired tough true ugly upper urban
vague vast violet vivid warm weak wet white wide wild windy wise witty young zany
""".split())
NOUNS = tuple("""
acorn actor anchor angle ant apple apron arch arrow atlas attic badge bagel ball banana band
barn basin basket beach beacon bean bear bee beetle bell bench berry bird blade blanket boat bolt
bone book boot bottle boulder bowl box branch bread brick bridge brook broom bucket bull bus
butter button cabin cable cactus cake camel camera canal candle canoe canyon cape carpet cart
castle cat cave cedar chair chalk cheese cherry chest circle clock cloud clover coat coin comet
copper coral cotton cow crab crane crater crow crown cup daisy desert desk diamond dog dolphin
donkey door dragon drum duck eagle earth engine falcon feather fence fern field finch flame flute
forest fork fossil fox frog garden gate gem ghost glacier glove goat grape harbor hat hawk heron
hill honey horse hut island jacket jar jewel kettle key kite knight ladder lake lamp lantern leaf
lemon lily lion lizard lobster lock mango maple marble meadow melon mirror moon moth mountain
mouse nest needle oak ocean olive onion orchid otter owl oyster paddle palace panda parrot peach
pearl pebble pencil pepper piano pigeon pillow pine planet plum pond pony puppy quartz rabbit
raven reef ribbon river robin rocket rose ruby saddle sail salmon sand saucer scarf shell ship
shovel silk skull sled snail spider spoon squid star stone storm stove sugar swan sword table
temple tiger timber toad tomato torch tower train tree trumpet tulip turtle umbrella valley
violin wagon walrus wand whale wheat willow window wolf wren yak zebra
""".split())
WORDS_PER_KEY = 2
NUMBER_DIGITS = 7


def _check_word_lists() -> None:
    for name, words in (("ADJECTIVES", ADJECTIVES), ("NOUNS", NOUNS)):
        bad = [w for w in words if not re.fullmatch(r"[a-z]+", w)]
        dup = len(words) - len(set(words))
        if bad or dup:  # a programming error, caught at import
            raise AssertionError(f"{name}: malformed {bad}, {dup} duplicates")


_check_word_lists()


@runtime_checkable
class TokenizerLike(Protocol):
    """What the tasks need of a tokenizer: swax_megatron.data.SentencePieceTokenizer (the run's)
    or anything with the same two methods. `tokenize` must not add BOS/EOS."""

    def tokenize(self, text: str) -> list[int]: ...

    def detokenize(self, ids) -> str: ...


# Random streams -------------------------------------------------------------------------------

def rng_for(*parts) -> random.Random:
    """A random.Random seeded by a hash of `parts` (JSON-encoded): the same parts give the same
    stream in every process and Python version (no `hash()` randomization)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return random.Random(int.from_bytes(hashlib.sha256(blob).digest()[:16], "big"))


def random_word(rng: random.Random) -> str:
    """RULER's word needle: "adjective-noun"."""
    return f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"


def random_number(rng: random.Random, digits: int = NUMBER_DIGITS) -> str:
    """A `digits`-digit decimal number without a leading zero (RULER: 7 digits)."""
    return str(rng.randint(10 ** (digits - 1), 10 ** digits - 1))


def random_uuid(rng: random.Random) -> str:
    """A UUID4 string drawn from `rng` (RULER: uuid.UUID(int=getrandbits(128), version=4))."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


NEEDLE_KINDS = ("words", "numbers", "uuids")


def random_needle(kind: str, rng: random.Random) -> str:
    if kind == "words":
        return random_word(rng)
    if kind == "numbers":
        return random_number(rng)
    if kind == "uuids":
        return random_uuid(rng)
    raise ValueError(f"unknown needle kind {kind!r}; expected one of {', '.join(NEEDLE_KINDS)}")


def distinct_needles(kind: str, rng: random.Random, count: int,
                     exclude: Sequence[str] = ()) -> list[str]:
    """`count` different values of `kind`, none in `exclude`."""
    seen = set(exclude)
    out: list[str] = []
    for _ in range(100 * count + 100):
        if len(out) == count:
            break
        value = random_needle(kind, rng)
        if value not in seen:
            seen.add(value)
            out.append(value)
    if len(out) < count:
        raise ValueError(f"cannot draw {count} distinct {kind} needles")
    return out


WORD_RE = re.compile(r"^[a-z]+-[a-z]+$")
NUMBER_RE = re.compile(r"^[1-9][0-9]{6}$")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def is_well_formed(kind: str, value: str) -> bool:
    pattern = {"words": WORD_RE, "numbers": NUMBER_RE, "uuids": UUID_RE}[kind]
    return bool(pattern.match(value))


# Haystack sources -----------------------------------------------------------------------------

EMBEDDED_PREFIX = "embedded:"


@functools.lru_cache(maxsize=8)
def source_text(source: str) -> str:
    """The text of a haystack source: "embedded:<split>" (the embedded corpus' plays of that
    split, "embedded:test" by default for evaluation, "embedded:train" for training documents)
    or a path to a local UTF-8 text file."""
    if source.startswith(EMBEDDED_PREFIX):
        from ..data import embedded

        return "\n\n".join(embedded.embedded_corpus(source[len(EMBEDDED_PREFIX):]))
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"haystack text file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"haystack text file {path} unreadable: {err}") from None
    return text.replace("\r\n", "\n")


@functools.lru_cache(maxsize=8)
def source_words(source: str) -> tuple[str, ...]:
    """RULER's essay haystack: the text with every run of whitespace collapsed to one space,
    split into words."""
    words = tuple(re.sub(r"\s+", " ", source_text(source)).strip().split(" "))
    if not words or words == ("",):
        raise ValueError(f"haystack source {source!r} has no words")
    return words


@functools.lru_cache(maxsize=8)
def source_lines(source: str) -> tuple[str, ...]:
    """The source's non-empty lines (trailing whitespace removed): filler for the recall tasks,
    keeping the line structure a model trained on the corpus has seen."""
    lines = tuple(line.rstrip() for line in source_text(source).split("\n") if line.strip())
    if not lines:
        raise ValueError(f"haystack source {source!r} has no lines")
    return lines


def split_sentences(text: str) -> list[str]:
    """Sentences: a break after ".", "!" or "?" (and closing quotes/brackets) followed by
    whitespace. RULER uses NLTK's punkt; this rule needs no download."""
    return [s for s in re.split(r"(?<=[.!?][\"')\]]?)\s+|(?<=[.!?])\s+", text) if s]


def tokenizer_key(tokenizer) -> object:
    return getattr(tokenizer, "fingerprint", None) or id(tokenizer)


@dataclass
class TokenCosts:
    """Token counts of a sequence of text units, each measured with the separator that precedes
    it in a rendering (" " for words, "\\n" for lines): the estimates length fitting starts
    from. Indices wrap around."""

    costs: list[int]

    def __post_init__(self):
        self._cum = [0]
        for c in self.costs:
            self._cum.append(self._cum[-1] + c)
        self.max = max(self.costs)

    def at(self, i: int) -> int:
        return self.costs[i % len(self.costs)]

    def prefix(self, start: int, count: int) -> int:
        """Total cost of `count` units from `start`, wrapping around."""
        n = len(self.costs)
        full, rest = divmod(count, n)
        s = start % n
        total = full * self._cum[n]
        end = s + rest
        if end <= n:
            return total + self._cum[end] - self._cum[s]
        return total + self._cum[n] - self._cum[s] + self._cum[end - n]


_COSTS: dict = {}


def unit_costs(tokenizer, units: Sequence[str], separator: str, cache_key=None) -> TokenCosts:
    """Token count of each unit preceded by `separator` (" " for words, "\\n" for lines): in
    a rendering the separator's tokens belong to the unit after it. Cached per tokenizer and
    `cache_key`."""
    key = (tokenizer_key(tokenizer), cache_key, separator) if cache_key is not None else None
    if key is not None and key in _COSTS:
        return _COSTS[key]
    batch = getattr(tokenizer, "tokenize_batch", None)
    texts = [separator + u for u in units]
    ids = batch(texts) if batch is not None else [tokenizer.tokenize(t) for t in texts]
    costs = TokenCosts([max(1, len(x)) for x in ids])
    if key is not None:
        _COSTS[key] = costs
    return costs
