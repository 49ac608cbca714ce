"""Fixtures for the training tests: a small real corpus (paragraphs of three plays from the
embedded corpus, a 512-piece tokenizer) as a Megatron indexed dataset, and the overrides that
shrink recipes/tiny/swax.yaml to a model that trains a step in a fraction of a second."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_RECIPE = "recipes/tiny/swax.yaml"


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


def tiny_overrides(corpus, output_root: Path, *, steps: int = 8, every: int = 4,
                   extra=()) -> list:
    return [
        f"run.output_root={output_root}",
        f"data.source=[{corpus['prefix']}]", f"data.tokenizer_model={corpus['tokenizer']}",
        "data.split=95,5,0", f"data.cache_dir={corpus['cache']}",
        "model.hidden_size=64", "model.num_layers=2", "model.layer_pattern=XS",
        "model.num_attention_heads=4", "model.num_query_groups=2", "model.mlstm.num_heads=2",
        "model.mlstm.chunk_size=32", "model.swa.window=64",
        "train.seq_length=128", "train.micro_batch_size=2", "train.global_batch_size=4",
        f"train.steps={steps}", "train.eval_every=4", "train.eval_iters=1",
        "train.window_schedule.short=16", "train.window_schedule.long=64",
        "eval.window=64",
        "optim.warmup_steps=2", "optim.lr=1e-2",
        f"checkpoint.every_steps={every}", "checkpoint.every_minutes=null",
        "checkpoint.keep_last=3",
        *extra,
    ]
