"""Synthetic recall documents at the token level, for the CPU-scale reproduction (issue 14): the
training data (`write_recall_dataset`, `tools/make_recall_data.py`) and the held-out evaluation
instances (`swax_megatron.eval.recall.SynthRecallTask`, tasks `synth_mqar` and `synth_passkey`)
come from the same function, `make_document`, so train and eval match token for token in kind.

Why token level, not text: the text tasks (`mqar`: "The code for falcon is 4821." in
Shakespeare) need multi-token keys and values and a language model first, out of reach of a
~250k-parameter model trained for minutes. Language stays in the mix: the recipe blends these
documents with the plain corpus (data.source + data.weights).

Why a passkey and not key-value pairs (FORMAT 3; measured with plain-torch loops on
models/reference.py at d=64, sequence 128-256, batch 16, AdamW 3e-3 cosine, one seed each):
- content-keyed recall (MQAR: 8 of 24 keys per document, each "k v" planted and queried) never
  bound keys to values within 2000-8000 steps, with full attention (2 or 4 layers, d=64 or 128,
  batch 16 or 64, a plain nn.TransformerEncoder too): the models learn "some value that is in the
  context" (loss ln 8 with 8 pairs; with the queries in a block at the end, elimination: the last
  query is always right) and stay there. 4 fixed keys per document: not bound in 1500 steps;
- one marker ("M v" planted, "M v" at the end) is learned as a sharp jump: full attention by step
  ~900, XSXS with window 16 (distances beyond the window: the mLSTM stores it) by ~1000 of a
  4000-step schedule; none of it in 1500 steps of a 1500-step schedule of XSXS at window 16;
- the haystack teaches the previous-token head the recall circuit needs: an order-2 chain with
  2 successors per context over 16 tokens is learned to near its entropy (~0.5 nats) by ~300
  steps (formats 1 and 2 had 4 successors per context).
Why training passkeys sit at most TRAIN_MAX_DISTANCE (32) tokens before their query (through the
framework: XS*2, d=64, sequence 128, batch 16, 4000 steps; docs/REPRODUCTION.md): with depths
uniform over the document, window-16 runs learned the recall in 0 of 7 seeds, window 128 in 3
of 7 (sequence 64, windows 8 / 64: 0 of 2 / 1 of 2). Window 16 learned nothing even at the
distances its window sees, also when half the distances were under 16 (log-uniform, 0 of 2).
With every distance under 16 it learned (1 of 1), and its mLSTM then recalled at distances
16-128 never seen in training; with distances up to 32, each window learned in 2 of 7 seeds.
Evaluation instances keep the uniform depth, so recall is measured far beyond the training
distances.

Reserved tokens: the byte-fallback pieces <0x80>..<0xFF> of the run's SentencePiece vocabulary.
Plain text reaches them only through characters missing from the vocabulary (none in the
embedded plays), so the synthetic "language" shares no token with the text. `token_plan` finds
them by encoding private-use characters (U+E000.. is EE 80 80.. in UTF-8, so their byte pieces
show where the range sits) and checks the range is contiguous; a tokenizer without byte fallback
is refused. The 128 ids are split into
  haystack  0x80..0x8F  16 tokens of an order-2 Markov chain (fixed by CHAIN_SEED: one "language"
                        for every split and seed), BRANCHING successors per context (0x90..0xBF
                        unused)
  keys      0xC0..0xD7  24 keys
  values    0xD8..0xF7  32 values (chance of a recall: 1/32 = 3.1%)
  marker    0xF8        passkey marker
Documents (`length` = the tokens the model sees, including the end-of-document token that
precedes an evaluation instance and ends a training document, so `length - 1` content tokens):
- mqar: NUM_PAIRS keys, each planted as "k v" and queried later as "k v"; the plant-to-query
  distances are stratified over [2, length - 3] (the whole document), the answer is v after the
  second k (a probe; distance = query value position - planted value position);
- passkey: "M v1 .. vT" (T = PASSKEY_TOKENS values) at a uniform depth, repeated at the end;
  the answer is v1..vT after the second M (one probe, right when all T are predicted).
Everything else is haystack, the chain running on through the gaps. Training documents are
passkey (distance capped, above), or mqar with probability MQAR_FRACTION (0: see above; the kind
stays an evaluation task for larger models); all have `length` tokens, so Megatron's samples of
seq_length (+1) tokens hold exactly one document each when length = seq_length.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..files import atomic_write
from .errors import DataError

HAYSTACK_TOKENS = 16  # of the 64 ids before the keys (see FORMAT below)
NUM_KEYS = 24
NUM_VALUES = 32
_KEYS_AT, _VALUES_AT, _MARKER_AT = 0x40, 0x58, 0x78  # offsets in the reserved range
BRANCHING = 2  # successors of each (a, b) haystack context
CHAIN_SEED = 0
NUM_PAIRS = 8
PASSKEY_TOKENS = 1  # one value: later values would be recalled by content (value -> next value)
MQAR_FRACTION = 0.0
# Training passkeys are planted at most this many tokens before their query (evaluation
# instances: anywhere). Measured (see the module doc): with distances over the whole document, a
# window-16 model never learned the recall, not even at the distances its window sees.
TRAIN_MAX_DISTANCE = 32
KINDS = ("mqar", "passkey")
MIN_LENGTH = 64  # room for the pairs (4 tokens each) and some haystack
# Of the documents: bump when make_document changes what it writes. 2: a 16-token haystack
# (format 1's 64-token chain, 4096 contexts x 4 successors, was still far from learned after 2000
# steps of the d=64 model). 3: passkeys of one value, training on passkeys only, 2 successors per
# haystack context (no recall at all was learned from formats 1 and 2: see the module doc).
FORMAT = 3

_PROBE_CHARS = ("\ue000", "\ue03f")  # UTF-8 EE 80 80 and EE 80 BF: byte pieces 0xEE, 0x80, 0xBF


@dataclass(frozen=True)
class TokenPlan:
    """The reserved ids of one vocabulary (see the module doc)."""

    haystack: Tuple[int, ...]
    keys: Tuple[int, ...]
    values: Tuple[int, ...]
    marker: int

    @property
    def first(self) -> int:
        return self.haystack[0]


def token_plan(tokenizer) -> TokenPlan:
    """The reserved ids of `tokenizer` (anything with `tokenize`): its byte pieces <0x80>..<0xFF>,
    found by encoding private-use characters. DataError when they are not there."""
    a, b = (list(tokenizer.tokenize(c)) for c in _PROBE_CHARS)
    if len(a) != 3 or len(b) != 3 or a[1] != a[2] or b[:2] != a[:2] or b[2] != a[1] + 0x3F \
            or a[0] != a[1] + (0xEE - 0x80):
        raise DataError(None, "the tokenizer has no contiguous byte-fallback pieces <0x80>..<0xFF> "
                              "(train it with byte_fallback, as the default tokenizer is); the "
                              "synthetic recall data uses them as reserved tokens")
    base = a[1]
    vocab = getattr(tokenizer, "vocab_size", None)
    if vocab is not None and base + 0x7F >= vocab:
        raise DataError(None, f"byte pieces at {base}..{base + 0x7F} exceed vocab_size {vocab}")
    ids = list(range(base, base + 0x80))
    return TokenPlan(tuple(ids[:HAYSTACK_TOKENS]), tuple(ids[_KEYS_AT:_KEYS_AT + NUM_KEYS]),
                     tuple(ids[_VALUES_AT:_VALUES_AT + NUM_VALUES]), ids[_MARKER_AT])


def markov_chain(seed: int = CHAIN_SEED) -> Tuple[np.ndarray, np.ndarray]:
    """(successors [H, H, BRANCHING] of haystack indices, their cumulative probabilities): each
    context (a, b) has BRANCHING distinct successors with Dirichlet(1) weights."""
    g = np.random.default_rng(seed)
    h = HAYSTACK_TOKENS
    succ = np.argsort(g.random((h, h, h)), axis=-1)[..., :BRANCHING]
    w = g.dirichlet(np.ones(BRANCHING), size=(h, h))
    return succ, np.cumsum(w, axis=-1)


_CHAIN = None


def _chain():
    global _CHAIN
    if _CHAIN is None:
        succ, cum = markov_chain()
        _CHAIN = (succ.tolist(), cum.tolist())
    return _CHAIN


def haystack(n: int, rng: random.Random) -> List[int]:
    """`n` haystack indices (0..H-1) from the chain, started at a uniform context."""
    succ, cum = _chain()
    out = [rng.randrange(HAYSTACK_TOKENS), rng.randrange(HAYSTACK_TOKENS)][:n]
    while len(out) < n:
        a, b = out[-2], out[-1]
        u, c = rng.random(), cum[a][b]
        j = 0
        while j < BRANCHING - 1 and u >= c[j]:
            j += 1
        out.append(succ[a][b][j])
    return out


@dataclass(frozen=True)
class Document:
    """`ids`: the content (length - 1 tokens); `probes`: (start, end, distance) of each answer
    (ids[start:end]), in order of position."""

    kind: str
    ids: Tuple[int, ...]
    probes: Tuple[Tuple[int, int, int], ...]


def _place_pairs(n: int, distances: Sequence[int], rng: random.Random) -> List[Tuple[int, int]]:
    """(plant, query) starts of two-token items in n slots, query - plant = distance where it
    fits (longest first; a distance that no longer fits takes the nearest shorter one that does,
    else the nearest longer one)."""
    free = np.ones(n, dtype=bool)
    out = []
    for want in distances:
        for d in [*range(want, 1, -1), *range(want + 1, n - 1)]:
            p = np.arange(0, n - 1 - d)
            ok = free[p] & free[p + 1] & free[p + d] & free[p + d + 1]
            if ok.any():
                break
        else:
            raise ValueError(f"no room for {len(distances)} pairs in {n} tokens")
        cand = p[ok]
        s = int(cand[rng.randrange(len(cand))])
        free[[s, s + 1, s + d, s + d + 1]] = False
        out.append((s, s + d))
    return out


def make_document(kind: str, plan: TokenPlan, length: int, rng: random.Random,
                  max_distance: Optional[int] = None) -> Document:
    """One document of `kind` ("mqar" or "passkey") for a model input of `length` tokens. A
    passkey's plant-to-query distance is at most `max_distance` (None: anywhere in the
    document); mqar spreads its distances over the whole document either way."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if isinstance(length, bool) or not isinstance(length, int) or length < MIN_LENGTH:
        raise ValueError(f"length must be an integer >= {MIN_LENGTH}, got {length!r}")
    if max_distance is not None and (isinstance(max_distance, bool)
                                     or not isinstance(max_distance, int)
                                     or max_distance < PASSKEY_TOKENS + 1):
        raise ValueError(f"max_distance must be None or an integer >= {PASSKEY_TOKENS + 1}, "
                         f"got {max_distance!r}")
    n = length - 1
    items: dict = {}  # position -> id
    probes = []
    if kind == "mqar":
        keys = rng.sample(plan.keys, NUM_PAIRS)
        values = [rng.choice(plan.values) for _ in keys]
        lo, hi = 2, n - 2
        strata = [int(lo + (i + rng.random()) * (hi - lo + 1) / NUM_PAIRS) for i in range(NUM_PAIRS)]
        order = sorted(range(NUM_PAIRS), key=lambda i: -strata[i])
        spots = _place_pairs(n, [strata[i] for i in order], rng)
        for i, (p, q) in zip(order, spots):
            items.update({p: keys[i], p + 1: values[i], q: keys[i], q + 1: values[i]})
            probes.append((q + 1, q + 2, q - p))
    else:
        t = PASSKEY_TOKENS
        key = [plan.marker] + [rng.choice(plan.values) for _ in range(t)]
        q = n - (t + 1)
        lowest = 0 if max_distance is None else max(0, q - max_distance)
        p = rng.randrange(lowest, q - (t + 1) + 1)  # the distance q - p is in [t + 1, ...]
        for j, tok in enumerate(key):
            items[p + j] = tok
            items[q + j] = tok
        probes.append((q + 1, q + 1 + t, q - p))
    hay = iter(haystack(n - len(items), rng))
    ids = tuple(items[i] if i in items else plan.haystack[next(hay)] for i in range(n))
    return Document(kind, ids, tuple(sorted(probes)))


