import gzip
import json

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from swax_megatron.data import (preprocess_files, read_documents, validate_indexed_dataset,
                                write_indexed_dataset)
from swax_megatron.data.indexed import meta_path
from swax_megatron.data.preprocess import iter_documents

DOCS = ["First document.\nWith two lines.", "", "Zweites Dokument — ünïcödé 🙂", "   \n ",
        "third " * 300]


def test_round_trip_tokens(tiny_tokenizer, tmp_path):
    prefix = tmp_path / "rt"
    stats = write_indexed_dataset(DOCS, prefix, tiny_tokenizer, batch_size=2)
    kept = [d for d in DOCS if d.strip()]
    assert (stats.documents, stats.skipped_empty) == (3, 2)
    expected = [tiny_tokenizer.tokenize(d) + [tiny_tokenizer.eod] for d in kept]
    assert stats.tokens == sum(map(len, expected))
    got = read_documents(prefix)
    assert [g.tolist() for g in got] == expected
    assert all(g.dtype == np.uint16 for g in got)
    assert [tiny_tokenizer.detokenize(g[:-1]) for g in got] == kept
    # Megatron's own reader agrees, document boundaries included.
    ds = IndexedDataset(str(prefix))
    assert len(ds) == 3 and ds.document_indices.tolist() == [0, 1, 2, 3]
    assert [ds[i].tolist() for i in range(3)] == expected
    info = validate_indexed_dataset(prefix, tokenizer=tiny_tokenizer)
    assert (info.documents, info.tokens) == (3, stats.tokens)
    assert info.max_token < tiny_tokenizer.vocab_size
    meta = json.loads(meta_path(prefix).read_text())
    assert meta["tokenizer_vocab_sha256"] == tiny_tokenizer.fingerprint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rt.bin", "rt.idx", "rt.meta.json"]


def test_preprocess_jsonl_and_text_modes(tiny_tokenizer, tmp_path):
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text("\n".join(json.dumps({"content": t, "id": i})
                               for i, t in enumerate(["one", "", "two ü"])) + "\n\n")
    gz = tmp_path / "b.jsonl.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"content": "three"}) + "\n")
    txt = tmp_path / "c.txt"
    txt.write_text("para one\nline two\n\n\npara two\n")

    assert list(iter_documents(txt)) == ["para one\nline two\n\n\npara two"]
    assert list(iter_documents(txt, text_mode="paragraph")) == ["para one\nline two", "para two"]
    assert list(iter_documents(txt, text_mode="line")) == ["para one", "line two", "", "",
                                                            "para two"]
    stats = preprocess_files([jsonl, gz, txt], tmp_path / "out", tiny_tokenizer,
                             json_key="content", text_mode="paragraph")
    assert (stats.documents, stats.skipped_empty) == (5, 1)
    texts = [tiny_tokenizer.detokenize(d[:-1]) for d in read_documents(tmp_path / "out")]
    assert texts == ["one", "two ü", "three", "para one\nline two", "para two"]


def test_rewrite_replaces_atomically(tiny_tokenizer, tmp_path):
    prefix = tmp_path / "x"
    write_indexed_dataset(["old text here"], prefix, tiny_tokenizer)
    write_indexed_dataset(["new", "texts"], prefix, tiny_tokenizer)
    assert len(read_documents(prefix)) == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_large_vocab_uses_int32(tmp_path):
    class Big:  # a tokenizer whose ids need 32 bits: the dtype follows Megatron's rule
        vocab_size, eod = 70_000, 69_999

        def tokenize_batch(self, texts, num_threads=1):
            return [[65_000 + len(t), 3] for t in texts]

    write_indexed_dataset(["ab", "abc"], tmp_path / "big", Big())
    docs = read_documents(tmp_path / "big")
    assert docs[0].dtype == np.int32 and [d.tolist() for d in docs] == [[65002, 3, 69999],
                                                                        [65003, 3, 69999]]
    assert validate_indexed_dataset(tmp_path / "big", vocab_size=70_000).max_token == 69_999


@pytest.mark.parametrize("mode", ["file", "paragraph", "line"])
def test_text_modes_skip_nothing_real(tiny_tokenizer, tmp_path, mode):
    f = tmp_path / "t.txt"
    f.write_text("a b\n\nc d\n")
    stats = preprocess_files([f], tmp_path / mode, tiny_tokenizer, text_mode=mode)
    assert stats.documents == {"file": 1, "paragraph": 2, "line": 2}[mode]


def test_unigram_baseline(tmp_path):
    from swax_megatron.data.stats import unigram_baseline_loss

    class Fixed:
        vocab_size, eod = 4, 0

        def tokenize_batch(self, texts, num_threads=1):
            return [[int(c) for c in t] for t in texts]

    write_indexed_dataset(["1112", "13"], tmp_path / "train", Fixed())  # + eod per document
    write_indexed_dataset(["12"], tmp_path / "eval", Fixed())
    # train counts (eod=0, 1, 2, 3) = (2, 4, 1, 1), +1 smoothing -> (3, 5, 2, 2) / 12
    p = np.array([3, 5, 2, 2]) / 12
    expected = -(np.log(p[1]) + np.log(p[2]) + np.log(p[0])) / 3
    assert unigram_baseline_loss(tmp_path / "train", tmp_path / "eval", 4) == pytest.approx(expected)
