"""Asynchronous and fully-parallel checkpoint saves (checkpoint.async_save, .fully_parallel).

Real jobs (forkrun: 2 processes, the real entry point, tiny SWAX, saves every 2 steps): an
asynchronous job trains bitwise like a synchronous one; a job SIGKILLed while its step-4 save is
in flight resumes from step 2, reports the incomplete directory and never loads it. On 2 gloo
ranks (DP=2, distributed optimizer): the fully-parallel strategies on or off, and the save
asynchronous or not, load the same state bitwise.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest
import torch

from dist import run_distributed
from forkrun import TINY_RECIPE, find_run_dir, fork_run, tiny_overrides, train_records

ASYNC = ["checkpoint.async_save=true"]


def _job(corpus, root: Path, extra=(), env=None):
    argv = [TINY_RECIPE, *tiny_overrides(corpus, root / "runs", every=2, extra=list(extra))]
    logs = root / f"logs{len(list(root.glob('logs*'))) if root.exists() else 0}"
    return fork_run(argv, 2, logs, env=env, timeout=180), root / "runs"


def _steps(records):
    keys = ("step", "loss", "grad_norm", "window", "lr", "skipped", "consumed_samples")
    return [tuple(r[k] for k in keys) for r in records if r["kind"] == "train"]


def _checkpoints(records):
    return sorted((r["step"], r["reason"]) for r in records if r["kind"] == "checkpoint")


def _holders(run_dir: Path, wait: float = 20.0) -> list:
    """Processes with a file under `run_dir` open, once those dying have had `wait` s to go."""
    import time

    deadline = time.monotonic() + wait
    while True:
        found = []
        for fd_dir in Path("/proc").glob("[0-9]*/fd"):
            try:
                if any(os.readlink(fd).startswith(str(run_dir)) for fd in fd_dir.iterdir()):
                    found.append(fd_dir.parent.name)
            except OSError:  # gone, or not ours to read
                pass
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


@pytest.fixture(scope="module")
def sync_run(tiny_corpus, tmp_path_factory):
    launch, runs = _job(tiny_corpus, tmp_path_factory.mktemp("sync"))
    assert launch.codes == [0, 0], launch.log
    return train_records(find_run_dir(runs))


def test_an_async_job_trains_and_checkpoints_like_a_sync_one(sync_run, tiny_corpus, tmp_path):
    launch, runs = _job(tiny_corpus, tmp_path, ASYNC)
    assert launch.codes == [0, 0], launch.log
    records = train_records(find_run_dir(runs))
    assert _steps(records) == _steps(sync_run) and len(_steps(records)) == 8
    assert _checkpoints(records) == _checkpoints(sync_run) == [
        (2, "every_steps"), (4, "every_steps"), (6, "every_steps"), (8, "final")]
    ckpts = find_run_dir(runs) / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "iter_0000008"
    kept = sorted(p.name for p in ckpts.glob("iter_*"))
    assert kept == ["iter_0000004", "iter_0000006", "iter_0000008"]  # keep_last=3
    for name in kept:  # complete, and the writers' result files consumed
        assert (ckpts / name / "manifest.json").is_file()
        assert not list((ckpts / name).glob(".write_results.*"))


def test_sigkill_with_an_async_save_in_flight_resumes_from_the_previous_one(
        sync_run, tiny_corpus, tmp_path):
    # Both ranks die right after step 5: the step-4 save was started after step 4 and is
    # finalized at the earliest after step 5, so it is in flight (its writers may or may not
    # have finished) and `latest` still names step 2, which the step-4 save had to finalize.
    killed, runs = _job(tiny_corpus, tmp_path, ASYNC, env={"SWAX_FAULT": "signal@step:5:KILL"})
    assert killed.codes == [-9, -9], killed.log
    run_dir = find_run_dir(runs)
    ckpts = run_dir / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "iter_0000002"
    assert (ckpts / "iter_0000004").is_dir() and not (ckpts / "iter_0000004" /
                                                      "manifest.json").exists()
    first = (run_dir / "metrics.jsonl").read_bytes()
    # No writer process outlives its rank (holding the run's lock, writing into the directory).
    assert _holders(run_dir) == []

    resumed, _ = _job(tiny_corpus, tmp_path, ASYNC)
    assert resumed.codes == [0, 0], resumed.log
    assert "resumed from" in resumed.logs[0] and "iter_0000002 at step 2" in resumed.logs[0]
    assert "ignoring incomplete checkpoint(s) iter_0000004" in resumed.logs[0]
    # Nothing of the first attempt is lost: its history stays, and the run reads as one.
    assert (run_dir / "metrics.jsonl").read_bytes().startswith(first)
    records = train_records(run_dir)
    assert _steps(records) == _steps(sync_run)
    assert [(a["attempt"], a["start_step"]) for a in records if a["kind"] == "attempt"] == [
        (1, 0), (2, 2)]
    assert (ckpts / "latest").read_text().strip() == "iter_0000008"
    assert (ckpts / "iter_0000004" / "manifest.json").is_file()  # rewritten, complete
    assert not (ckpts / "iter_0000002").exists()  # pruned only once 3 newer ones completed


def test_a_requeue_signal_completes_the_saves_in_flight_before_exiting(tiny_corpus, tmp_path):
    # SIGUSR1 to rank 1 after step 3: the step-2 save may still be in flight; the job saves
    # step 3, and before it exits with 42 both are complete and `latest` names step 3.
    from swax_megatron.exit_codes import EXIT_REQUEUE

    stopped, runs = _job(tiny_corpus, tmp_path, ASYNC, env={"SWAX_FAULT": "signal@step:3:USR1:1"})
    assert stopped.codes == [EXIT_REQUEUE] * 2, stopped.log
    run_dir = find_run_dir(runs)
    assert _checkpoints(train_records(run_dir)) == [(2, "every_steps"), (3, "signal")]
    ckpts = run_dir / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "iter_0000003"
    assert all((ckpts / n / "manifest.json").is_file() for n in ("iter_0000002", "iter_0000003"))
    assert "resume from " + str(ckpts / "iter_0000003") in stopped.logs[0]


def test_prune_keeps_complete_checkpoints_and_never_touches_newer_ones(tmp_path):
    from swax_megatron.training.checkpoint import CheckpointManager, iter_name

    root = tmp_path / "checkpoints"
    complete = {1, 2, 4, 6}
    for step in (1, 2, 3, 4, 5, 6, 7):  # 3, 5: killed saves; 7: a save in flight
        (root / iter_name(step)).mkdir(parents=True)
        if step in complete:
            (root / iter_name(step) / "manifest.json").write_text("{}")
    CheckpointManager(root, keep_last=3)._prune(6)
    assert sorted(p.name for p in root.iterdir()) == [iter_name(s) for s in (2, 4, 6, 7)]


# --- strategies on 2 gloo ranks ------------------------------------------------------------

TINY = ["model.hidden_size=64", "model.num_layers=2", "model.layer_pattern=XS",
        "model.num_attention_heads=4", "model.num_query_groups=2", "model.mlstm.num_heads=2",
        "model.mlstm.chunk_size=32", "train.seq_length=64", "train.micro_batch_size=2",
        "train.global_batch_size=4", "optim.warmup_steps=2", "train.steps=10",
        "parallel.use_distributed_optimizer=true",
        # Weights whole on every rank after each update (with the overlapped gather, the other
        # ranks' shards arrive only in the next forward: saves then go under
        # engine.gathered_params, which is the trainer's business, not the strategies').
        "parallel.overlap_param_gather=false"]


def _state(engine):
    """Every parameter and optimizer tensor (this rank's shard of the distributed optimizer)."""
    params = [p.detach().clone() for p in engine.model.parameters()]
    opt = []
    for o in getattr(engine.optimizer, "chained_optimizers", [engine.optimizer]):
        for s in o.optimizer.state.values():
            opt.append({k: v.clone() for k, v in s.items()})
    return params, opt


def _equal(a, b) -> bool:
    (pa, sa), (pb, sb) = a, b
    return (len(pa) == len(pb) and all(torch.equal(x, y) for x, y in zip(pa, pb))
            and len(sa) == len(sb) and len(sa) > 0
            and all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
                    for x, y in zip(sa, sb)))


