"""Megatron indexed datasets (`<prefix>.bin` + `<prefix>.idx`): writing, reading, validating.

Written through megatron-core's `IndexedDatasetBuilder`, one sequence per document, the
tokenizer's end-of-document id appended to each, empty documents skipped (an empty document
makes GPTDataset's epoch count loop forever). Outputs are written under temporary names and
renamed into place, `.bin` before `.idx`, so a reader finds either a complete pair or no index.
A small `<prefix>.meta.json` records which tokenizer produced the ids.

`validate_indexed_dataset` checks a pair *before* Megatron reads it: Megatron answers a missing
or inconsistent file with a bare assert, a numpy error deep in a memmap, or an endless loop.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from ..files import atomic_write, temp_beside
from .errors import DataError

_INDEX_HEADER = b"MMIDIDX\x00\x00"
_HEADER_BYTES = 9 + 8 + 1 + 8 + 8  # magic, version, dtype code, sequence count, document count
# Megatron's DType codes (megatron/core/datasets/indexed_dataset.py).
_DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64,
           7: np.float32, 8: np.uint16}
_SCAN_CHUNK_TOKENS = 1 << 24


def bin_path(prefix) -> Path:
    return Path(f"{prefix}.bin")


def idx_path(prefix) -> Path:
    return Path(f"{prefix}.idx")


def meta_path(prefix) -> Path:
    return Path(f"{prefix}.meta.json")


def token_dtype(vocab_size: int) -> type:
    """Megatron's choice: uint16 while the ids fit, else int32."""
    return np.uint16 if vocab_size < 65500 else np.int32


@dataclass(frozen=True)
class IndexedStats:
    prefix: str
    documents: int
    tokens: int
    skipped_empty: int


def write_indexed_dataset(documents: Iterable[str], output_prefix, tokenizer, *,
                          batch_size: int = 64, num_threads: int = 1, progress=None,
                          source: str = "") -> IndexedStats:
    """Tokenize `documents` and write `<output_prefix>.bin/.idx` (plus `.meta.json`).

    `progress`: an optional tqdm-like object; `.update(1)` is called per input document."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    prefix = str(output_prefix)
    dtype = token_dtype(tokenizer.vocab_size)
    eod = tokenizer.eod
    docs = tokens = skipped = 0
    tmp_bin, tmp_idx = temp_beside(bin_path(prefix)), temp_beside(idx_path(prefix))
    builder = None
    try:
        builder = IndexedDatasetBuilder(str(tmp_bin), dtype=dtype)
        batch: list[str] = []

        def flush():
            nonlocal docs, tokens, skipped
            for ids in tokenizer.tokenize_batch(batch, num_threads=num_threads):
                if not ids:
                    skipped += 1
                    continue
                ids.append(eod)
                builder.add_document(np.asarray(ids, dtype=dtype), [len(ids)])
                docs += 1
                tokens += len(ids)
            if progress is not None:
                progress.update(len(batch))
            batch.clear()

        for doc in documents:
            if doc.strip():
                batch.append(doc)
                if len(batch) >= batch_size:
                    flush()
            else:
                skipped += 1
                if progress is not None:
                    progress.update(1)
        if batch:
            flush()
        if docs == 0:
            raise DataError(prefix, f"no non-empty documents to write ({skipped} empty skipped)")
        builder.finalize(str(tmp_idx))  # closes the .bin, writes the .idx
        meta_path(prefix).unlink(missing_ok=True)
        os.replace(tmp_bin, bin_path(prefix))
        os.replace(tmp_idx, idx_path(prefix))
    finally:
        if builder is not None and not builder.data_file.closed:
            builder.data_file.close()
        tmp_bin.unlink(missing_ok=True)
        tmp_idx.unlink(missing_ok=True)
    stats = IndexedStats(prefix, docs, tokens, skipped)
    _write_meta(prefix, tokenizer, stats, source)
    return stats


def _write_meta(prefix: str, tokenizer, stats: IndexedStats, source: str) -> None:
    meta = {
        "tokenizer_vocab_sha256": getattr(tokenizer, "fingerprint", None),
        "tokenizer_model": str(getattr(tokenizer, "model_path", "")),
        "vocab_size": tokenizer.vocab_size,
        "documents": stats.documents, "tokens": stats.tokens,
        "skipped_empty": stats.skipped_empty, "source": source,
        # Sizes tie the metadata to this exact pair: a pair rewritten by another tool leaves
        # sizes that no longer match, and the stale metadata is then ignored.
        "bin_bytes": bin_path(prefix).stat().st_size, "idx_bytes": idx_path(prefix).stat().st_size,
    }
    atomic_write(meta_path(prefix), (json.dumps(meta, indent=1) + "\n").encode())


def read_documents(prefix) -> list[np.ndarray]:
    """All documents of a validated pair as token arrays (tests and inspection; small data)."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    validate_indexed_dataset(prefix)
    ds = IndexedDataset(str(prefix))
    return [np.array(ds[i]) for i in range(len(ds))]


