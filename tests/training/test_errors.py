"""Bad inputs to a training job end it with exit code 2 and one clear line from rank 0:
recipe errors, world-size mismatch, missing data, missing / broken / incompatible checkpoints."""

from __future__ import annotations

import subprocess
import sys

import pytest

from forkrun import REPO, TINY_RECIPE, find_run_dir, fork_run, tiny_overrides
from swax_megatron.config.resolve import resolve
from swax_megatron.training.signals import EXIT_BAD_INPUT


def _error_lines(text):
    return [line for line in text.splitlines() if line.startswith("swax-train: error:")]


def _fails(launch, *fragments):
    assert launch.codes == [EXIT_BAD_INPUT] * len(launch.codes), launch.log
    lines = _error_lines(launch.logs[0])
    assert len(lines) == 1, launch.log
    for f in fragments:
        assert f in lines[0], lines[0]
    for other in launch.logs[1:]:  # the other ranks stay quiet
        assert not _error_lines(other) and "Traceback" not in other, other
    return lines[0]


def test_bad_override_via_the_command_line():
    proc = subprocess.run([sys.executable, "-m", "swax_megatron.train", TINY_RECIPE,
                           "train.stepz=3"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == EXIT_BAD_INPUT
    lines = _error_lines(proc.stderr)
    assert len(lines) == 1 and "train.stepz" in lines[0], proc.stderr


def test_world_size_mismatch(tiny_corpus, tmp_path):
    launch = fork_run([TINY_RECIPE, *tiny_overrides(tiny_corpus, tmp_path)], 1, tmp_path / "l")
    _fails(launch, "world size is 2", "1 processes were launched")


def test_missing_data_prefix(tiny_corpus, tmp_path):
    corpus = dict(tiny_corpus, prefix=str(tmp_path / "nowhere" / "web"))
    launch = fork_run([TINY_RECIPE, *tiny_overrides(corpus, tmp_path)], 2, tmp_path / "l")
    _fails(launch, str(tmp_path / "nowhere" / "web"))


def test_missing_checkpoint_load(tiny_corpus, tmp_path):
    argv = [TINY_RECIPE, *tiny_overrides(tiny_corpus, tmp_path / "runs",
                                         extra=[f"checkpoint.load={tmp_path}/gone"])]
    _fails(fork_run(argv, 2, tmp_path / "l"), f"{tmp_path}/gone: checkpoint.load does not exist")


@pytest.mark.parametrize("latest, make_dir, message", [
    ("iter_0000004\n", False, "points to a checkpoint directory that does not exist"),
    ("iter_0000004\n", True, "incomplete checkpoint (missing metadata.json, common.pt)"),
    ("../../etc\n", False, "not a checkpoint pointer"),
])
def test_broken_latest_pointer(tiny_corpus, tmp_path, latest, make_dir, message):
    overrides = tiny_overrides(tiny_corpus, tmp_path / "runs")
    ckpts = tmp_path / "runs" / resolve(TINY_RECIPE, overrides).run_name / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "latest").write_text(latest)
    if make_dir:
        (ckpts / "iter_0000004").mkdir()
    _fails(fork_run([TINY_RECIPE, *overrides], 2, tmp_path / "l"), message)


@pytest.fixture(scope="module")
def finished_checkpoints(tiny_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("finished")
    launch = fork_run([TINY_RECIPE, *tiny_overrides(tiny_corpus, root / "runs", steps=2,
                                                    every=2)], 2, root / "l")
    assert launch.codes == [0, 0], launch.log
    return find_run_dir(root / "runs") / "checkpoints"


def test_resume_refuses_a_different_window_schedule(tiny_corpus, tmp_path, finished_checkpoints):
    # checkpoint.dir is not part of the config hash: point a changed recipe at old checkpoints.
    argv = [TINY_RECIPE, *tiny_overrides(tiny_corpus, tmp_path, steps=2, extra=[
        f"checkpoint.dir={finished_checkpoints}", "train.window_schedule.p_short=0.9"])]
    _fails(fork_run(argv, 2, tmp_path / "l"), "cannot resume: window schedule differs")


def test_resume_refuses_another_optimizer_format(tiny_corpus, tmp_path, finished_checkpoints):
    argv = [TINY_RECIPE, *tiny_overrides(tiny_corpus, tmp_path, steps=2, extra=[
        f"checkpoint.dir={finished_checkpoints}", "parallel.use_distributed_optimizer=true"])]
    _fails(fork_run(argv, 2, tmp_path / "l"), "use_distributed_optimizer=False")


def test_checkpoint_load_from_another_run_continues_with_a_warning(tiny_corpus, tmp_path,
                                                                  finished_checkpoints):
    # checkpoint.load initialises a new run (here 4 steps) from a finished 2-step one.
    argv = [TINY_RECIPE, *tiny_overrides(tiny_corpus, tmp_path / "runs", steps=4, extra=[
        f"checkpoint.load={finished_checkpoints}"])]
    launch = fork_run(argv, 2, tmp_path / "l")
    assert launch.codes == [0, 0], launch.log
    assert "resumed from" in launch.logs[0] and "at step 2" in launch.logs[0]
    assert "warning: checkpoint.load from another run: LR schedule differs" in launch.logs[0]
