"""Shared fixtures for the data tests: a tiny tokenizer trained once per session."""

import socket

import pytest
import torch

from swax_megatron.data.embedded import embedded_corpus
from swax_megatron.data.tokenizer import train_tokenizer

TINY_VOCAB = 512


@pytest.fixture(scope="session")
def small_docs():
    # Three plays (~400 kB): enough text for a 512-piece BPE, small enough to tokenize in ~0.3 s.
    return embedded_corpus("train")[:3]


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory, small_docs):
    return train_tokenizer(small_docs, tmp_path_factory.mktemp("tok") / "tiny", TINY_VOCAB,
                           num_threads=1)


@pytest.fixture
def gloo_world1():
    """A 1-process gloo group (Megatron's dataset builder calls torch.distributed), destroyed
    after the test so forked multi-rank tests start clean."""
    assert not torch.distributed.is_initialized()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                                         rank=0, world_size=1)
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()
