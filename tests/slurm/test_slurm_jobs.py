"""slurm/pretrain.sh and slurm/sweep.sh on a real one-node SLURM cluster, with the real trainer.

The uninterrupted 2-task sbatch run is the reference: a preempted and requeued run and a local
(torchrun --standalone) run of the same recipe must reproduce its losses exactly.
"""

from __future__ import annotations

import glob
import os
import subprocess

import pytest
import yaml

from slurm_testing import REPO, records, train_losses

RECIPE = os.path.join(REPO, "recipes", "tiny", "swax.yaml")
SWEEP = os.path.join(REPO, "recipes", "tiny", "window_sweep.yaml")
STEPS = 16
# Small enough for a 2-core machine: short sequences, a few steps, one eval.
TINY = ["train.seq_length=128", "optim.warmup_steps=2", "train.eval_every=1000",
        "train.eval_iters=1", "checkpoint.every_steps=1000", "checkpoint.every_minutes=null"]
JOB_TIMEOUT = 240


def overrides(out, cache, steps=STEPS, *extra):
    return [*TINY, f"train.steps={steps}", f"run.output_root={out}", f"data.cache_dir={cache}", *extra]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data-cache"))  # tokenizer trained once for all runs


def run_dir_of(swax, recipe, args, index=None):
    cmd = ["recipe", "sweep", recipe, *args, "--index", str(index)] if index is not None \
        else ["recipe", "resolve", recipe, *args]
    p = swax.cli(*cmd, "--get", "run_dir")
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def finished(cluster, job, timeout=JOB_TIMEOUT):
    infos = cluster.wait(job, timeout)
    logs = "\n".join(open(i["StdOut"], errors="replace").read() for i in infos
                     if os.path.exists(i.get("StdOut", "")))
    return infos, logs


@pytest.fixture(scope="module")
def reference(swax, cluster, cache, tmp_path_factory):
    """`swax slurm submit` of the tiny SWAX with 2 tasks (srun, gloo), run to the end."""
    args = overrides(str(tmp_path_factory.mktemp("ref")), cache)
    job = swax.submit("slurm", "submit", RECIPE, *args)
    infos, log = finished(cluster, job)
    return job, infos[0], log, run_dir_of(swax, RECIPE, args)


def test_sbatch_pretrain_two_tasks(reference):
    job, info, log, run_dir = reference
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log
    assert info["NumTasks"] == "2" and "launcher srun, world size 2" in log, log
    assert os.path.exists(os.path.join(run_dir, "DONE"))
    latest = os.path.join(run_dir, "checkpoints", "latest")
    assert os.path.exists(latest), log
    assert open(latest).read().strip().endswith(f"{STEPS:07d}")
    assert sorted(train_losses(run_dir)) == list(range(1, STEPS + 1))
    assert os.path.exists(os.path.join(run_dir, "summary.json"))


def test_preemption_checkpoints_requeues_and_resumes(swax, cluster, cache, reference, tmp_path):
    steps = STEPS
    args = overrides(str(tmp_path), cache, steps)
    run_dir = run_dir_of(swax, RECIPE, args)
    job = swax.submit("slurm", "submit", RECIPE, *args)
    metrics = os.path.join(run_dir, "metrics.jsonl")

    def steps_done():  # the file is being appended to: count whole lines only
        if not os.path.exists(metrics):
            return 0
        with open(metrics) as f:
            return sum(1 for line in f if line.endswith("\n") and '"kind": "train"' in line)
    cluster.wait_for(lambda: steps_done() >= 2, timeout=JOB_TIMEOUT, what="the first training steps",
                     poll=0.05)
    cluster.run("scancel", "--signal=USR1", "--batch", job)
    infos, log = finished(cluster, job)
    info = infos[0]
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log
    assert info["Restarts"] == "1", log
    assert "SIGUSR1: asking the ranks to checkpoint and stop" in log
    assert f"checkpoint written: requeueing job {job} (restart 1)" in log, log
    assert "restart count 1" in log
    # the first run stopped early, with a checkpoint written for the signal
    saved = [r for r in records(run_dir) if r.get("kind") == "checkpoint" and r["reason"] == "signal"]
    assert len(saved) == 1 and saved[0]["step"] < steps, (saved, log)
    assert train_losses(run_dir) == train_losses(reference[3])
    assert os.path.exists(os.path.join(run_dir, "DONE"))


def test_local_mode_runs_the_same_recipe(swax, cache, reference, tmp_path):
    args = overrides(str(tmp_path), cache)
    p = swax.script("pretrain.sh", RECIPE, *args)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "local: torchrun --standalone --nproc-per-node 2" in p.stdout
    run_dir = run_dir_of(swax, RECIPE, args)
    assert os.path.exists(os.path.join(run_dir, "DONE"))
    assert train_losses(run_dir) == train_losses(reference[3])
    # a finished run is not started again
    p = swax.script("pretrain.sh", RECIPE, *args)
    assert p.returncode == 0 and "is done: nothing to do" in p.stdout


