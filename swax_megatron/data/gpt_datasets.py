"""Train / valid / test GPTDatasets through Megatron's BlendedMegatronDatasetBuilder.

Call on every rank of an initialised process group (gloo on CPU): Megatron's builder builds the
index caches (under `cache_dir`) on rank 0 first and the other ranks read them after a barrier;
later runs read them too. Every prefix is validated first (files, sizes, token ids against the
tokenizer, splits that would be empty), because Megatron meets those problems with asserts,
memmap errors or an endless loop; on rank 0 only, the others get its results, and with a
`cache_dir` once per version of the files (indexed.check_indexed_dataset_cached).

A blend is any of: "prefix"; ["p1", "p2"] (weights from sizes); [("p1", 0.7), ("p2", 0.3)];
or Megatron's own (["p1", "p2"], [0.7, 0.3]).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from .errors import DataError
from .indexed import DatasetCheck, check_indexed_dataset_cached

SPLIT_NAMES = ("train", "valid", "test")
CHECKS_DIR = "dataset-checks"  # under cache_dir: indexed.check_indexed_dataset_cached's records


def validate_on_rank0(prefixes: Sequence[str], tokenizer, check_dir: Optional[Path]
                      ) -> dict[str, DatasetCheck]:
    """Validate every prefix on rank 0 (through the cache in `check_dir`: once per version of
    the files) and hand the results, or the first error, to the other ranks: a start-up reads
    the data for validation on one rank at most, and every rank fails with the same line."""
    import torch.distributed as dist

    shared = dist.is_initialized() and dist.get_world_size() > 1
    box: list[Any] = [None, None]
    if not shared or dist.get_rank() == 0:
        try:
            box[0] = {p: check_indexed_dataset_cached(p, tokenizer=tokenizer,
                                                      cache_dir=check_dir)[0] for p in prefixes}
        except Exception as e:  # noqa: BLE001 - re-raised here, after telling the other ranks
            if not shared:
                raise
            box[1] = e if isinstance(e, DataError) else DataError(
                None, f"dataset validation failed on rank 0: {type(e).__name__}: {e}")
            dist.broadcast_object_list(box, src=0)
            raise
    if shared:
        dist.broadcast_object_list(box, src=0)
    if box[1] is not None:
        raise box[1]
    return box[0]


def normalize_blend(blend: Any, what: str = "blend") -> tuple[list[str], Optional[list[float]]]:
    if isinstance(blend, (str, os.PathLike)):
        return [str(blend)], None
    items = list(blend) if blend is not None else []
    if (len(items) == 2 and isinstance(items[0], (list, tuple))
            and (items[1] is None or isinstance(items[1], (list, tuple)))
            and all(isinstance(p, (str, os.PathLike)) for p in items[0])):
        prefixes, weights = [str(p) for p in items[0]], items[1]
    elif items and all(isinstance(x, (str, os.PathLike)) for x in items):
        prefixes, weights = [str(p) for p in items], None
    elif items and all(isinstance(x, (list, tuple)) and len(x) == 2 for x in items):
        prefixes, weights = [str(p) for p, _ in items], [w for _, w in items]
    else:
        raise DataError(None, f"{what}: expected a prefix, a list of prefixes, (prefix, weight) "
                              f"pairs or (prefixes, weights), got {blend!r}")
    if not prefixes:
        raise DataError(None, f"{what} is empty")
    if weights is not None:
        weights = list(weights)
        if len(weights) != len(prefixes):
            raise DataError(None, f"{what}: {len(prefixes)} prefixes but {len(weights)} weights")
        for w in weights:
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0:
                raise DataError(None, f"{what}: weights must be positive numbers, got {weights}")
        weights = [float(w) for w in weights]
    return prefixes, weights


def _split_matrix(split: str):
    from megatron.core.datasets.blended_megatron_dataset_config import (
        convert_split_vector_to_split_matrix, parse_and_normalize_split)

    parts = split.split(",") if isinstance(split, str) else None
    try:
        if not parts or len(parts) > 3 or any(float(x) < 0 for x in parts) \
                or sum(float(x) for x in parts) <= 0:
            raise ValueError
    except ValueError:
        raise DataError(None, f"split must be up to three non-negative numbers like '969,30,1', "
                              f"got {split!r}") from None
    return convert_split_vector_to_split_matrix(parse_and_normalize_split(split))


def _check_split_coverage(prefix: str, n_seq: int, matrix, split: str) -> None:
    # The same arithmetic as BlendedMegatronDatasetBuilder._build_megatron_dataset_splits: a split
    # range that rounds to zero documents makes GPTDataset loop forever.
    for name, bookends in zip(SPLIT_NAMES, matrix):
        if bookends is None:
            continue
        beg, end = (int(round(b * float(n_seq))) for b in bookends)
        if end <= beg:
            raise DataError(prefix, f"the {name} split gets no documents ({n_seq} documents, "
                                    f"split '{split}'): add documents, change the split, or "
                                    f"give per-split blends")


@dataclass
class GPTDatasets:
    train: Any
    valid: Any
    test: Any

    def __iter__(self):
        return iter((self.train, self.valid, self.test))


def build_gpt_datasets(tokenizer, *, seq_length: int, seed: int,
                       num_samples: Sequence[Optional[int]],
                       blend: Any = None, split: Optional[str] = None,
                       blend_per_split: Optional[Sequence[Any]] = None,
                       cache_dir: Optional[str | os.PathLike] = None,
                       eod_mask_loss: bool = False, create_attention_mask: bool = False,
                       reset_position_ids: bool = False, reset_attention_mask: bool = False,
                       is_built_on_rank: Optional[Callable[[], bool]] = None) -> GPTDatasets:
    """Build (train, valid, test) GPTDatasets; a split without data is None.

    num_samples: samples to draw per split (train: steps x global batch; valid: evaluations x
    eval_iters x global batch; ...). Samples are `seq_length` tokens plus the shifted label.
    Give `blend` + `split` (one distribution cut by the split string) or `blend_per_split`
    (three blends or None). `create_attention_mask` is off by default: the model builds its own
    (sliding-window) masks, and a dense [1, S, S] mask per sample costs memory for nothing."""
    import torch
    from megatron.core.datasets.blended_megatron_dataset_builder import \
        BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    if isinstance(seq_length, bool) or not isinstance(seq_length, int) or seq_length <= 0:
        raise DataError(None, f"seq_length must be a positive integer, got {seq_length!r}")
    sizes = list(num_samples)
    if len(sizes) != 3 or any(s is not None and (not isinstance(s, int) or s < 0) for s in sizes):
        raise DataError(None, f"num_samples must be three non-negative integers (train, valid, "
                              f"test), got {num_samples!r}")
    if (blend is None) == (blend_per_split is None):
        raise DataError(None, "give either blend (with split) or blend_per_split")

    blends: list[tuple[list[str], Optional[list[float]]]] = []
    if blend is not None:
        if split is None:
            raise DataError(None, "blend needs a split string such as '969,30,1'")
        norm_blend = normalize_blend(blend)
        matrix = _split_matrix(split)
        blends.append(norm_blend)
    else:
        per_split = list(blend_per_split)
        if len(per_split) != 3:
            raise DataError(None, f"blend_per_split needs 3 entries (train, valid, test), "
                                  f"got {len(per_split)}")
        per_split = [None if b is None else normalize_blend(b, f"blend_per_split[{name}]")
                     for b, name in zip(per_split, SPLIT_NAMES)]
        blends.extend(b for b in per_split if b is not None)

    unique = list(dict.fromkeys(prefix for prefixes, _ in blends for prefix in prefixes))
    checks = validate_on_rank0(unique, tokenizer,
                               None if cache_dir is None else Path(cache_dir) / CHECKS_DIR)
    if blend is not None:
        for prefix in unique:
            _check_split_coverage(prefix, checks[prefix].sequences, matrix, split)

    many = any(len(p) > 1 for p, _ in blends)
    if many and cache_dir is not None and not torch.distributed.is_initialized():
        raise DataError(None, "blending several prefixes with a cache_dir needs torch.distributed "
                              "initialised (Megatron's BlendedDataset calls get_rank()); start a "
                              "1-process gloo group or pass cache_dir=None")
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)

    config = GPTDatasetConfig(
        random_seed=seed, sequence_length=seq_length,
        blend=norm_blend if blend is not None else None, split=split,
        blend_per_split=per_split if blend is None else None,
        path_to_cache=None if cache_dir is None else str(cache_dir), tokenizer=tokenizer,
        reset_position_ids=reset_position_ids, reset_attention_mask=reset_attention_mask,
        eod_mask_loss=eod_mask_loss, create_attention_mask=create_attention_mask,
        mid_level_dataset_surplus=0.005,
    )
    builder = BlendedMegatronDatasetBuilder(GPTDataset, sizes, is_built_on_rank or (lambda: True),
                                            config)
    with index_build_lock(cache_dir):
        return GPTDatasets(*builder.build())


BUILD_LOCK = ".index-build.lock"


@contextlib.contextmanager
def index_build_lock(cache_dir):
    """Jobs that share data.cache_dir (a sweep's runs start together) build megatron's index files
    one at a time. megatron writes them in place (numpy.save) and a job that finds them
    half-written fails reading them (EOFError: No data left in file). megatron builds on global
    rank 0 first and the other ranks read after its barrier, so rank 0 alone takes the lock (the
    others taking it too would deadlock on that barrier). File systems without flock: unlocked."""
    import fcntl

    import torch

    if cache_dir is None or (torch.distributed.is_initialized() and torch.distributed.get_rank() != 0):
        yield
        return
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    fd = os.open(Path(cache_dir) / BUILD_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # e.g. Lustre without `-o flock`: as before, unserialised
            pass
        yield
    finally:
        os.close(fd)  # releases the lock
