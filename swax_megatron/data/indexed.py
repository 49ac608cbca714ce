"""Megatron indexed datasets (`<prefix>.bin` + `<prefix>.idx`): writing, reading, validating.

Written through megatron-core's `IndexedDatasetBuilder`, one sequence per document, the
tokenizer's end-of-document id appended to each, empty documents skipped (an empty document
makes GPTDataset's epoch count loop forever). Outputs are written under temporary names and
renamed into place, `.bin` before `.idx`, so a reader finds either a complete pair or no index.
A small `<prefix>.meta.json` records which tokenizer produced the ids.

`validate_indexed_dataset` checks a pair *before* Megatron reads it: Megatron answers a missing
or inconsistent file with a bare assert, a numpy error deep in a memmap, or an endless loop.
`check_indexed_dataset_cached` does the same checks once per version of the files (a record in a
cache directory), which is what a training start-up uses.
"""

from __future__ import annotations

import contextlib

import dataclasses
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Tuple

import numpy as np

from ..files import atomic_write, temp_beside
from .errors import DataError

_INDEX_HEADER = b"MMIDIDX\x00\x00"
_HEADER_BYTES = 9 + 8 + 1 + 8 + 8  # magic, version, dtype code, sequence count, document count
# Megatron's DType codes (megatron/core/datasets/indexed_dataset.py).
_DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64,
           7: np.float32, 8: np.uint16}
_SCAN_CHUNK_TOKENS = 1 << 24
MAX_SCAN_BYTES = 256 << 20  # of .bin scanned for token ids per dataset (evenly spaced beyond)


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


