"""Every bad data input gives one DataError naming the file and the problem, raised before
Megatron sees the files (Megatron would assert, fail in a memmap, or loop forever)."""

import shutil

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

from swax_megatron.data import (DataError, build_gpt_datasets, preprocess_files,
                                validate_indexed_dataset, write_indexed_dataset)
from swax_megatron.data.tokenizer import train_tokenizer

DOCS = ["O, pardon me, thou bleeding piece of earth,", "That I am meek and gentle",
        "with these butchers!"]


@pytest.fixture
def good(tiny_tokenizer, tmp_path):
    prefix = tmp_path / "good"
    write_indexed_dataset(DOCS, prefix, tiny_tokenizer)
    return prefix


def copy_pair(prefix, name):
    new = prefix.with_name(name)
    shutil.copy(f"{prefix}.bin", f"{new}.bin")
    shutil.copy(f"{prefix}.idx", f"{new}.idx")
    return new


def test_good_pair_passes(good, tiny_tokenizer):
    assert validate_indexed_dataset(good, tokenizer=tiny_tokenizer).documents == 3


def test_missing_files(good):
    with pytest.raises(DataError, match=r"nothere\.idx: missing index file of dataset prefix"):
        validate_indexed_dataset(good.with_name("nothere"))
    p = copy_pair(good, "nobin")
    p.with_suffix(".bin").unlink()
    with pytest.raises(DataError, match=r"nobin\.bin: missing data file"):
        validate_indexed_dataset(p)
    with pytest.raises(DataError, match="give the dataset prefix, without .bin"):
        validate_indexed_dataset(f"{good}.bin")


def test_truncated_bin(good):
    p = copy_pair(good, "short")
    data = p.with_suffix(".bin").read_bytes()
    p.with_suffix(".bin").write_bytes(data[:-6])
    with pytest.raises(DataError, match=rf"short\.bin: truncated: the index says {len(data)} "
                                        rf"bytes, the file has {len(data) - 6}"):
        validate_indexed_dataset(p)


def test_bin_idx_mismatch(good, tiny_tokenizer, tmp_path):
    other = tmp_path / "other"
    write_indexed_dataset(DOCS + ["one more document"], other, tiny_tokenizer)
    p = copy_pair(good, "mixed")
    shutil.copy(f"{other}.bin", f"{p}.bin")  # a .bin from another run next to this .idx
    with pytest.raises(DataError, match=r"mixed\.bin: does not match its index"):
        validate_indexed_dataset(p)


def test_truncated_or_foreign_idx(good):
    p = copy_pair(good, "cutidx")
    raw = p.with_suffix(".idx").read_bytes()
    p.with_suffix(".idx").write_bytes(raw[:-5])
    with pytest.raises(DataError, match=r"cutidx\.idx: truncated index"):
        validate_indexed_dataset(p)
    p.with_suffix(".idx").write_bytes(raw[:20])
    with pytest.raises(DataError, match="shorter than the header"):
        validate_indexed_dataset(p)
    p.with_suffix(".idx").write_bytes(b"NOTANIDX!" + raw[9:])
    with pytest.raises(DataError, match=r"cutidx\.idx: not a Megatron index file"):
        validate_indexed_dataset(p)


def test_token_ids_beyond_vocab(tiny_tokenizer, tmp_path):
    class Wide:  # produced by a 1000-piece tokenizer
        vocab_size, eod = 1000, 2

        def tokenize_batch(self, texts, num_threads=1):
            return [[5, 900] for _ in texts]

    write_indexed_dataset(["x"], tmp_path / "wide", Wide())
    with pytest.raises(DataError, match=r"wide\.bin: token id 900 >= the tokenizer's "
                                        r"vocab_size 512"):
        validate_indexed_dataset(tmp_path / "wide", tokenizer=tiny_tokenizer)


def test_data_from_another_tokenizer(good, small_docs, tmp_path):
    other = train_tokenizer(small_docs[1:2], tmp_path / "other_tok", 512, num_threads=1)
    with pytest.raises(DataError, match=r"good\.bin: was tokenized with another tokenizer"):
        validate_indexed_dataset(good, tokenizer=other)


def test_empty_document_is_refused_before_megatron(tiny_tokenizer, tmp_path, gloo_world1):
    prefix = tmp_path / "holes"
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
    builder.add_document(np.array([5, 6, 2], dtype=np.uint16), [3])
    builder.add_document(np.array([], dtype=np.uint16), [0])
    builder.finalize(f"{prefix}.idx")
    with pytest.raises(DataError, match=r"holes\.idx: 1 empty document\(s\) \(first: #1\)"):
        validate_indexed_dataset(prefix)
    # Through the builder, the same error comes out instead of GPTDataset's endless loop.
    with pytest.raises(DataError, match="empty document"):
        build_gpt_datasets(tiny_tokenizer, seq_length=8, seed=1, num_samples=[4, 0, 0],
                           blend_per_split=[[str(prefix)], None, None])