def _strategies_body(rank, root):
    from megatron.core import parallel_state as ps

    from swax_megatron.config.resolve import resolve
    from swax_megatron.training.checkpoint import CheckpointManager, TrainState, file_digest
    from swax_megatron.training.engine import build_engine, train_step

    # dist.py's children are daemonic, and multiprocessing refuses children to daemonic
    # processes; dist_checkpointing's writers are such children. Their parent reaps them.
    multiprocessing.current_process()._config.pop("daemon", None)
    assert ps.get_data_parallel_world_size() == 2
    recipe = resolve(TINY_RECIPE, TINY).recipe
    engine = build_engine(recipe, 512, torch.device("cpu"))

    def step(seed):
        g = torch.Generator().manual_seed(seed * 10 + rank)  # different data per DP rank
        t = torch.randint(0, 512, (2, 65), generator=g)
        train_step(engine, [{"tokens": t[:, :-1], "labels": t[:, 1:],
                             "loss_mask": torch.ones(2, 64)}], window=16, lr=1e-3,
                   weight_decay=0.1)

    step(0)
    step(1)
    saved = _state(engine)
    root = Path(root)
    managers = {name: CheckpointManager(root / name, keep_last=1, async_save=a, fully_parallel=f)
                for name, a, f in (("fp", False, True), ("plain", False, False),
                                   ("fp-async", True, True))}
    for name, m in managers.items():
        path, why = m.save(2, engine.model, engine.optimizer, TrainState(step=2), {})
        assert path is not None, why
        if m.async_save:
            assert m.in_flight == path and not (path / "manifest.json").exists()
            step(2)  # training goes on while the writer runs: the checkpoint is of step 2
        assert m.finalize(blocking=True) == [path]
        assert (root / name / "latest").read_text().strip() == "iter_0000002"
        # The manifest (shards checksummed by their writers) equals checksumming every file.
        files = sorted(f for f in path.iterdir() if f.name != "manifest.json")
        assert [f.name for f in files if f.name.startswith(".")] == [".metadata"]
        assert json.loads((path / "manifest.json").read_text())["files"] == {
            f.name: file_digest(f) for f in files}
    # Which rank wrote bytes: the fully-parallel save spreads the replicated tensors.
    shares = {name: [sum(f.stat().st_size for f in (root / name / "iter_0000002").glob(
        f"__{r}_*.distcp")) for r in range(2)] for name in managers}
    loaded = {}
    for name in managers:
        for load_fp in (True, False):
            step(3)  # move away from the saved state, so a load that does nothing fails
            loader = CheckpointManager(root / name, fully_parallel=load_fp)
            loader.load(root / name / "iter_0000002", engine.model, engine.optimizer)
            loaded[(name, load_fp)] = _equal(_state(engine), saved)
    return loaded, shares


def test_fully_parallel_on_or_off_and_async_save_load_the_same_state(tmp_path):
    results = run_distributed(_strategies_body, 2, str(tmp_path), tp=1, timeout=240)
    for loaded, shares in results:
        assert all(loaded.values()), loaded
        assert len(loaded) == 6
        assert shares["fp"][1] > 0  # rank 1 writes its share
        assert shares["plain"][0] > shares["fp"][0]  # without it, rank 0 writes the replicas
