"""Reference numbers for a training run's data, e.g. the unigram baseline a language model must
beat (the main job's summary reports its validation loss against it)."""

from __future__ import annotations

import numpy as np

from .indexed import bin_path, validate_indexed_dataset


def token_counts(prefix, vocab_size: int) -> np.ndarray:
    info = validate_indexed_dataset(prefix, vocab_size=vocab_size)
    data = np.memmap(bin_path(prefix), dtype=info.dtype, mode="r", shape=(info.tokens,))
    return np.bincount(data, minlength=vocab_size).astype(np.float64)


def unigram_baseline_loss(train_prefix, eval_prefix, vocab_size: int, alpha: float = 1.0) -> float:
    """Cross-entropy (nats / token) of the eval tokens under the train set's unigram
    distribution with add-`alpha` smoothing: the loss of a model that ignores context."""
    p = token_counts(train_prefix, vocab_size) + alpha
    p /= p.sum()
    q = token_counts(eval_prefix, vocab_size)
    return float(-(q * np.log(p)).sum() / q.sum())
