"""Bad inputs to a training job end it with exit code 2 and one clear line from rank 0:
recipe errors, world-size mismatch, missing data, missing / broken / incompatible checkpoints."""

from __future__ import annotations

import subprocess
import sys

import pytest

from forkrun import (REPO, TINY_RECIPE, error_lines, find_run_dir, fork_run, one_error_line,
                     tiny_overrides, train_records)
from swax_megatron.config.resolve import resolve
from swax_megatron.exit_codes import EXIT_BAD_INPUT


def test_bad_override_via_the_command_line():
    proc = subprocess.run([sys.executable, "-m", "swax_megatron.train", TINY_RECIPE,
                           "train.stepz=3"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == EXIT_BAD_INPUT
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "train.stepz" in lines[0], proc.stderr


def test_world_size_mismatch(tiny_corpus, tmp_path):
    launch = fork_run([TINY_RECIPE, *tiny_overrides(tiny_corpus, tmp_path)], 1, tmp_path / "l")
    one_error_line(launch, "world size is 2", "1 processes were launched")


def test_missing_data_prefix(tiny_corpus, tmp_path):
    corpus = dict(tiny_corpus, prefix=str(tmp_path / "nowhere" / "web"))
    launch = fork_run([TINY_RECIPE, *tiny_overrides(corpus, tmp_path)], 2, tmp_path / "l")
    one_error_line(launch, str(tmp_path / "nowhere" / "web"))


def test_missing_checkpoint_load(tiny_corpus, tmp_path):
    argv = [TINY_RECIPE, *tiny_overrides(tiny_corpus, tmp_path / "runs",
                                         extra=[f"checkpoint.load={tmp_path}/gone"])]
    one_error_line(fork_run(argv, 2, tmp_path / "l"),
                   f"{tmp_path}/gone: checkpoint.load does not exist")


@pytest.mark.parametrize("latest, make_dir, message", [
    ("iter_0000004\n", False, "points to a checkpoint directory that does not exist"),
    ("iter_0000004\n", True,
     "incomplete checkpoint (missing metadata.json, common.pt, manifest.json)"),
    ("../../etc\n", False, "not a checkpoint pointer"),
])
def test_broken_latest_pointer(tiny_corpus, tmp_path, latest, make_dir, message):
    overrides = tiny_overrides(tiny_corpus, tmp_path / "runs")
    ckpts = tmp_path / "runs" / resolve(TINY_RECIPE, overrides).run_name / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "latest").write_text(latest)
    if make_dir:
        (ckpts / "iter_0000004").mkdir()
    one_error_line(fork_run([TINY_RECIPE, *overrides], 2, tmp_path / "l"), message)


@pytest.fixture(scope="module")
def finished_checkpoints(tiny_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("finished")
    launch = fork_run([TINY_RECIPE, *tiny_overrides(tiny_corpus, root / "runs", steps=2,
                                                    every=2)], 2, root / "l")
    assert launch.codes == [0, 0], launch.log
    return find_run_dir(root / "runs") / "checkpoints"


@pytest.mark.parametrize("change, named", [
    ("train.window_schedule.p_short=0.9", "train.window_schedule.p_short: 0.5 -> 0.9"),
    ("optim.weight_decay=0.01", "optim.weight_decay: 0.1 -> 0.01"),
    ("model.vocab_size=4096", "model.vocab_size: None -> 4096"),
])
def test_resume_refuses_another_experiments_checkpoints(tiny_corpus, tmp_path, finished_checkpoints,
                                                      change, named):
    # checkpoint.dir is not part of the config hash: point a changed recipe at the checkpoints
    # of a finished run. Each checkpoint records its config hash and recipe: refused, naming
    # the key, and nothing in that folder or in the new run directory is written.
    def files():  # (the lock file names its latest holder)
        return {p: p.stat().st_mtime_ns for p in finished_checkpoints.rglob("*")
                if p.name != ".lock"}

    before = files()
    argv = [TINY_RECIPE, *tiny_overrides(tiny_corpus, tmp_path / "runs", steps=2, extra=[
        f"checkpoint.dir={finished_checkpoints}", change])]
    line = one_error_line(fork_run(argv, 2, tmp_path / "l"), "written by another experiment", named)
    assert "checkpoint.load" in line
    assert files() == before
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_resume_refuses_another_optimizer_format(tiny_corpus, tmp_path, finished_checkpoints):
    argv = [TINY_RECIPE, *tiny_overrides(tiny_corpus, tmp_path, steps=2, extra=[
        f"checkpoint.dir={finished_checkpoints}", "parallel.use_distributed_optimizer=true"])]
    one_error_line(fork_run(argv, 2, tmp_path / "l"), "use_distributed_optimizer=False")


def test_checkpoint_load_continues_another_run_and_the_own_checkpoint_wins_later(
        tiny_corpus, tmp_path, finished_checkpoints):
    # checkpoint.load continues a finished 2-step run in a new run directory (6 steps). The job
    # is killed after its step-4 checkpoint; started again, the run's own checkpoint wins over
    # checkpoint.load (it says so), and the steps equal an uninterrupted job's bitwise.
    def argv(root):
        return [TINY_RECIPE, *tiny_overrides(tiny_corpus, root, steps=6, every=2, extra=[
            f"checkpoint.load={finished_checkpoints}"])]

    straight = fork_run(argv(tmp_path / "a"), 2, tmp_path / "la")
    assert straight.codes == [0, 0], straight.log
    assert "continuing" in straight.logs[0] and "(checkpoint.load) at step 2" in straight.logs[0]
    assert "warning: checkpoint.load from another run: LR schedule differs" in straight.logs[0]
    killed = fork_run(argv(tmp_path / "b"), 2, tmp_path / "lb",
                      env={"SWAX_FAULT": "kill@after_save:4"})
    assert killed.codes == [-9, -9], killed.log
    again = fork_run(argv(tmp_path / "b"), 2, tmp_path / "lb2")
    assert again.codes == [0, 0], again.log
    assert "applied when this run started" in again.logs[0]
    assert "resuming the run's own checkpoint" in again.logs[0] and "iter_0000004" in again.logs[0]
    def steps(root):
        return [(r["step"], r["loss"], r["grad_norm"])
                for r in train_records(find_run_dir(root)) if r["kind"] == "train"]

    ref, got = steps(tmp_path / "a"), steps(tmp_path / "b")
    assert [s[0] for s in ref] == [3, 4, 5, 6] and got == ref


def test_checkpoint_finetune_takes_the_weights_only(tiny_corpus, tmp_path, finished_checkpoints):
    # checkpoint.finetune: the weights of the finished run, step 0, a fresh optimizer. Same
    # data and LR as a run from scratch at step 1; only the weights differ.
    argv = [TINY_RECIPE, *tiny_overrides(tiny_corpus, tmp_path / "runs", steps=2, every=2, extra=[
        f"checkpoint.load={finished_checkpoints}", "checkpoint.finetune=true"])]
    launch = fork_run(argv, 2, tmp_path / "l")
    assert launch.codes == [0, 0], launch.log
    assert "initialised from the weights of" in launch.logs[0]
    tuned = [r for r in train_records(find_run_dir(tmp_path / "runs")) if r["kind"] == "train"]
    scratch = [r for r in train_records(finished_checkpoints.parent) if r["kind"] == "train"]
    assert [r["step"] for r in tuned] == [1, 2]
    assert tuned[0]["lr"] == scratch[0]["lr"] and tuned[0]["consumed_samples"] == 4
    assert tuned[0]["loss"] < scratch[0]["loss"] - 0.05  # trained weights: a lower first loss