@dataclass(frozen=True)
class IndexedInfo:
    prefix: str
    dtype: type
    sequences: int
    documents: int
    tokens: int
    max_token: Optional[int]
    sequence_lengths: np.ndarray
    document_indices: np.ndarray


def validate_indexed_dataset(prefix, *, vocab_size: Optional[int] = None, tokenizer=None,
                             max_scan_bytes: int = 256 << 20) -> IndexedInfo:
    """Check `<prefix>.idx` / `.bin` for everything that makes Megatron fail obscurely.

    With `tokenizer` (or `vocab_size`) the token ids are checked against the vocabulary (every
    token up to `max_scan_bytes` of `.bin`, evenly spaced chunks of that total beyond), and a
    `.meta.json` written for another tokenizer is reported. Raises DataError naming the file."""
    prefix = str(prefix)
    if Path(prefix).suffix in (".bin", ".idx"):
        raise DataError(prefix, "give the dataset prefix, without .bin / .idx")
    idx, binf = idx_path(prefix), bin_path(prefix)
    for path, what in ((idx, "index"), (binf, "data")):
        if not path.is_file():
            raise DataError(path, f"missing {what} file of dataset prefix {prefix!r}")
    if tokenizer is not None:
        vocab_size = tokenizer.vocab_size

    idx_bytes = idx.stat().st_size
    with open(idx, "rb") as f:
        head = f.read(_HEADER_BYTES)
    if len(head) < _HEADER_BYTES:
        raise DataError(idx, f"truncated index: {len(head)} bytes, shorter than the header")
    if head[:9] != _INDEX_HEADER:
        raise DataError(idx, "not a Megatron index file (bad magic bytes)")
    version, code, n_seq, n_doc = struct.unpack("<QBQQ", head[9:])
    if version != 1:
        raise DataError(idx, f"unsupported index version {version}")
    if code not in _DTYPES:
        raise DataError(idx, f"unknown token dtype code {code}")
    dtype = _DTYPES[code]
    expected = _HEADER_BYTES + n_seq * 4 + n_seq * 8 + n_doc * 8
    if idx_bytes != expected and idx_bytes != expected + n_seq:  # + n_seq: multimodal modes
        problem = "truncated" if idx_bytes < expected else "corrupt"
        raise DataError(idx, f"{problem} index: {idx_bytes} bytes, the header's counts "
                             f"({n_seq} sequences, {n_doc - 1} documents) need {expected}")
    if n_doc < 2 or n_seq == 0:
        raise DataError(idx, "the dataset has no documents")
    # memmap, not read(): the index of a large corpus is gigabytes.
    mm = np.memmap(idx, dtype=np.uint8, mode="r")
    off = _HEADER_BYTES
    lengths = np.frombuffer(mm, np.int32, n_seq, off)
    pointers = np.frombuffer(mm, np.int64, n_seq, off + 4 * n_seq)
    doc_idx = np.frombuffer(mm, np.int64, n_doc, off + 12 * n_seq)

    if doc_idx[0] != 0 or doc_idx[-1] != n_seq or np.any(np.diff(doc_idx) < 0):
        raise DataError(idx, "corrupt index: document boundaries are not increasing from 0 to "
                             "the sequence count")
    if np.any(lengths < 0):
        raise DataError(idx, "corrupt index: negative sequence length")
    itemsize = np.dtype(dtype).itemsize
    ends = np.cumsum(lengths, dtype=np.int64) * itemsize
    starts = np.concatenate([[0], ends[:-1]])
    if not np.array_equal(pointers, starts):
        raise DataError(idx, "corrupt index: sequence pointers do not match sequence lengths")
    per_doc = np.diff(np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])[doc_idx])
    empty = np.flatnonzero(per_doc == 0)
    if empty.size:
        raise DataError(idx, f"{empty.size} empty document(s) (first: #{empty[0]}); Megatron's "
                             f"GPTDataset loops forever on them; rebuild without empty documents")

    need = int(ends[-1])
    have = binf.stat().st_size
    if have < need:
        raise DataError(binf, f"truncated: the index says {need} bytes, the file has {have}")
    if have > need:
        raise DataError(binf, f"does not match its index: the file has {have} bytes, the index "
                              f"says {need} (a .bin and .idx from different runs?)")

    max_token = None
    if vocab_size is not None:
        max_token = _max_token(binf, dtype, need // itemsize, max_scan_bytes)
        if max_token >= vocab_size:
            raise DataError(binf, f"token id {max_token} >= the tokenizer's vocab_size "
                                  f"{vocab_size}: the data was made with another tokenizer")
        if np.issubdtype(dtype, np.signedinteger) and _min_token(binf, dtype, need // itemsize,
                                                                 max_scan_bytes) < 0:
            raise DataError(binf, "negative token id: corrupt data")
    if tokenizer is not None:
        _check_meta(prefix, tokenizer, have, idx_bytes)
    return IndexedInfo(prefix, dtype, int(n_seq), int(n_doc - 1), need // itemsize, max_token,
                       lengths, doc_idx)


def _check_meta(prefix: str, tokenizer, bin_bytes: int, idx_bytes: int) -> None:
    path = meta_path(prefix)
    if not path.is_file():
        return
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # advisory file; the hard checks above already passed
    if meta.get("bin_bytes") != bin_bytes or meta.get("idx_bytes") != idx_bytes:
        return  # stale: the pair was rewritten by something else
    made_with = meta.get("tokenizer_vocab_sha256")
    mine = getattr(tokenizer, "fingerprint", None)
    if made_with and mine and made_with != mine:
        raise DataError(bin_path(prefix), f"was tokenized with another tokenizer "
                                          f"({meta.get('tokenizer_model') or 'unknown model'}, "
                                          f"vocab {meta.get('vocab_size')}) than "
                                          f"{getattr(tokenizer, 'model_path', 'the one given')}")


def _chunks(count: int, max_tokens: int):
    if count <= max_tokens:
        for start in range(0, count, _SCAN_CHUNK_TOKENS):
            yield start, min(_SCAN_CHUNK_TOKENS, count - start)
        return
    n = max(1, max_tokens // _SCAN_CHUNK_TOKENS)
    for k in range(n):
        start = (count - _SCAN_CHUNK_TOKENS) * k // max(1, n - 1)
        yield start, _SCAN_CHUNK_TOKENS


def _max_token(path: Path, dtype, count: int, max_scan_bytes: int) -> int:
    data = np.memmap(path, dtype=dtype, mode="r", shape=(count,))
    limit = max(1, max_scan_bytes // np.dtype(dtype).itemsize)
    return int(max(int(data[s:s + n].max()) for s, n in _chunks(count, limit)))


def _min_token(path: Path, dtype, count: int, max_scan_bytes: int) -> int:
    data = np.memmap(path, dtype=dtype, mode="r", shape=(count,))
    limit = max(1, max_scan_bytes // np.dtype(dtype).itemsize)
    return int(min(int(data[s:s + n].min()) for s, n in _chunks(count, limit)))
