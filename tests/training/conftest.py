"""Fixtures for the training tests: a small real corpus (paragraphs of three plays from the
embedded corpus, a 512-piece tokenizer) as a Megatron indexed dataset."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    from swax_megatron.data.embedded import embedded_corpus
    from swax_megatron.data.indexed import write_indexed_dataset
    from swax_megatron.data.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("tiny_corpus")
    plays = embedded_corpus("train")[:3]
    # Paragraphs as documents: enough of them for a 95/5 train/valid split by document.
    docs = [p for play in plays for p in play.split("\n\n") if p.strip()]
    tok = train_tokenizer(docs, root / "tok", 512, num_threads=1)
    write_indexed_dataset(docs, root / "plays", tok)
    return {"prefix": str(root / "plays"), "tokenizer": str(tok.model_path),
            "cache": str(root / "cache")}