def _rng(*parts) -> random.Random:
    blob = json.dumps(parts, sort_keys=True).encode()
    return random.Random(int.from_bytes(hashlib.sha256(blob).digest()[:16], "big"))


def training_document(plan: TokenPlan, length: int, seed: int, index: int,
                      max_distance: Optional[int] = TRAIN_MAX_DISTANCE) -> Document:
    """Training document `index` of stream `seed`: passkey, or mqar with MQAR_FRACTION. Its
    random stream (split "train") is not any evaluation instance's."""
    rng = _rng("swax-recall-train", FORMAT, seed, length, index)
    kind = "mqar" if rng.random() < MQAR_FRACTION else "passkey"
    return make_document(kind, plan, length, rng, max_distance=max_distance)


def training_documents(plan: TokenPlan, length: int, count: int, seed: int = 0,
                       max_distance: Optional[int] = TRAIN_MAX_DISTANCE) -> Iterator[Document]:
    for i in range(count):
        yield training_document(plan, length, seed, i, max_distance)


# --- the indexed dataset ------------------------------------------------------------------------

def _settings(tokenizer, length: int, count: int, seed: int, max_distance) -> dict:
    return {"format": FORMAT, "length": length, "documents": count, "seed": seed,
            "max_distance": max_distance,
            "tokenizer_vocab_sha256": getattr(tokenizer, "fingerprint", None),
            "chain_seed": CHAIN_SEED, "num_pairs": NUM_PAIRS, "passkey_tokens": PASSKEY_TOKENS,
            "mqar_fraction": MQAR_FRACTION, "branching": BRANCHING}


