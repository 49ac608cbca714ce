"""A run never loses, mixes up or silently restarts work (issue: run integrity).

Each scenario is real: real trainer processes (forkrun), real files damaged on disk, real signals.
The damaged runs are copies of one finished 4-step run (checkpoints at steps 2 and 4), so every
test starts from the same known state; after a refusal, every file of the earlier attempt is
byte-for-byte what it was.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from forkrun import (TINY_RECIPE, find_run_dir, fork_run, one_error_line, run_module,
                     tiny_overrides, train_records)
from swax_megatron.training.checkpoint import file_digest
from swax_megatron.exit_codes import EXIT_BUSY, EXIT_DIVERGED, EXIT_REQUEUE
from swax_megatron.training.signals import StopRequest


def _snapshot(root: Path) -> dict:
    """Every file under `root` (but the lock file, which names its latest holder) -> bytes."""
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def finished(tiny_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("finished")
    launch = fork_run(_argv(tiny_corpus, root / "runs"), 2, root / "l")
    assert launch.codes == [0, 0], launch.log
    return root / "runs"


def _argv(corpus, output_root: Path, extra=()):
    return [TINY_RECIPE, *tiny_overrides(corpus, output_root, steps=4, every=2, extra=extra)]


@pytest.fixture
def copy(finished, tmp_path):
    """A private copy of the finished run's output root: (output root, run dir)."""
    out = tmp_path / "runs"
    shutil.copytree(finished, out)
    return out, find_run_dir(out)


@pytest.mark.parametrize("damage", ["deleted", "directory"])
def test_a_missing_latest_pointer_is_refused_and_nothing_is_touched(tiny_corpus, tmp_path, copy,
                                                                   damage):
    out, run_dir = copy
    latest = run_dir / "checkpoints" / "latest"
    latest.unlink()
    if damage == "directory":
        latest.mkdir()
    before = _snapshot(run_dir)
    line = one_error_line(fork_run(_argv(tiny_corpus, out), 2, tmp_path / "l"))
    if damage == "deleted":
        assert "has checkpoints (iter_0000002, iter_0000004) but no `latest` file" in line
        assert "echo iter_0000004 >" in line
    else:
        assert "latest: not a file" in line
    assert _snapshot(run_dir) == before  # metrics, exit.json, resolved.yaml, checkpoints


@pytest.mark.parametrize("damage, message", [
    ("flip", "does not match the manifest (CRC-32 of bytes"),
    ("truncate", "bytes, the manifest says"),
    ("delete_metadata", ".metadata is missing"),
])
def test_a_damaged_checkpoint_is_refused_naming_the_intact_one(tiny_corpus, tmp_path, copy,
                                                               damage, message):
    out, run_dir = copy
    ckpt = run_dir / "checkpoints" / "iter_0000004"
    shard = sorted(ckpt.glob("*.distcp"))[0]
    if damage == "flip":  # one bit of rot in the middle of a shard
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0x01
        shard.write_bytes(bytes(data))
    elif damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:100])
    else:
        (ckpt / ".metadata").unlink()
    before = _snapshot(run_dir)
    line = one_error_line(fork_run(_argv(tiny_corpus, out), 2, tmp_path / "l"))
    assert "iter_0000004: damaged checkpoint" in line and message in line
    assert "the newest intact checkpoint is iter_0000002" in line
    assert _snapshot(run_dir) == before


def test_a_truncated_shard_behind_a_matching_manifest_is_one_line(tiny_corpus, tmp_path, copy):
    # A save that went wrong before the manifest was written: the manifest agrees with the bad
    # files, so torch's own reader meets them (its CheckpointException is a BaseException).
    out, run_dir = copy
    ckpt = run_dir / "checkpoints" / "iter_0000004"
    for shard in ckpt.glob("*.distcp"):
        shard.write_bytes(shard.read_bytes()[:64])
    manifest = json.loads((ckpt / "manifest.json").read_text())
    for name in manifest["files"]:
        manifest["files"][name] = file_digest(ckpt / name)
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    line = one_error_line(fork_run(_argv(tiny_corpus, out), 2, tmp_path / "l"))
    assert "iter_0000004" in line


def test_metrics_are_append_only_across_attempts(tiny_corpus, tmp_path):
    # Killed after the step-2 checkpoint, at step 3; the second attempt resumes at 2. The lines
    # of the first attempt stay in the file; the history reads as one uninterrupted run.
    out = tmp_path / "runs"
    killed = fork_run(_argv(tiny_corpus, out), 2, tmp_path / "l1",
                      env={"SWAX_FAULT": "kill@after_save:2"})
    assert killed.codes == [-9, -9], killed.log
    run_dir = find_run_dir(out)
    first = (run_dir / "metrics.jsonl").read_bytes()
    again = fork_run(_argv(tiny_corpus, out), 2, tmp_path / "l2")
    assert again.codes == [0, 0], again.log
    assert (run_dir / "metrics.jsonl").read_bytes().startswith(first)
    attempts = [r for r in train_records(run_dir) if r["kind"] == "attempt"]
    assert [(a["attempt"], a["start_step"]) for a in attempts] == [(1, 0), (2, 2)]
    assert attempts[1]["resumed_from"].endswith("iter_0000002")
    assert [r["step"] for r in train_records(run_dir) if r["kind"] == "train"] == [1, 2, 3, 4]


