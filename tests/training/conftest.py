"""Fixtures for the training tests: a small real corpus (paragraphs of three plays from the
embedded corpus, a 512-piece tokenizer) as a Megatron indexed dataset."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    from forkrun import make_tiny_corpus

    return make_tiny_corpus(tmp_path_factory.mktemp("tiny_corpus"))
