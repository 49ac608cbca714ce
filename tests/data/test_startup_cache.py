"""Data start-up without full scans: a dataset pair is validated once per version of its files
(the record in the cache), later start-ups read no .bin bytes for it, a changed file is validated
again, and in a process group only rank 0 ever reads the data for validation."""

from __future__ import annotations

import builtins
import os

import numpy as np
import pytest

from dist import run_distributed
from swax_megatron.data import DataError, build_gpt_datasets, write_indexed_dataset
from swax_megatron.data import indexed
from swax_megatron.data.indexed import (check_indexed_dataset_cached, validate_indexed_dataset)


@pytest.fixture
def pair(tiny_tokenizer, small_docs, tmp_path):
    paras = [p for p in small_docs[0].split("\n\n") if p.strip()][:200]
    write_indexed_dataset(paras, tmp_path / "data" / "a", tiny_tokenizer)
    return str(tmp_path / "data" / "a")


class Opened:
    """Every file opened through open() or np.memmap while active."""

    def __init__(self, monkeypatch):
        self.paths = []
        real_open, real_memmap = builtins.open, np.memmap

        def spy_open(file, *a, **k):
            if isinstance(file, (str, os.PathLike)):
                self.paths.append(os.fspath(file))
            return real_open(file, *a, **k)

        class SpyMemmap(real_memmap):
            def __new__(cls, filename, *a, **k):
                self.paths.append(os.fspath(filename))
                return real_memmap.__new__(real_memmap, filename, *a, **k)

        monkeypatch.setattr(builtins, "open", spy_open)
        monkeypatch.setattr(np, "memmap", SpyMemmap)

    def bins(self):
        return [p for p in self.paths if p.endswith(".bin")]


def _rewrite(path: str, data: np.ndarray) -> None:
    """Rewrite a file in place, as a later write would: its mtime moves on (set explicitly, since
    two writes within one tick of the kernel's coarse clock may share a timestamp)."""
    before = os.stat(path).st_mtime_ns
    data.tofile(path)
    os.utime(path, ns=(before, max(os.stat(path).st_mtime_ns, before + 10 ** 9)))


def _error(fn):
    with pytest.raises(DataError) as e:
        fn()
    return str(e.value)


def test_the_cached_check_agrees_with_the_reference(pair, tiny_tokenizer, tmp_path):
    ref = validate_indexed_dataset(pair, tokenizer=tiny_tokenizer)
    for _ in range(2):  # scanned, then from the record
        got, _ = check_indexed_dataset_cached(pair, tokenizer=tiny_tokenizer,
                                              cache_dir=tmp_path / "c")
        assert (got.sequences, got.documents, got.tokens, got.max_token) == (
            ref.sequences, ref.documents, ref.tokens, ref.max_token)
    # The vocabulary is checked against the record on every start-up, with the same line.
    small = ref.max_token  # one id too few
    want = _error(lambda: validate_indexed_dataset(pair, vocab_size=small))
    assert "token id" in want and f">= the tokenizer's vocab_size {small}" in want
    assert _error(lambda: check_indexed_dataset_cached(
        pair, vocab_size=small, cache_dir=tmp_path / "c")) == want


def test_a_second_start_up_reads_no_bin_bytes(pair, tiny_tokenizer, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first, cached = check_indexed_dataset_cached(pair, tokenizer=tiny_tokenizer, cache_dir=cache)
    assert not cached and len(list(cache.glob("*.json"))) == 1
    opened = Opened(monkeypatch)
    again, cached = check_indexed_dataset_cached(pair, tokenizer=tiny_tokenizer, cache_dir=cache)
    assert cached and again == first
    assert opened.bins() == [] and opened.paths  # the .idx digest and the record were read
    monkeypatch.undo()
    # Without the cache every start-up scans (the reference behaviour).
    opened = Opened(monkeypatch)
    validate_indexed_dataset(pair, tokenizer=tiny_tokenizer)
    assert pair + ".bin" in opened.bins()


def test_a_modified_bin_or_idx_is_validated_again(pair, tiny_tokenizer, tmp_path):
    cache = tmp_path / "cache"
    check_indexed_dataset_cached(pair, tokenizer=tiny_tokenizer, cache_dir=cache)
    # Same size, one token id past the vocabulary: the mtime changes, the record no longer fits.
    data = np.fromfile(pair + ".bin", dtype=np.uint16)
    data[len(data) // 2] = tiny_tokenizer.vocab_size + 7
    _rewrite(pair + ".bin", data)
    line = _error(lambda: check_indexed_dataset_cached(pair, tokenizer=tiny_tokenizer,
                                                       cache_dir=cache))
    assert line == _error(lambda: validate_indexed_dataset(pair, tokenizer=tiny_tokenizer))
    assert f"token id {tiny_tokenizer.vocab_size + 7} >=" in line
    # Repaired: validated again (and recorded) rather than the failure remembered.
    data[len(data) // 2] = 1
    _rewrite(pair + ".bin", data)
    _, cached = check_indexed_dataset_cached(pair, tokenizer=tiny_tokenizer, cache_dir=cache)
    assert not cached
    # An .idx rewritten in place with the same size and its old mtime: its digest differs.
    raw = bytearray(open(pair + ".idx", "rb").read())
    n_seq = int(np.frombuffer(raw[18:26], np.uint64)[0])
    lengths = np.frombuffer(raw, np.int32, n_seq, 34).copy()
    st = os.stat(pair + ".idx")
    lengths[0], lengths[1] = lengths[0] + 1, lengths[1] - 1  # pointers no longer match
    raw[34:34 + 4 * n_seq] = lengths.tobytes()
    open(pair + ".idx", "wb").write(bytes(raw))
    os.utime(pair + ".idx", ns=(st.st_atime_ns, st.st_mtime_ns))  # even with the old mtime
    line = _error(lambda: check_indexed_dataset_cached(pair, tokenizer=tiny_tokenizer,
                                                       cache_dir=cache))
    assert "sequence pointers do not match" in line


def _build_twice(rank, prefix, tokenizer, cache, bad):
    scans = []
    real = indexed.scan_dataset

    def counting(p):
        scans.append(p)
        return real(p)

    indexed.scan_dataset = counting
    try:
        out = []
        for _ in range(2):
            try:
                ds = build_gpt_datasets(tokenizer, seq_length=32, seed=1,
                                        num_samples=[20, 4, 0], blend=[prefix], split="8,2,0",
                                        cache_dir=cache)
                out.append(len(ds.train))
            except DataError as e:
                out.append(str(e))
        return out, len(scans)
    finally:
        indexed.scan_dataset = real


@pytest.mark.parametrize("bad", [False, True])
def test_only_rank_0_scans_and_every_rank_gets_its_answer(pair, tiny_tokenizer, tmp_path, bad):
    if bad:  # a token id past the vocabulary: every rank fails with rank 0's line
        data = np.fromfile(pair + ".bin", dtype=np.uint16)
        data[3] = tiny_tokenizer.vocab_size
        data.tofile(pair + ".bin")
    results = run_distributed(_build_twice, 2, pair, tiny_tokenizer, str(tmp_path / "cache"),
                              bad)
    (out0, scans0), (out1, scans1) = results
    assert scans1 == 0  # rank 1 never reads the data for validation
    assert scans0 == 1  # the second build reads the record
    assert out0 == out1
    if bad:  # the record holds what the files contain; the vocabulary is checked every time
        assert all(f"token id {tiny_tokenizer.vocab_size} >=" in o for o in out0)
    else:
        assert out0[0] == out0[1] >= 20
