"""Text / JSON-lines files -> Megatron indexed dataset (the library side of
tools/preprocess_data.py).

What a document is:
- `.jsonl` / `.ndjson` / `.json` files: one JSON object per line, the document is the string
  under `json_key` (default "text"); blank lines are skipped.
- any other file is UTF-8 text; `text_mode` decides: "file" (default) the whole file is one
  document, "paragraph" blank-line separated paragraphs are documents, "line" every line is one.
- `.gz` is read transparently (`corpus.jsonl.gz` is JSON lines).
Every document gets the end-of-document id appended; empty (or whitespace-only) documents are
skipped and counted.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
from pathlib import Path
from typing import Iterator, Sequence

from .errors import DataError
from .indexed import IndexedStats, write_indexed_dataset

JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")
TEXT_MODES = ("file", "paragraph", "line")


def _base_suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _open_text(path: Path) -> io.TextIOBase:
    raw = gzip.open(path, "rb") if path.suffix.lower() == ".gz" else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8", newline="")


def iter_documents(path, *, json_key: str = "text", text_mode: str = "file") -> Iterator[str]:
    path = Path(path)
    if text_mode not in TEXT_MODES:
        raise DataError(None, f"text_mode must be one of {', '.join(TEXT_MODES)}, got {text_mode!r}")
    if not path.is_file():
        raise DataError(path, "input file not found")
    try:
        with _open_text(path) as f:
            if _base_suffix(path) in JSON_SUFFIXES:
                yield from _json_documents(path, f, json_key)
            elif text_mode == "file":
                yield f.read().replace("\r\n", "\n").strip("\n")
            elif text_mode == "paragraph":
                text = f.read().replace("\r\n", "\n")
                for para in re.split(r"\n(?:[ \t]*\n)+", text):
                    yield para.strip("\n")
            else:
                for line in f:
                    yield line.rstrip("\r\n")
    except UnicodeDecodeError as err:
        raise DataError(path, f"not UTF-8 text (byte {err.start} of a chunk: {err.reason})") from None
    except (gzip.BadGzipFile, EOFError) as err:
        raise DataError(path, f"corrupt gzip file: {err}") from None


def _json_documents(path: Path, f, key: str) -> Iterator[str]:
    for lineno, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{lineno}", f"invalid JSON ({err.msg})") from None
        if not isinstance(record, dict) or key not in record:
            keys = sorted(record)[:8] if isinstance(record, dict) else type(record).__name__
            raise DataError(f"{path}:{lineno}", f"no key {key!r} in the JSON record (has: {keys})")
        value = record[key]
        if not isinstance(value, str):
            raise DataError(f"{path}:{lineno}", f"{key!r} is a {type(value).__name__}, not a string")
        yield value


def preprocess_files(inputs: Sequence[str | os.PathLike], output_prefix, tokenizer, *,
                     json_key: str = "text", text_mode: str = "file", num_threads: int = 1,
                     progress: bool = False) -> IndexedStats:
    """Tokenize every document of `inputs` (in order) into `<output_prefix>.bin/.idx`."""
    paths = [Path(p) for p in inputs]
    if not paths:
        raise DataError(None, "no input files given")
    for p in paths:  # fail before any work, not after tokenizing the first 90%
        if not p.is_file():
            raise DataError(p, "input file not found")
    if text_mode not in TEXT_MODES:
        raise DataError(None, f"text_mode must be one of {', '.join(TEXT_MODES)}, got {text_mode!r}")

    def documents():
        for p in paths:
            yield from iter_documents(p, json_key=json_key, text_mode=text_mode)

    # Megatron's import takes seconds: pay it before the progress bar starts its clock.
    import megatron.core.datasets.indexed_dataset  # noqa: F401

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(unit="doc", desc=f"tokenizing -> {Path(str(output_prefix)).name}",
                   disable=None)  # None: only on a terminal, not in logs
    try:
        return write_indexed_dataset(documents(), output_prefix, tokenizer,
                                     num_threads=num_threads, progress=bar,
                                     source=",".join(str(p) for p in paths))
    finally:
        if bar is not None:
            bar.close()