def test_builder_rejects_bad_blends_and_splits(good, tiny_tokenizer, tmp_path, gloo_world1):
    kw = dict(seq_length=8, seed=1, num_samples=[4, 2, 2])
    with pytest.raises(DataError, match=r"absent\.idx: missing index file"):
        build_gpt_datasets(tiny_tokenizer, blend=[str(good), str(tmp_path / "absent")],
                           split="1,1,1", **kw)
    with pytest.raises(DataError, match="the valid split gets no documents \\(3 documents, "
                                        "split '98,1,1'\\)"):
        build_gpt_datasets(tiny_tokenizer, blend=str(good), split="98,1,1", **kw)
    cases = [
        (dict(blend=([str(good)], [0.5, 0.5]), split="1,1,1"), "1 prefixes but 2 weights"),
        (dict(blend=[(str(good), -1.0)], split="1,1,1"), "weights must be positive"),
        (dict(blend=str(good)), "blend needs a split string"),
        (dict(blend=str(good), split="a,b"), "split must be up to three non-negative numbers"),
        (dict(blend=str(good), split="0,0,0"), "split must be"),
        (dict(blend=str(good), split="1,1", blend_per_split=[str(good)] * 3), "either blend"),
        (dict(blend_per_split=[str(good)] * 2), "needs 3 entries"),
        (dict(blend=[1, 2], split="1,1,1"), "expected a prefix, a list of prefixes"),
    ]
    for extra, message in cases:
        with pytest.raises(DataError, match=message.replace("(", "\\(").replace(")", "\\)")):
            build_gpt_datasets(tiny_tokenizer, **kw, **extra)
    with pytest.raises(DataError, match="num_samples must be three"):
        build_gpt_datasets(tiny_tokenizer, seq_length=8, seed=1, num_samples=[4, 2],
                           blend=str(good), split="1,1,1")
    with pytest.raises(DataError, match="seq_length must be a positive integer"):
        build_gpt_datasets(tiny_tokenizer, seq_length=0, seed=1, num_samples=[4, 2, 2],
                           blend=str(good), split="1,1,1")


def test_bad_input_files(tiny_tokenizer, tmp_path):
    out = tmp_path / "out"
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "fine"}\n{"text": "unterminated\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: invalid JSON"):
        preprocess_files([bad_json], out, tiny_tokenizer)
    wrong_key = tmp_path / "key.jsonl"
    wrong_key.write_text('{"body": "x"}\n')
    with pytest.raises(DataError, match=r"key\.jsonl:1: no key 'text' in the JSON record "
                                        r"\(has: \['body'\]\)"):
        preprocess_files([wrong_key], out, tiny_tokenizer)
    not_str = tmp_path / "num.jsonl"
    not_str.write_text('{"text": 42}\n')
    with pytest.raises(DataError, match=r"num\.jsonl:1: 'text' is a int, not a string"):
        preprocess_files([not_str], out, tiny_tokenizer)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.txt: not UTF-8 text"):
        preprocess_files([latin1], out, tiny_tokenizer)
    with pytest.raises(DataError, match=r"nofile\.txt: input file not found"):
        preprocess_files([latin1, tmp_path / "nofile.txt"], out, tiny_tokenizer)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match=r"out: no non-empty documents to write"):
        preprocess_files([empty], out, tiny_tokenizer)
    assert not list(tmp_path.glob("out*")) and not list(tmp_path.glob(".out*"))


def test_sampled_token_scan_still_sees_both_ends(tiny_tokenizer, tmp_path, monkeypatch):
    from swax_megatron.data import indexed

    class Ends:  # a bad id at the very start and at the very end of a long stream
        vocab_size, eod = 1000, 2

        def tokenize_batch(self, texts, num_threads=1):
            return [[int(t)] * 50 for t in texts]

    write_indexed_dataset(["5", "6", "7"], tmp_path / "tail", Ends())
    write_indexed_dataset(["900", "6", "7"], tmp_path / "head", Ends())
    monkeypatch.setattr(indexed, "_SCAN_CHUNK_TOKENS", 8)
    for name in ("tail", "head"):
        if name == "tail":  # the last token is eod=2: put a bad id just before it
            data = np.memmap(tmp_path / "tail.bin", dtype=np.uint16, mode="r+")
            data[-2] = 700
            data.flush()
            del data
        with pytest.raises(DataError, match=r"token id (700|900) >= the tokenizer's vocab_size"):
            validate_indexed_dataset(tmp_path / name, tokenizer=tiny_tokenizer,
                                     max_scan_bytes=32)  # 16 tokens of 153: two sampled chunks