def test_sweep_array_job_and_resubmission(swax, cluster, cache, tmp_path):
    # one process per entry, so all three run at once on the 3 (fake) GPUs; torchrun per node
    args = overrides(str(tmp_path), cache, 4, "slurm.gpus_per_node=1", "slurm.launcher=torchrun")
    p = swax.cli("sweep", "submit", SWEEP, *args, "--parallel", "2", "--dry-run")
    assert p.returncode == 0 and " --array=0-2%2 " in p.stdout, p.stderr
    job = swax.submit("sweep", "submit", SWEEP, *args, "--parallel", "3")
    infos, log = finished(cluster, job)
    assert len(infos) == 3
    assert {i["JobState"] for i in infos} == {"COMPLETED"}, log
    run_dirs = [run_dir_of(swax, SWEEP, args, i) for i in range(3)]
    assert len(set(run_dirs)) == 3
    windows = []
    for d in run_dirs:
        assert os.path.exists(os.path.join(d, "DONE")), log
        with open(os.path.join(d, "resolved.yaml")) as f:
            windows.append(yaml.safe_load(f)["train"]["window_schedule"]["long"])
        assert sorted(train_losses(d)) == [1, 2, 3, 4]
    assert windows == [32, 64, 128]
    mtimes = [os.path.getmtime(os.path.join(d, "metrics.jsonl")) for d in run_dirs]

    # resubmitting the same array: every task sees DONE and exits at once
    opts = swax.cli("slurm", "options", SWEEP, *args, "--sweep").stdout.split()
    again = swax.sbatch("--array=0-2", *opts, os.path.join(REPO, "slurm", "sweep.sh"), SWEEP, *args)
    infos, log = finished(cluster, again, timeout=120)
    assert {i["JobState"] for i in infos} == {"COMPLETED"}, log
    assert log.count("is done: nothing to do") == 3, log
    assert mtimes == [os.path.getmtime(os.path.join(d, "metrics.jsonl")) for d in run_dirs]

    # `swax sweep submit` leaves done entries out, and submits nothing when all are done
    p = swax.cli("sweep", "submit", SWEEP, *args)
    assert p.returncode == 0 and p.stdout == "" and "nothing to submit" in p.stderr, p.stderr
    for name in ("DONE", "exit.json"):  # entry 1 as if it had been interrupted
        os.remove(os.path.join(run_dirs[1], name))
    p = swax.cli("sweep", "submit", SWEEP, *args, "--parallel", "2", "--dry-run")
    assert p.returncode == 0 and " --array=1%1 " in p.stdout, p.stdout
    assert "2 of 3 entries already done (skipped): 0, 2" in p.stderr


def job_ids(cluster):
    return set(cluster.run("squeue", "-h", "-t", "all", "-o", "%i").stdout.split())


@pytest.mark.parametrize("args,message", [
    (["slurm.gpus_per_node=4", "train.global_batch_size=16"],
     "slurm.gpus_per_node=4, but the nodes of partition `debug` have at most 3 GPUs"),
    (["slurm.partition=gpu"], "partition `gpu` does not exist on this cluster (partitions: debug, short)"),
    (["slurm.partition=shrt"], "did you mean `short`?"),
    (["slurm.partition=short", "slurm.time=01:00:00"],
     "slurm.time=01:00:00 exceeds the time limit of partition `short` (10 minutes)"),
    (["slurm.cpus_per_task=3"], "2 x 3 = 6 CPUs per node, but the nodes of partition `debug` have at most 4"),
    (["slurm.nodes=2", "train.global_batch_size=16"], "slurm.nodes=2, but partition `debug` has 1 node"),
    (["train.stepz=3"], "unknown key in section `train` (did you mean `steps`?)"),
])
def test_errors_before_submission(swax, cluster, args, message):
    before = job_ids(cluster)
    p = swax.cli("slurm", "submit", RECIPE, *args)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and message in p.stderr, p.stderr
    assert job_ids(cluster) == before


def test_unreadable_recipe_is_not_submitted(swax, cluster, tmp_path):
    before = job_ids(cluster)
    for recipe, message in [(str(tmp_path / "missing.yaml"), "recipe file not found"),
                            (str(tmp_path), "is a directory")]:
        for cmd in (["slurm", "submit"], ["sweep", "submit"], ["slurm", "options"]):
            p = swax.cli(*cmd, recipe)
            assert p.returncode == 2 and message in p.stderr and p.stderr.count("\n") == 1, p.stderr
    assert job_ids(cluster) == before


def test_sweep_submit_needs_a_sweep(swax):
    p = swax.cli("sweep", "submit", RECIPE)
    assert p.returncode == 2 and "recipe has no sweep block" in p.stderr


def test_job_shaped_unlike_the_recipe_fails_fast(swax, cluster, cache, tmp_path):
    # a plain sbatch with one task for a recipe whose world size is 2: stopped before any rank starts
    job = swax.sbatch("--ntasks-per-node=1", "--gpus-per-node=1", "--cpus-per-task=1", "--time=5",
                      f"--output={tmp_path}/%j.out", os.path.join(REPO, "slurm", "pretrain.sh"),
                      RECIPE, *overrides(str(tmp_path), cache))
    infos, log = finished(cluster, job, timeout=60)
    assert infos[0]["JobState"] == "FAILED" and infos[0]["ExitCode"] == "2:0", log
    assert "the recipe's world size is 2 (slurm.nodes x slurm.gpus_per_node = 1 x 2), this job has 1 tasks" in log


def test_master_addr_is_never_guessed(swax, cache, tmp_path):
    env = swax.env(slurm=True)
    env.update(SLURM_JOB_ID="999999", SLURM_JOB_NODELIST="", SLURM_NTASKS="2")
    p = swax.script("pretrain.sh", RECIPE, *overrides(str(tmp_path), cache), env=env, timeout=120)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "refusing to guess MASTER_ADDR" in p.stderr
    assert not glob.glob(str(tmp_path / "*" / "metrics.jsonl"))


def test_scripts_are_valid_bash():
    for name in ("pretrain.sh", "sweep.sh"):
        subprocess.run(["bash", "-n", os.path.join(REPO, "slurm", name)], check=True)
