"""Small pieces of the trainer: batch layout, unigram baselines, metrics file, exit codes,
signal flag, fault-plan parsing, launcher environments."""

import json
import math
import os
import signal

import numpy as np
import pytest
import torch

from swax_megatron.training import distributed
from swax_megatron.training.batches import (BatchLayout, cross_entropy, entropy, microbatches,
                                            token_counts)
from swax_megatron.training.faults import Fault, FaultSpecError, parse
from swax_megatron.training.launch import combine_exit_codes
from swax_megatron.training.metrics import RunLogger, read_metrics
from swax_megatron.exit_codes import EXIT_REQUEUE
from swax_megatron.training.signals import StopRequest


class _Samples:
    """Stands in for a GPTDataset: sample i is the token sequence [i, i, ...]."""

    def __init__(self, n, seq=4, vocab=50):
        self.n, self.seq, self.vocab = n, seq, vocab

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        t = torch.full((self.seq,), i % self.vocab, dtype=torch.long)
        return {"tokens": t, "labels": (t + 1) % self.vocab, "loss_mask": torch.ones(self.seq)}


@pytest.mark.parametrize("micro, dp", [(1, 1), (2, 2), (1, 4), (4, 2)])
def test_batch_layout_reads_each_sample_of_a_global_batch_once(micro, dp):
    gbs = 8
    seen = []
    for rank in range(dp):
        layout = BatchLayout(micro, gbs, dp, rank)
        for base in (0, gbs, 5 * gbs):
            for m in range(layout.num_microbatches):
                seen += [(base, i) for i in layout.indices(base, m)]
    for base in (0, gbs, 5 * gbs):
        assert sorted(i for b, i in seen if b == base) == list(range(base, base + gbs))


def test_microbatches_collate_and_refuse_to_run_past_the_data():
    ds = _Samples(16)
    layout = BatchLayout(2, 4, 2, 1)
    batches = microbatches(ds, layout, 4, torch.device("cpu"))
    assert len(batches) == 1 and batches[0]["tokens"][:, 0].tolist() == [6, 7]
    with pytest.raises(IndexError, match="from a dataset of 16 samples"):
        microbatches(ds, layout, 14, torch.device("cpu"))
    with pytest.raises(ValueError, match="not a multiple of micro batch"):
        BatchLayout(3, 8, 2, 0)


def test_unigram_entropy_and_cross_entropy():
    counts = np.array([2, 2, 0, 4])
    p = np.array([0.25, 0.25, 0.5])
    assert entropy(counts) == pytest.approx(-(p * np.log(p)).sum())
    # A model estimated from the same counts (add-one smoothed) is worse than the entropy.
    assert cross_entropy(counts, counts) > entropy(counts)
    assert cross_entropy(np.array([1, 0]), np.array([0, 0])) == pytest.approx(math.log(2))
    ds = _Samples(6, seq=3, vocab=4)
    c = token_counts(ds, range(6), 4)
    assert c.tolist() == [3, 6, 6, 3]  # labels (i % 4 + 1) % 4 for i = 0..5, three tokens each


def test_metrics_are_append_only_and_the_history_drops_superseded_records(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [{"kind": "train", "step": s, "loss": 1.0 / s} for s in range(1, 7)]
    before = "".join(json.dumps(r) + "\n" for r in lines) + '{"kind": "train", "st'
    path.write_text(before)
    log = RunLogger(tmp_path, total_steps=10, start_step=4, progress=None, tensorboard=False,
                    attempt_info={"resumed_from": "iter_0000004"})
    log.train({"step": 5, "loss": float("nan"), "lr": 0.1, "window": 8, "tokens_per_s": 1.0})
    log.close()
    assert path.read_text().startswith(before)  # nothing of the earlier attempt is lost
    history = [r for r in read_metrics(path) if r["kind"] == "train"]
    assert [r["step"] for r in history] == [1, 2, 3, 4, 5]
    assert history[3]["loss"] == 0.25 and history[4]["loss"] == "nan"
    everything = read_metrics(path, all_attempts=True)
    assert [r["step"] for r in everything if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6, 5]
    (attempt,) = [r for r in everything if r["kind"] == "attempt"]
    assert attempt == {"kind": "attempt", "attempt": 1, "start_step": 4,
                       "resumed_from": "iter_0000004"}
    # A second attempt from step 2 supersedes steps 3..5 of both earlier attempts.
    log = RunLogger(tmp_path, total_steps=10, start_step=2, progress=None, tensorboard=False)
    log.close()
    assert [r["step"] for r in read_metrics(path) if r["kind"] == "train"] == [1, 2]
    assert [r["attempt"] for r in read_metrics(path) if r["kind"] == "attempt"] == [1, 2]


def test_exit_code_of_a_job():
    assert combine_exit_codes([0, 0]) == 0
    assert combine_exit_codes([EXIT_REQUEUE] * 2) == EXIT_REQUEUE
    assert combine_exit_codes([-9, EXIT_REQUEUE]) == 137
    assert combine_exit_codes([0, 2]) == 2
    assert combine_exit_codes([0, EXIT_REQUEUE]) == EXIT_REQUEUE


def test_stop_request_records_the_first_signal_and_restores_handlers():
    before = signal.getsignal(signal.SIGUSR1)
    stop = StopRequest()
    try:
        assert not stop.local
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.local and stop.name == "SIGUSR1"
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGUSR1) is before


def test_fault_plan_parsing():
    assert parse("kill@after_save:4, signal@step:3:USR1:1") == [
        Fault("kill", "after_save", 4), Fault("signal", "step", 3, "USR1", 1)]
    assert parse("signal@step:2:TERM") == [Fault("signal", "step", 2, "TERM", None)]
    for bad in ("kill@later:3", "signal@step:3:NOPE", "explode@step:1", "kill@after_save:x"):
        with pytest.raises(FaultSpecError, match="cannot parse"):
            parse(bad)


def test_launcher_environment_detection():
    d = distributed.detect({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1",
                            "LOCAL_WORLD_SIZE": "4"})
    assert (d.rank, d.world_size, d.local_rank, d.local_world_size, d.launcher) == (
        3, 8, 1, 4, "torchrun")
    d = distributed.detect({"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1",
                            "SLURM_NTASKS_PER_NODE": "8(x2)"})
    assert (d.rank, d.world_size, d.local_rank, d.local_world_size, d.launcher) == (
        5, 16, 1, 8, "slurm")
    assert distributed.detect({}).launcher == "single"


def test_determinism_reaches_transformer_engine(monkeypatch):
    # TE reads NVTE_ALLOW_NONDETERMINISTIC_ALGO when it picks an attention backward; the recipe's
    # train.deterministic must set it (before TE is imported) both ways.
    from swax_megatron.training.distributed import set_determinism

    monkeypatch.delenv("NVTE_ALLOW_NONDETERMINISTIC_ALGO", raising=False)
    set_determinism(True)
    assert os.environ["NVTE_ALLOW_NONDETERMINISTIC_ALGO"] == "0"
    set_determinism(False)
    assert os.environ["NVTE_ALLOW_NONDETERMINISTIC_ALGO"] == "1"