@contextlib.contextmanager
def building(prefix: str, dtype):
    """megatron's IndexedDatasetBuilder writing beside `<prefix>.bin/.idx`; when the block ends
    cleanly the new files replace the old ones (a stale .meta.json removed first, so a reader never
    pairs it with them), on an error nothing of them is left."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    tmp_bin, tmp_idx = temp_beside(bin_path(prefix)), temp_beside(idx_path(prefix))
    builder = None
    try:
        builder = IndexedDatasetBuilder(str(tmp_bin), dtype=dtype)
        yield builder
        builder.finalize(str(tmp_idx))  # closes the .bin, writes the .idx
        meta_path(prefix).unlink(missing_ok=True)
        os.replace(tmp_bin, bin_path(prefix))
        os.replace(tmp_idx, idx_path(prefix))
    finally:
        if builder is not None and not builder.data_file.closed:
            builder.data_file.close()
        tmp_bin.unlink(missing_ok=True)
        tmp_idx.unlink(missing_ok=True)


def write_indexed_dataset(documents: Iterable[str], output_prefix, tokenizer, *,
                          batch_size: int = 64, num_threads: int = 1, progress=None,
                          source: str = "") -> IndexedStats:
    """Tokenize `documents` and write `<output_prefix>.bin/.idx` (plus `.meta.json`).

    `progress`: an optional tqdm-like object; `.update(1)` is called per input document."""
    prefix = str(output_prefix)
    dtype = token_dtype(tokenizer.vocab_size)
    eod = tokenizer.eod
    docs = tokens = skipped = 0
    with building(prefix, dtype) as builder:
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
                             max_scan_bytes: int = MAX_SCAN_BYTES) -> IndexedInfo:
    """Check `<prefix>.idx` / `.bin` for everything that makes Megatron fail obscurely.

    With `tokenizer` (or `vocab_size`) the token ids are checked against the vocabulary (every
    token up to `max_scan_bytes` of `.bin`, evenly spaced chunks of that total beyond), and a
    `.meta.json` written for another tokenizer is reported. Raises DataError naming the file.
    The plain reference of `check_indexed_dataset_cached`, which does the same work once per
    version of the files."""
    prefix = str(prefix)
    if tokenizer is not None:
        vocab_size = tokenizer.vocab_size
    s = _check_structure(prefix)
    max_token = None
    if vocab_size is not None:
        count = s.need // np.dtype(s.dtype).itemsize
        max_token = _max_token(bin_path(prefix), s.dtype, count, max_scan_bytes)
        min_token = _min_token(bin_path(prefix), s.dtype, count, max_scan_bytes) \
            if np.issubdtype(s.dtype, np.signedinteger) else 0
        _check_token_range(prefix, max_token, min_token, vocab_size)
    if tokenizer is not None:
        _check_meta(prefix, tokenizer, s.have, s.idx_bytes)
    return IndexedInfo(prefix, s.dtype, s.sequences, s.documents, s.need // np.dtype(
        s.dtype).itemsize, max_token, s.lengths, s.doc_idx)


@dataclass(frozen=True)
class _Structure:
    dtype: type
    sequences: int
    documents: int
    need: int  # bytes of .bin the index describes
    have: int  # bytes of .bin on disk
    idx_bytes: int
    lengths: np.ndarray
    doc_idx: np.ndarray


def _check_structure(prefix: str) -> _Structure:
    """Files, index header, index arrays and the .bin size (reads the .idx, not the .bin)."""
    if Path(prefix).suffix in (".bin", ".idx"):
        raise DataError(prefix, "give the dataset prefix, without .bin / .idx")
    idx, binf = idx_path(prefix), bin_path(prefix)
    for path, what in ((idx, "index"), (binf, "data")):
        if not path.is_file():
            raise DataError(path, f"missing {what} file of dataset prefix {prefix!r}")

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
    return _Structure(dtype, int(n_seq), int(n_doc - 1), need, have, idx_bytes, lengths,
                      doc_idx)


def _check_token_range(prefix: str, max_token: int, min_token: int, vocab_size: int) -> None:
    binf = bin_path(prefix)
    if max_token >= vocab_size:
        raise DataError(binf, f"token id {max_token} >= the tokenizer's vocab_size "
                              f"{vocab_size}: the data was made with another tokenizer")
    if min_token < 0:
        raise DataError(binf, "negative token id: corrupt data")


# --- the validation cache ----------------------------------------------------------------------
#
# A start-up validates every dataset before Megatron reads it; scanning .bin for token ids is the
# expensive part (up to MAX_SCAN_BYTES per dataset). What the scan found depends only on the
# files, so it is recorded once per version of the pair, in `<cache_dir>/<digest of the prefix
# path>.json`, and later runs (and, through build_gpt_datasets, the other ranks) reuse it. The
# version is the size and mtime (ns) of both files and a digest of the .idx (whole up to
# _IDX_DIGEST_WHOLE bytes, else evenly spaced pieces and the tail): a rewritten .bin changes its
# size or mtime, a rewritten .idx its digest. What depends on the run (the vocabulary, the
# tokenizer named in .meta.json) is checked against the record every time, cheaply.

_CHECK_VERSION = 1  # bump when the checks change: older records are then redone
_IDX_DIGEST_WHOLE = 64 << 20
_IDX_DIGEST_PIECES, _IDX_DIGEST_PIECE = 64, 1 << 20


@dataclass(frozen=True)
class DatasetCheck:
    """What validating one pair found (a cache record's result)."""

    prefix: str
    sequences: int
    documents: int
    tokens: int
    max_token: int
    min_token: int


def file_version(prefix) -> dict:
    """What identifies this version of the pair: sizes, mtimes and a digest of the .idx."""
    import hashlib

    idx, binf = idx_path(prefix), bin_path(prefix)
    st_idx, st_bin = idx.stat(), binf.stat()
    h = hashlib.blake2b(digest_size=16)
    with open(idx, "rb") as f:
        if st_idx.st_size <= _IDX_DIGEST_WHOLE:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        else:
            last = st_idx.st_size - _IDX_DIGEST_PIECE
            for k in range(_IDX_DIGEST_PIECES):
                f.seek(last * k // (_IDX_DIGEST_PIECES - 1))
                h.update(f.read(_IDX_DIGEST_PIECE))
    return {"check_version": _CHECK_VERSION, "max_scan_bytes": MAX_SCAN_BYTES,
            "idx_bytes": st_idx.st_size, "idx_mtime_ns": st_idx.st_mtime_ns,
            "bin_bytes": st_bin.st_size, "bin_mtime_ns": st_bin.st_mtime_ns,
            "idx_digest": h.hexdigest()}


def _record_path(cache_dir: Path, prefix: str) -> Path:
    import hashlib

    key = hashlib.sha256(os.path.abspath(prefix).encode()).hexdigest()[:24]
    return Path(cache_dir) / f"{Path(prefix).name}-{key}.json"


def scan_dataset(prefix: str) -> DatasetCheck:
    """The full validation of the files alone (index, sizes, the token-id scan of .bin)."""
    s = _check_structure(prefix)
    count = s.need // np.dtype(s.dtype).itemsize
    max_token = _max_token(bin_path(prefix), s.dtype, count, MAX_SCAN_BYTES)
    min_token = _min_token(bin_path(prefix), s.dtype, count, MAX_SCAN_BYTES) \
        if np.issubdtype(s.dtype, np.signedinteger) else 0
    return DatasetCheck(prefix, s.sequences, s.documents, count, max_token, min_token)


def check_indexed_dataset_cached(prefix, *, tokenizer=None, vocab_size: Optional[int] = None,
                                 cache_dir: Optional[str | os.PathLike] = None
                                 ) -> Tuple[DatasetCheck, bool]:
    """validate_indexed_dataset's checks, the file-only part (scan_dataset) done once per
    version of the files when `cache_dir` is given: (result, True when it came from the cache).
    Raises the same DataError lines as the reference."""
    prefix = str(prefix)
    if tokenizer is not None:
        vocab_size = tokenizer.vocab_size
    if Path(prefix).suffix in (".bin", ".idx"):
        raise DataError(prefix, "give the dataset prefix, without .bin / .idx")
    for path, what in ((idx_path(prefix), "index"), (bin_path(prefix), "data")):
        if not path.is_file():
            raise DataError(path, f"missing {what} file of dataset prefix {prefix!r}")
    check, cached = None, False
    record = version = None
    if cache_dir is not None:
        record, version = _record_path(Path(cache_dir), prefix), file_version(prefix)
        try:
            saved = json.loads(record.read_text())
            if saved.get("version") == version and saved.get("prefix") == os.path.abspath(
                    prefix):
                check, cached = DatasetCheck(prefix=prefix, **saved["result"]), True
        except (OSError, ValueError, TypeError, KeyError):
            pass  # absent, unreadable or of another format: validate again
    if check is None:
        check = scan_dataset(prefix)
        if record is not None:
            result = {k: v for k, v in dataclasses.asdict(check).items() if k != "prefix"}
            atomic_write(record, json.dumps({"prefix": os.path.abspath(prefix),
                                             "version": version, "result": result},
                                            indent=1) + "\n")
    if vocab_size is not None:
        _check_token_range(prefix, check.max_token, check.min_token, vocab_size)
    if tokenizer is not None:
        _check_meta(prefix, tokenizer, bin_path(prefix).stat().st_size,
                    idx_path(prefix).stat().st_size)
    return check, cached


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
