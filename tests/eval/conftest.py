"""Shared fixtures for the evaluation task tests: a small tokenizer trained once per session on
the embedded corpus (the run's kind of tokenizer: SentencePiece BPE, byte fallback)."""

import pytest

from swax_megatron.data.embedded import embedded_corpus
from swax_megatron.data.tokenizer import train_tokenizer


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    # 512 pieces from three plays: trains in about a second; digits fall back to bytes, so
    # numbers and UUIDs cost a token per character, the hard case for length fitting.
    return train_tokenizer(embedded_corpus("train")[:3], tmp_path_factory.mktemp("tok") / "t",
                           512, num_threads=1)