def _check_args(length, count, seed, max_distance) -> None:
    checks = [("length", length, MIN_LENGTH), ("documents", count, 1), ("seed", seed, 0)]
    if max_distance is not None:
        checks.append(("max_distance", max_distance, PASSKEY_TOKENS + 1))
    for name, v, low in checks:
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise DataError(None, f"{name} must be an integer >= {low}, got {v!r}")


def recall_dataset_done(prefix, tokenizer, *, length: int, count: int, seed: int = 0,
                        max_distance: Optional[int] = TRAIN_MAX_DISTANCE) -> bool:
    """True when `<prefix>.bin/.idx` exist, are valid for `tokenizer` and were written with
    these settings (their `.meta.json` says so): a rerun then has nothing to do."""
    from .indexed import meta_path, validate_indexed_dataset

    try:
        meta = json.loads(meta_path(prefix).read_text())
        validate_indexed_dataset(prefix, tokenizer=tokenizer)
    except (OSError, ValueError, DataError):
        return False
    from .indexed import bin_path, idx_path

    return (meta.get("recall") == _settings(tokenizer, length, count, seed, max_distance)
            and meta.get("bin_bytes") == bin_path(prefix).stat().st_size
            and meta.get("idx_bytes") == idx_path(prefix).stat().st_size)


