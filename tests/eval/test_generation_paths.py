"""The harness' greedy generation (HFBackend.generate: the batch's common prefix prefilled once and its
cache copied to every row, the rest left-padded, then greedy steps) equals transformers' generate() on
the whole prompts (HFBackend.reference_generate), token for token: with and without a shared prefix,
with prompts of different lengths (padding between the shared prefix and each row's rest), windows
shorter than the prompts, and rows that stop at the end-of-document token."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hf"))
from hf_testing import tiny_model  # noqa: E402

from swax_megatron.eval.harness import MIN_SHARED_PREFIX, HFBackend, common_prefix_length  # noqa: E402


def _prompts(shared: int, tails, seed=0, vocab=101):
    g = torch.Generator().manual_seed(seed)
    head = torch.randint(1, vocab, (shared,), generator=g).tolist()
    return [head + torch.randint(1, vocab, (n,), generator=g).tolist() for n in tails]


@pytest.mark.parametrize("shared, tails", [
    (MIN_SHARED_PREFIX + 37, [9, 23, 1, 16]),  # shared path, rests of different lengths
    (MIN_SHARED_PREFIX + 37, [12]),             # one prompt: the plain path
    (5, [40, 90, 71]),                          # a prefix too short to share
])
def test_fast_generate_equals_transformers_generate(shared, tails):
    backend = HFBackend(tiny_model())
    prompts = _prompts(shared, tails)
    with torch.no_grad():
        want = backend.reference_generate(prompts, 12, eos=7)
        got = backend.generate(prompts, 12, eos=7)
    assert got == want


def test_rows_that_end_stop_and_the_batch_stops_when_all_ended():
    backend = HFBackend(tiny_model(seed=3))
    prompts = _prompts(MIN_SHARED_PREFIX + 20, [3, 8, 5])
    with torch.no_grad():
        free = backend.reference_generate(prompts, 10, eos=100)  # 100: a token the rows do not produce first
        eos = free[1][2]  # row 1 ends at its third token
        want = backend.reference_generate(prompts, 10, eos=eos)
        got = backend.generate(prompts, 10, eos=eos)
    assert got == want and eos in got[1]


def test_common_prefix_length():
    assert common_prefix_length([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert common_prefix_length([[5, 1], [6, 1]]) == 0
    assert common_prefix_length([[1, 2], [1, 2]]) == 2
