"""Micro-batches from a GPTDataset by position, and the unigram baseline of a loss.

The data position is one integer, the number of training samples consumed. A step reads the
global batch [consumed, consumed + global_batch): micro-batch m of data-parallel rank r takes
samples consumed + (m * dp + r) * micro + [0, micro), the layout of Megatron's pretraining
sampler. No iterator state exists, so a resumed run reads exactly what the uninterrupted run
would have read, and ranks of one data-parallel replica (TP / PP peers) read the same samples.
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, List, Sequence

import numpy as np
import torch


class BatchLayout:
    def __init__(self, micro_batch_size: int, global_batch_size: int, dp_size: int,
                 dp_rank: int):
        if global_batch_size % (micro_batch_size * dp_size):
            raise ValueError(f"global batch {global_batch_size} is not a multiple of micro batch "
                             f"{micro_batch_size} x data-parallel size {dp_size}")
        self.micro, self.glob, self.dp, self.rank = micro_batch_size, global_batch_size, dp_size, dp_rank
        self.num_microbatches = global_batch_size // (micro_batch_size * dp_size)

    def indices(self, base: int, micro_index: int) -> List[int]:
        start = base + (micro_index * self.dp + self.rank) * self.micro
        return list(range(start, start + self.micro))


def collate(samples: Sequence[Dict[str, torch.Tensor]], device) -> Dict[str, torch.Tensor]:
    """A micro-batch [micro, seq]; under Ulysses (megatron's context parallelism) this rank's share
    of the sequence, in megatron's layout (2 x cp chunks, rank r keeps r and 2cp-1-r)."""
    from megatron.core.utils import get_batch_on_this_cp_rank

    return get_batch_on_this_cp_rank({k: torch.stack([s[k] for s in samples]).to(device, non_blocking=True)
                                      for k in ("tokens", "labels", "loss_mask")})


def microbatches(dataset, layout: BatchLayout, base: int, device) -> List[Dict[str, torch.Tensor]]:
    """This rank's micro-batches of the global batch starting at sample `base`."""
    n = len(dataset)
    out = []
    for m in range(layout.num_microbatches):
        idx = layout.indices(base, m)
        if idx[-1] >= n:
            raise IndexError(f"sample {idx[-1]} requested from a dataset of {n} samples")
        out.append(collate([dataset[i] for i in idx], device))
    return out


def token_counts(dataset, indices: Iterable[int], vocab_size: int) -> np.ndarray:
    """Counts of the label tokens (loss-masked positions only) of the given samples."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for i in indices:
        s = dataset[i]
        labels = s["labels"].numpy()[s["loss_mask"].numpy() > 0]
        counts += np.bincount(labels, minlength=vocab_size)[:vocab_size]
    return counts


def entropy(counts: np.ndarray) -> float:
    """Entropy (nats) of the empirical distribution: the loss of the best unigram model *of
    these very tokens*, a strict baseline for a language model's loss on them."""
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def cross_entropy(target_counts: np.ndarray, model_counts: np.ndarray) -> float:
    """Loss (nats) on `target_counts` of the add-one smoothed unigram model of `model_counts`."""
    q = (model_counts + 1.0) / (model_counts.sum() + len(model_counts))
    return float(-(target_counts * np.log(q)).sum() / target_counts.sum())


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else float("inf")
