"""Ulysses in the real trainer (forked processes, the real entry point, a tiny SWAX on a small
real corpus): a run at parallel.ulysses_size=2 trains like the same run on 2 data-parallel ranks,
and 2 x 2 Ulysses x data parallel like 4 data-parallel ranks (losses and grad norms to float32
round-off: the same tokens per step, split by sequence instead of by sample); its checkpoint
continues at ulysses 1 (resharded across Ulysses degrees) and exports to Hugging Face."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from forkrun import TINY_RECIPE, find_run_dir, fork_run, tiny_overrides, train_records

pytest.importorskip("deepspeed")


def _run(corpus, out, extra=(), probes=None):
    # The recall probe (synth_mqar fits in 128 tokens) runs at every evaluation, on the Ulysses shards too.
    argv = [TINY_RECIPE, *tiny_overrides(corpus, out / "runs", extra=["eval.probe_task=synth_mqar", *extra])]
    launch = fork_run(argv, 2, out / "logs", timeout=240)
    assert launch.codes == [0, 0], launch.log
    run_dir = find_run_dir(out / "runs")
    records = train_records(run_dir)
    if probes is not None:
        probes.extend((r["step"], r["probes"], r["score"], r["token_accuracy"])
                      for r in records if r["kind"] == "probe")
    return run_dir, [(r["step"], r["loss"], r["grad_norm"], r["window"], r["lr"])
                     for r in records if r["kind"] == "train"]


def _close(got, ref):
    assert [g[0] for g in got] == [r[0] for r in ref]
    for g, r in zip(got, ref):
        assert g[3:] == r[3:]  # window, lr
        assert g[1] == pytest.approx(r[1], rel=1e-5), (g, r)  # loss
        assert g[2] == pytest.approx(r[2], rel=1e-4), (g, r)  # grad norm


def test_ulysses2_trains_like_dp2_and_its_checkpoint_continues_at_ulysses1(tiny_corpus, tmp_path):
    # Heads: 4 attention (2 kv groups), mLSTM 2: all divisible by ulysses 2.
    dp2_probes, u2_probes = [], []
    _, dp2 = _run(tiny_corpus, tmp_path / "dp2", probes=dp2_probes)
    u2_dir, u2 = _run(tiny_corpus, tmp_path / "u2", ["parallel.ulysses_size=2"], probes=u2_probes)
    assert len(u2) == 8
    _close(u2, dp2)
    # The probe scores whole rows under Ulysses too: the same probes, counted once (argmax ties aside,
    # the weights agree to round-off, so the scores do).
    assert dp2_probes and [p[:2] for p in u2_probes] == [p[:2] for p in dp2_probes]
    for got, want in zip(u2_probes, dp2_probes):
        assert got[2:] == pytest.approx(want[2:], abs=1e-9), (got, want)
    # The export reads one Ulysses replica of the weights; its logits match the checkpoint's model.
    tool = Path(__file__).resolve().parents[2] / "tools" / "convert_to_hf.py"
    proc = subprocess.run([sys.executable, str(tool), str(u2_dir), "--out", str(tmp_path / "hf"),
                           "--verify"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "verify: max |logit difference|" in proc.stdout, proc.stderr
    # The ulysses-2 checkpoint at step 4 loads on 2 data-parallel ranks and goes on alike.
    _, resumed = _run(tiny_corpus, tmp_path / "r", [f"checkpoint.load={u2_dir / 'checkpoints' / 'iter_0000004'}"])
    _close(resumed, u2[4:])


def test_ulysses2_x_dp2_trains_like_dp4(tiny_corpus, tmp_path):
    # 4 processes: 2 replicas of a 2-way Ulysses group against 4 data-parallel ranks (micro batch 1).
    def run(name, extra):
        argv = [TINY_RECIPE, *tiny_overrides(tiny_corpus, tmp_path / name / "runs", steps=4, extra=[
            "slurm.gpus_per_node=4", "train.micro_batch_size=1", "eval.probe_samples=0", *extra])]
        launch = fork_run(argv, 4, tmp_path / name / "logs", timeout=300)
        assert launch.codes == [0] * 4, launch.log
        return [(r["step"], r["loss"], r["grad_norm"], r["window"], r["lr"])
                for r in train_records(find_run_dir(tmp_path / name / "runs")) if r["kind"] == "train"]

    dp4 = run("dp4", [])
    u2dp2 = run("u2dp2", ["parallel.ulysses_size=2"])
    assert len(u2dp2) == 4
    _close(u2dp2, dp4)
