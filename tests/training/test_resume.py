"""Resume is exact: a job that is hard-killed (SIGKILL), killed in the middle of a checkpoint
save, or stopped by SIGUSR1 continues from its checkpoint with bitwise the same losses, grad
norms, windows and learning rates at every step as a job that was never interrupted.

Each job is 2 real processes (forkrun.fork_run) running the real entry point on a tiny
SWAX (pattern XS, hidden 64, seq 128) over a small real corpus; 8 steps, checkpoints every 4.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forkrun import TINY_RECIPE, find_run_dir, fork_run, tiny_overrides, train_records
from swax_megatron.exit_codes import EXIT_REQUEUE

LAYOUTS = {  # dp2-distopt: the optimizer state sharded over 2 data-parallel ranks
    "tp1": [],
    "tp2-distopt": ["parallel.tensor_model_parallel_size=2",
                    "parallel.use_distributed_optimizer=true"],
    "dp2-distopt": ["parallel.use_distributed_optimizer=true"],
    "pp2": ["parallel.pipeline_model_parallel_size=2"],
}


def _job(corpus, root: Path, name: str, layout: str, *, env=None, every=4, extra=()):
    out = root / name
    argv = [TINY_RECIPE, *tiny_overrides(corpus, out / "runs", every=every,
                                         extra=[*LAYOUTS[layout], *extra])]
    logs = out / f"logs{len(list(out.glob('logs*'))) if out.exists() else 0}"
    launch = fork_run(argv, 2, logs, env=env, timeout=180)
    return launch, out / "runs"


def _steps(records, kind="train"):
    keys = {"train": ("step", "loss", "grad_norm", "window", "lr", "skipped", "consumed_samples"),
            "eval": ("step", "val_loss", "window")}[kind]
    return [tuple(r[k] for k in keys) for r in records if r["kind"] == kind]


@pytest.fixture(scope="module")
def straight(tiny_corpus, tmp_path_factory):
    """Uninterrupted 8-step jobs, one per layout, run on first use."""
    cache, run_dirs = {}, {}

    def get(layout):
        if layout not in cache:
            launch, runs = _job(tiny_corpus, tmp_path_factory.mktemp("straight"), "s", layout)
            assert launch.codes == [0, 0], launch.log
            run_dirs[layout] = run_dir = find_run_dir(runs)
            cache[layout] = train_records(run_dir)
            assert len(_steps(cache[layout])) == 8
            _check_artifacts(run_dir, cache[layout])
        return cache[layout]

    get.run_dirs = run_dirs
    return get


def _check_artifacts(run_dir: Path, records) -> None:
    """What a finished run leaves behind for the researcher."""
    summary = json.loads((run_dir / "summary.json").read_text())
    last_eval = [r for r in records if r["kind"] == "eval"][-1]
    assert summary["steps"] == 8 and last_eval["step"] == 8
    assert summary["val_loss"] == last_eval["val_loss"]
    assert summary["checkpoint"].endswith("iter_0000008")
    assert 0 < summary["unigram_entropy_valid"] < summary["unigram_xent_train"]
    assert json.loads((run_dir / "exit.json").read_text())["code"] == 0
    assert (run_dir / "resolved.yaml").read_text().startswith("# config_hash: ")
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (run_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _latest(runs: Path) -> str:
    return (find_run_dir(runs) / "checkpoints" / "latest").read_text().strip()


@pytest.mark.parametrize("layout", ["tp1", "tp2-distopt", "dp2-distopt", "pp2"])
def test_sigkill_then_resume_is_bitwise_identical(layout, straight, tiny_corpus, tmp_path):
    killed, runs = _job(tiny_corpus, tmp_path, "k", layout, env={"SWAX_FAULT": "kill@after_save:4"})
    assert killed.codes == [-9, -9], killed.log
    assert _latest(runs) == "iter_0000004"
    resumed, _ = _job(tiny_corpus, tmp_path, "k", layout)
    assert resumed.codes == [0, 0], resumed.log
    assert "resumed from" in resumed.logs[0] and "at step 4" in resumed.logs[0]
    records = train_records(find_run_dir(runs))
    assert _steps(records) == _steps(straight(layout))
    assert _steps(records, "eval") == _steps(straight(layout), "eval")
    assert _latest(runs) == "iter_0000008"


def test_sigkill_during_a_save_leaves_latest_at_the_previous_checkpoint(straight, tiny_corpus,
                                                                        tmp_path):
    # Saves every 2 steps; every rank dies after writing its step-6 shards, before `latest`.
    killed, runs = _job(tiny_corpus, tmp_path, "ks", "tp1", every=2,
                        env={"SWAX_FAULT": "kill@after_shards_written:6"})
    assert killed.codes == [-9, -9], killed.log
    ckpts = find_run_dir(runs) / "checkpoints"
    assert _latest(runs) == "iter_0000004"
    assert (ckpts / "iter_0000006").is_dir()  # written but never committed
    resumed, _ = _job(tiny_corpus, tmp_path, "ks", "tp1", every=2)
    assert resumed.codes == [0, 0], resumed.log
    assert "at step 4" in resumed.logs[0]
    assert _steps(train_records(find_run_dir(runs))) == _steps(straight("tp1"))
    assert _latest(runs) == "iter_0000008"
    # keep_last=3 pruned the oldest; step 6 was rewritten by the resumed job.
    assert sorted(p.name for p in ckpts.glob("iter_*")) == [
        "iter_0000004", "iter_0000006", "iter_0000008"]
    assert (ckpts / "iter_0000006" / "metadata.json").is_file()


def test_sigusr1_on_one_rank_checkpoints_exits_42_and_resumes_identically(straight, tiny_corpus,
                                                                          tmp_path):
    # Only rank 1 receives the signal (after step 3); both ranks must stop at the same step.
    stopped, runs = _job(tiny_corpus, tmp_path, "u", "tp1",
                         env={"SWAX_FAULT": "signal@step:3:USR1:1"})
    assert stopped.codes == [EXIT_REQUEUE, EXIT_REQUEUE], stopped.log
    records = train_records(find_run_dir(runs))
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3]
    assert [(r["step"], r["reason"]) for r in records if r["kind"] == "checkpoint"] == [
        (3, "signal")]
    assert _latest(runs) == "iter_0000003"
    assert "stop requested (a signal to another rank) at step 3" in stopped.logs[0]
    resumed, _ = _job(tiny_corpus, tmp_path, "u", "tp1")
    assert resumed.codes == [0, 0], resumed.log
    assert _steps(train_records(find_run_dir(runs))) == _steps(straight("tp1"))


def test_diverging_run_skips_then_aborts_with_a_clear_message(tiny_corpus, tmp_path):
    # lr 1e30: the first update sends the weights to ~1e30; every later gradient norm is NaN.
    launch, runs = _job(tiny_corpus, tmp_path, "nan", "tp1", every=1,
                        extra=["optim.lr=1e30", "optim.min_lr=0",
                               "train.max_consecutive_nonfinite=2"])
    assert launch.codes == [3, 3], launch.log
    records = train_records(find_run_dir(runs))
    train = [r for r in records if r["kind"] == "train"]
    assert [r["skipped"] for r in train] == [False, True, True]
    assert train[1]["loss"] == train[2]["loss"]  # skipped: the weights did not move
    errors = [l for l in launch.logs[0].splitlines() if l.startswith("swax-train: error:")]
    assert len(errors) == 1 and "2 consecutive steps with a NaN/Inf loss or gradient norm" \
        in errors[0] and "iter_0000002" in errors[0]
    assert not any(l.startswith("swax-train: error:") for l in launch.logs[1].splitlines())


def test_a_tp2_checkpoint_continues_at_dp2_resharded(straight, tiny_corpus, tmp_path):
    # Model and distributed-optimizer state written at TP=2 load at TP=1 x DP=2: the steps
    # after the load match the uninterrupted TP=2 job to float32 round-off (not bitwise: the
    # reductions are split differently).
    reference = _steps(straight("tp2-distopt"))
    source = straight.run_dirs["tp2-distopt"] / "checkpoints" / "iter_0000004"
    launch, runs = _job(tiny_corpus, tmp_path, "r", "dp2-distopt",
                        extra=[f"checkpoint.load={source}"])
    assert launch.codes == [0, 0], launch.log
    assert "at step 4" in launch.logs[0]
    steps = _steps(train_records(find_run_dir(runs)))
    assert [s[0] for s in steps] == [5, 6, 7, 8]
    for got, ref in zip(steps, reference[4:]):
        assert got[0] == ref[0] and got[3:] == ref[3:]  # step, window, lr, skipped, samples
        assert got[1] == pytest.approx(ref[1], rel=1e-5)  # loss
        assert got[2] == pytest.approx(ref[2], rel=1e-4)  # grad norm


def test_time_based_saves_and_exit_after_minutes(tiny_corpus, tmp_path):
    # A tiny checkpoint.every_minutes saves after every step; train.exit_after_minutes stops
    # the job like a signal would (checkpoint, exit 42).
    launch, runs = _job(tiny_corpus, tmp_path, "t", "tp1", every=1000,
                        extra=["checkpoint.every_minutes=1e-9", "train.steps=3"])
    assert launch.codes == [0, 0], launch.log
    reasons = [(r["step"], r["reason"]) for r in train_records(find_run_dir(runs))
               if r["kind"] == "checkpoint"]
    assert reasons == [(1, "every_minutes"), (2, "every_minutes"), (3, "final")]
    launch, runs = _job(tiny_corpus, tmp_path, "x", "tp1", every=1000,
                        extra=["train.exit_after_minutes=1e-9"])
    assert launch.codes == [EXIT_REQUEUE] * 2, launch.log
    reasons = [(r["step"], r["reason"]) for r in train_records(find_run_dir(runs))
               if r["kind"] == "checkpoint"]
    assert reasons == [(1, "exit_after_minutes")]