def test_one_trainer_per_run_directory_and_ctrl_c_checkpoints(tiny_corpus, tmp_path):
    # A long job holds the run directory; a second trainer on it exits with EXIT_BUSY, one line
    # naming the holder, and writes nothing. Ctrl-C (SIGINT to the job's process group, as a
    # terminal sends it) then stops the first job like SIGTERM: checkpoint, exit 42.
    out = tmp_path / "runs"
    argv = [TINY_RECIPE, *tiny_overrides(tiny_corpus, out, steps=1000, every=1000)]
    proc = run_module(argv, env={"OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and proc.poll() is None:
            metrics = list(out.glob("tiny-swax-*/metrics.jsonl")) if out.exists() else []
            if metrics and '"kind": "train"' in metrics[0].read_text():
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[0]
        run_dir = find_run_dir(out)
        second = fork_run(argv, 2, tmp_path / "l")
        line = one_error_line(second, code=EXIT_BUSY)
        assert f"{run_dir}: another trainer is running on it (pid" in line
        os.killpg(proc.pid, signal.SIGINT)
        text, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == EXIT_REQUEUE, text
    assert "stop requested (SIGINT)" in text and "Traceback" not in text
    records = train_records(run_dir)
    assert [r["attempt"] for r in records if r["kind"] == "attempt"] == [1]  # none from the 2nd
    last = max(r["step"] for r in records if r["kind"] == "train")
    assert [(r["step"], r["reason"]) for r in records if r["kind"] == "checkpoint"] == \
        [(last, "signal")]
    assert json.loads((run_dir / "exit.json").read_text())["code"] == EXIT_REQUEUE


def test_ctrl_c_is_a_stop_request_not_a_keyboard_interrupt():
    stop = StopRequest()
    try:
        signal.raise_signal(signal.SIGINT)
        assert stop.local and stop.name == "SIGINT"
    finally:
        stop.restore()


def test_a_vocabulary_smaller_than_the_tokenizer_is_refused_before_writing(tiny_corpus, tmp_path):
    out = tmp_path / "runs"
    line = one_error_line(fork_run(_argv(tiny_corpus, out, ["model.vocab_size=300"]), 2,
                              tmp_path / "l"))
    assert "model.vocab_size 300 is smaller than the tokenizer's vocabulary of 512" in line
    assert not out.exists() or not any(out.iterdir())  # no run directory left behind


@pytest.mark.parametrize("where, message", [
    ("run_dir_is_a_file", "exists and is not a directory"),
    ("output_root_is_a_file", "a parent of it is a file"),
    ("unwritable", "cannot create the directory"),
])
def test_an_output_root_that_cannot_hold_a_run_is_one_line(tiny_corpus, tmp_path, where, message):
    from swax_megatron.config.resolve import resolve

    out = tmp_path / "runs"
    if where == "run_dir_is_a_file":
        out.mkdir()
        (out / resolve(*_argv(tiny_corpus, out)[:1], _argv(tiny_corpus, out)[1:]).run_name
         ).write_text("not a directory\n")
    elif where == "output_root_is_a_file":
        out.write_text("not a directory\n")
    else:  # procfs refuses new directories, even to root
        out = Path("/proc/swax-no-such-dir")
    line = one_error_line(fork_run(_argv(tiny_corpus, out), 2, tmp_path / "l"))
    assert message in line


def test_a_run_that_ends_on_nan_is_not_done(tiny_corpus, tmp_path):
    # A learning rate that blows the weights up: after the first update every step is NaN and
    # skipped (fewer than max_consecutive_nonfinite) and the final evaluation is NaN. The job
    # must not end as done (slurm/pretrain.sh writes DONE only on exit 0).
    out = tmp_path / "runs"
    launch = fork_run(_argv(tiny_corpus, out, [
        "optim.lr=1e6", "optim.warmup_steps=0", "optim.clip_grad=0",
        "train.max_consecutive_nonfinite=100"]), 2, tmp_path / "l")
    line = one_error_line(launch, code=EXIT_DIVERGED)
    assert "the final evaluation is not finite" in line and "not done" in line
    exit_info = json.loads((find_run_dir(out) / "exit.json").read_text())
    assert exit_info["code"] == EXIT_DIVERGED and exit_info["reason"] != "done"