def write_recall_dataset(prefix, tokenizer, *, length: int, count: int, seed: int = 0,
                         max_distance: Optional[int] = TRAIN_MAX_DISTANCE) -> dict:
    """Write `count` training documents of `length` tokens (each ending with the tokenizer's
    end-of-document id; passkey distances at most `max_distance`, None: anywhere) as
    `<prefix>.bin/.idx` with megatron's IndexedDatasetBuilder, atomically (.bin, then .idx,
    then .meta.json with the settings). Reuses the files when they are there with the same
    settings. Returns the meta dict (with "reused": bool)."""
    from .indexed import bin_path, building, idx_path, meta_path, token_dtype

    _check_args(length, count, seed, max_distance)
    prefix = str(prefix)
    if Path(prefix).suffix in (".bin", ".idx"):
        raise DataError(prefix, "give the dataset prefix, without .bin / .idx")
    plan = token_plan(tokenizer)
    if recall_dataset_done(prefix, tokenizer, length=length, count=count, seed=seed,
                           max_distance=max_distance):
        meta = json.loads(meta_path(prefix).read_text())
        return {**meta, "reused": True}
    dtype = token_dtype(tokenizer.vocab_size)
    eod = tokenizer.eod
    kinds = {k: 0 for k in KINDS}
    with building(prefix, dtype) as builder:
        for doc in training_documents(plan, length, count, seed, max_distance):
            kinds[doc.kind] += 1
            builder.add_document(np.asarray(doc.ids + (eod,), dtype=dtype), [length])
    meta = {"tokenizer_vocab_sha256": getattr(tokenizer, "fingerprint", None),
            "tokenizer_model": str(getattr(tokenizer, "model_path", "")),
            "vocab_size": tokenizer.vocab_size, "documents": count, "tokens": count * length,
            "skipped_empty": 0, "source": f"swax-recall:{kinds['mqar']} mqar + "
                                          f"{kinds['passkey']} passkey",
            "recall": _settings(tokenizer, length, count, seed, max_distance), "kinds": kinds,
            "reserved_ids": [plan.first, plan.first + 0x7F],
            "bin_bytes": bin_path(prefix).stat().st_size,
            "idx_bytes": idx_path(prefix).stat().st_size}
    atomic_write(meta_path(prefix), json.dumps(meta, indent=1) + "\n")
    return {**meta, "reused": False}


def describe(doc: Document, plan: TokenPlan) -> str:
    """A readable rendering (tests, inspection): h12 haystack, K3 key, V7 value, M marker."""
    names = {}
    for prefix, ids in (("h", plan.haystack), ("K", plan.keys), ("V", plan.values)):
        names.update({t: f"{prefix}{i}" for i, t in enumerate(ids)})
    names[plan.marker] = "M"
    return " ".join(names.get(t, f"<{t}>") for t in doc.ids)


__all__ = ["Document", "KINDS", "TokenPlan", "describe", "make_document", "markov_chain",
           "recall_dataset_done", "token_plan", "training_document", "training_documents",
           "write_recall_dataset"]
