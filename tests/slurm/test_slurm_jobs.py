"""slurm/pretrain.sh and slurm/sweep.sh on a real one-node SLURM cluster, with the real trainer.

The uninterrupted 2-task sbatch run is the reference: a preempted and requeued run and a local
(torchrun --standalone) run of the same recipe must reproduce its losses exactly. The documented
ways to submit (`swax slurm submit`, `sbatch $(swax slurm options ...)`, `swax sweep submit`, a
plain sbatch) run on a partition with GPUs and on one without any GRES (conftest.CLUSTERS); the
rest runs on the GPU cluster only.
"""

from __future__ import annotations

import glob
import json
import os
import shlex
import shutil
import subprocess

import pytest
import yaml

from slurm_testing import REPO, on_cpu_cluster, on_gpu_cluster, records, train_losses

RECIPE = os.path.join(REPO, "recipes", "tiny", "swax.yaml")
SWEEP = os.path.join(REPO, "recipes", "tiny", "window_sweep.yaml")
PRETRAIN = os.path.join(REPO, "slurm", "pretrain.sh")
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
    return job, infos[0], log, run_dir_of(swax, RECIPE, args), args


def test_sbatch_pretrain_two_tasks(reference, cluster):
    job, info, log, run_dir, _ = reference
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log
    assert info["NumTasks"] == "2" and "launcher srun, world size 2" in log, log
    # GPUs are asked for where the partition has them, and only there
    assert info.get("TresPerNode", "") == ("gres:gpu:2" if cluster.gpus else ""), info
    assert os.path.exists(os.path.join(run_dir, "DONE"))
    latest = os.path.join(run_dir, "checkpoints", "latest")
    assert os.path.exists(latest), log
    assert open(latest).read().strip().endswith(f"{STEPS:07d}")
    assert sorted(train_losses(run_dir)) == list(range(1, STEPS + 1))
    assert os.path.exists(os.path.join(run_dir, "summary.json"))


@on_gpu_cluster
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


@on_gpu_cluster
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
    p = swax.cli("sweep", "submit", SWEEP, "--parallel", "2", "--dry-run", *args)  # overrides last
    assert p.returncode == 0 and " --array=0-2%2 " in p.stdout, p.stderr
    assert (" --gpus-per-node=1 " in p.stdout) == bool(cluster.gpus), p.stdout
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

    # resubmitting the same array: every task sees DONE and exits at once. By hand with the
    # recipe's options; on the CPU cluster a plain sbatch with the header defaults (they fit)
    opts = swax.cli("slurm", "options", SWEEP, *args, "--sweep").stdout.split() if cluster.gpus else []
    again = swax.sbatch("--array=0-2", *opts, os.path.join(REPO, "slurm", "sweep.sh"), SWEEP, *args)
    infos, log = finished(cluster, again, timeout=120)
    assert {i["JobState"] for i in infos} == {"COMPLETED"}, log
    if not cluster.gpus:
        assert {i["NumTasks"] for i in infos} == {"8"}, infos  # the header's shape
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


@on_gpu_cluster
@pytest.mark.parametrize("args,message", [
    (["slurm.gpus_per_node=4", "train.global_batch_size=16"],
     "slurm.gpus_per_node=4, but the nodes of partition `debug` have at most 3 GPUs"),
    (["slurm.partition=gpu"], "partition `gpu` does not exist on this cluster (partitions: debug, short)"),
    (["slurm.partition=shrt"], "did you mean `short`?"),
    (["slurm.partition=short", "slurm.time=01:00:00"],
     "slurm.time=01:00:00 exceeds the time limit of partition `short` (10 minutes)"),
    (["slurm.partition=debug,short"],  # a list: the job must fit each
     "slurm.time=00:30:00 exceeds the time limit of partition `short` (10 minutes)"),
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


@on_gpu_cluster
def test_unreadable_recipe_is_not_submitted(swax, cluster, tmp_path):
    before = job_ids(cluster)
    for recipe, message in [(str(tmp_path / "missing.yaml"), "recipe file not found"),
                            (str(tmp_path), "is a directory")]:
        for cmd in (["slurm", "submit"], ["sweep", "submit"], ["slurm", "options"]):
            p = swax.cli(*cmd, recipe)
            assert p.returncode == 2 and message in p.stderr and p.stderr.count("\n") == 1, p.stderr
    assert job_ids(cluster) == before


@on_gpu_cluster
def test_submit_command_fits_the_recipe_kind(swax):
    p = swax.cli("sweep", "submit", RECIPE)
    assert p.returncode == 2 and "recipe has no sweep block" in p.stderr
    for cmd in (["slurm", "submit"], ["slurm", "options"]):
        p = swax.cli(*cmd, SWEEP)
        assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
        assert "recipe has a sweep block: submit it with `swax sweep submit`" in p.stderr


@on_gpu_cluster
def test_job_shaped_unlike_the_recipe_fails_fast(swax, cluster, cache, tmp_path):
    # a plain sbatch with one task for a recipe whose world size is 2: stopped before any rank starts
    job = swax.sbatch("--ntasks-per-node=1", "--gpus-per-node=1", "--cpus-per-task=1", "--time=5",
                      f"--output={tmp_path}/%j.out", os.path.join(REPO, "slurm", "pretrain.sh"),
                      RECIPE, *overrides(str(tmp_path), cache))
    infos, log = finished(cluster, job, timeout=60)
    assert infos[0]["JobState"] == "FAILED" and infos[0]["ExitCode"] == "2:0", log
    assert "the recipe's world size is 2 (slurm.nodes x slurm.gpus_per_node = 1 x 2), this job has 1 tasks" in log


@on_gpu_cluster
def test_master_addr_is_never_guessed(swax, cache, tmp_path):
    env = swax.env(slurm=True)
    env.update(SLURM_JOB_ID="999999", SLURM_JOB_NODELIST="", SLURM_NTASKS="2")
    p = swax.script("pretrain.sh", RECIPE, *overrides(str(tmp_path), cache), env=env, timeout=120)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "refusing to guess MASTER_ADDR" in p.stderr
    assert not glob.glob(str(tmp_path / "*" / "metrics.jsonl"))


def test_sbatch_with_the_recipes_options(swax, cluster, reference):
    """`sbatch $(swax slurm options RECIPE) slurm/pretrain.sh RECIPE`, for the reference's run:
    sbatch takes the options on either kind of partition, the job sees DONE and exits 0."""
    *_, args = reference
    p = swax.cli("slurm", "options", RECIPE, *args)
    assert p.returncode == 0, p.stderr
    opts = p.stdout.split()
    assert ("--gpus-per-node=2" in opts) == bool(cluster.gpus), opts
    assert cluster.gpus or "partition `cpu` has no GPUs: 2 processes per node on CPUs" in p.stderr
    job = swax.sbatch(*opts, PRETRAIN, RECIPE, *args)
    infos, log = finished(cluster, job, timeout=60)
    assert infos[0]["JobState"] == "COMPLETED" and "is done: nothing to do" in log, log


@on_gpu_cluster
def test_a_list_of_partitions(swax, cluster, reference):
    """slurm.partition=a,b as sbatch takes it (the reference's run again: the job sees DONE)."""
    *_, args = reference
    job = swax.submit("slurm", "submit", RECIPE, *args, "slurm.partition=debug,short", "slurm.time=00:05:00")
    infos, log = finished(cluster, job, timeout=60)
    assert infos[0]["JobState"] == "COMPLETED" and "is done: nothing to do" in log, log
    assert infos[0]["Partition"] in ("debug", "short"), infos[0]


@on_cpu_cluster
def test_plain_sbatch_on_a_cpu_partition(swax, cluster, cache, reference, tmp_path):
    """The #SBATCH header defaults alone: sbatch accepts them without GPU GRES (8 tasks here)."""
    *_, args = reference
    job = swax.sbatch(PRETRAIN, RECIPE, *args)
    infos, log = finished(cluster, job, timeout=60)
    assert infos[0]["JobState"] == "COMPLETED" and "is done: nothing to do" in log, log
    assert infos[0]["NumTasks"] == "8" and infos[0].get("TresPerNode", "") == "", infos[0]
    # a run that is not done gets as far as the shape check: the recipe's 2 ranks are not 8 tasks
    job = swax.sbatch(PRETRAIN, RECIPE, *overrides(str(tmp_path), cache))
    infos, log = finished(cluster, job, timeout=60)
    assert infos[0]["JobState"] == "FAILED" and infos[0]["ExitCode"] == "2:0", log
    assert "the recipe's world size is 2 (slurm.nodes x slurm.gpus_per_node = 1 x 2), this job has 8 tasks" in log


@on_cpu_cluster
def test_errors_before_submission_on_a_cpu_partition(swax, cluster, tmp_path):
    before = job_ids(cluster)
    out = tmp_path / "out"
    for args, message in [
        (["slurm.cpus_per_task=40"], "2 x 40 = 80 CPUs per node, but the nodes of partition `cpu` have at most 64"),
        (["slurm.partition=debug"], "partition `debug` does not exist on this cluster (partitions: cpu)"),
        (["--script", str(tmp_path / "missing.sh")], f"--script: {tmp_path}/missing.sh is not a file"),
        # --no-check cannot know the partition has no GPUs: it asks for them, and sbatch says no
        # (after the log folder was made: it is removed again)
        (["--no-check"], "sbatch refused the job: sbatch: error: Invalid generic resource (gres) specification"),
    ]:
        p = swax.cli("slurm", "submit", RECIPE, f"run.output_root={out}", *args)
        assert p.returncode == 2 and p.stdout == "", p.stderr
        assert p.stderr.count("\n") == 1 and message in p.stderr, p.stderr
    assert not out.exists() and job_ids(cluster) == before


@on_gpu_cluster
@pytest.mark.parametrize("gpus", [[], ["--gpus-per-node=1"]], ids=["none", "one"])
def test_gpu_nodes_without_their_gpus_fail_fast(swax, cluster, cache, tmp_path, gpus):
    """A plain sbatch on GPU nodes (the header asks for no GPUs) with fewer GPUs than ranks per node
    stops before any rank starts, instead of training on CPUs or sharing a GPU."""
    job = swax.sbatch("--ntasks-per-node=2", "--cpus-per-task=1", "--time=5", *gpus,
                      f"--output={tmp_path}/%j.out", PRETRAIN, RECIPE, *overrides(str(tmp_path), cache))
    infos, log = finished(cluster, job, timeout=60)
    assert infos[0]["JobState"] == "FAILED" and infos[0]["ExitCode"] == "2:0", log
    have = len(gpus)
    assert (f"the recipe runs 2 processes per node (slurm.gpus_per_node), this job has {have} of the "
            f"node's GPUs (gpu:3): add --gpus-per-node=2") in log, log
    assert not glob.glob(str(tmp_path / "*" / "metrics.jsonl"))


@on_gpu_cluster
def test_unknown_site_profile_is_refused_before_anything_runs(swax, cluster, cache, tmp_path):
    before = job_ids(cluster)
    out = tmp_path / "out"
    bad = [f"run.output_root={out}", "slurm.site=nosuch"]
    for cmd, recipe in [(["slurm", "options"], RECIPE), (["slurm", "submit"], RECIPE),
                        (["sweep", "submit"], SWEEP), (["slurm", "job-env"], RECIPE)]:
        p = swax.cli(*cmd, recipe, *bad)
        assert p.returncode == 2 and p.stdout == "" and p.stderr.count("\n") == 1, (cmd, p.stderr)
        assert "override `slurm.site=nosuch`: slurm.site: no site profile `nosuch` (profiles in " in p.stderr
        assert "default" in p.stderr.split("profiles in ")[1], p.stderr
    # the job's own check (job-env) with the folder the script found, before anything is written
    p = swax.script("pretrain.sh", RECIPE, *overrides(str(out), cache), "slurm.site=nosuch")
    assert p.returncode == 2 and "no site profile `nosuch`" in p.stderr, p.stdout + p.stderr
    # SWAX_SITE (set at submission) is the script's own to check
    env = swax.env(slurm=False)
    env["SWAX_SITE"] = "nosuch"
    p = swax.script("pretrain.sh", RECIPE, *overrides(str(out), cache), env=env)
    assert p.returncode == 2 and "site profile 'nosuch' not found" in p.stderr, p.stdout + p.stderr
    assert not out.exists() and job_ids(cluster) == before


@on_gpu_cluster
def test_log_folder_that_cannot_be_created(swax, cluster, tmp_path):
    """run.output_root is a file, or a folder nobody may write to: one line, nothing submitted."""
    afile = tmp_path / "file"
    afile.write_text("not a folder\n")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    # root writes anywhere: drop the capability that lets it, where the tool for that exists
    setpriv = shutil.which("setpriv")
    drop = [setpriv, "--bounding-set=-dac_override", "--"] if os.geteuid() == 0 and setpriv else []
    cases = [(str(afile), (), "Not a directory")]
    if drop or os.geteuid() != 0:
        cases.append((str(locked / "runs"), drop, "Permission denied"))
    before = job_ids(cluster)
    for root, prefix, reason in cases:
        for cmd, recipe in [(["slurm", "options"], RECIPE), (["slurm", "submit"], RECIPE),
                            (["sweep", "submit"], SWEEP)]:
            p = swax.cli(*cmd, recipe, f"run.output_root={root}", prefix=prefix)
            assert p.returncode == 2 and p.stdout == "" and p.stderr.count("\n") == 1, (cmd, p.stderr)
            assert (f"run.output_root: cannot create the log folder {root}/slurm-logs: {reason}"
                    in p.stderr), p.stderr
    assert os.listdir(locked) == [] and job_ids(cluster) == before


def test_scripts_are_valid_bash():
    for name in ("pretrain.sh", "sweep.sh", "eval.sh"):
        subprocess.run(["bash", "-n", os.path.join(REPO, "slurm", name)], check=True)


# --- swax eval submit / slurm/eval.sh ----------------------------------------------------------
EVAL_TASKS = "passkey,ppl_by_position"
SMALL_EVAL = ["eval.lengths=[512]", "eval.samples=1", "eval.depths=[0]", "eval.ppl_sequences=1"]


@on_gpu_cluster
def test_eval_submit_evaluates_runs_and_skips_done_ones(swax, cluster, reference, tmp_path):
    """`swax eval submit` of the reference run (trained, 16 steps) and of a run without a
    checkpoint: one array task for the first, a note for the second; the results files appear;
    a second submit submits nothing; slurm/eval.sh run locally skips the done results too."""
    run_dir = reference[3]
    nockpt = tmp_path / "no-checkpoint"
    nockpt.mkdir()
    shutil.copy(os.path.join(run_dir, "resolved.yaml"), nockpt / "resolved.yaml")
    ev = [run_dir, str(nockpt), "--tasks", EVAL_TASKS, *SMALL_EVAL]

    p = swax.cli("eval", "submit", *ev, "--dry-run")
    assert p.returncode == 0, p.stderr
    cmd = shlex.split(p.stdout)
    assert cmd[:3] == ["sbatch", "--parsable", "--array=0"], p.stdout
    assert "--gpus-per-node=1" in cmd and "--ntasks-per-node=1" in cmd and "--no-requeue" in cmd
    script = cmd.index(os.path.join(REPO, "slurm", "eval.sh"))
    assert cmd[script + 1:] == [run_dir, "--tasks", EVAL_TASKS, *SMALL_EVAL], cmd
    assert f"{nockpt}: no checkpoint to evaluate" in p.stderr, p.stderr

    job = swax.submit("eval", "submit", *ev)  # `eval submit` is `eval-submit`
    infos, log = finished(cluster, job)
    assert [i["JobState"] for i in infos] == ["COMPLETED"], log
    assert f"run 1 of 1: {run_dir}" in log and f"evaluated {run_dir}" in log, log
    results = {}
    for path in glob.glob(os.path.join(run_dir, "eval", "*.json")):
        with open(path) as f:
            data = json.load(f)
        results[data["task"]] = data
    assert sorted(results) == ["passkey", "ppl_by_position"], log
    assert {r["checkpoint"]["step"] for r in results.values()} == {STEPS}
    assert results["passkey"]["settings"]["lengths"] == [512]
    mtimes = sorted(os.path.getmtime(p) for p in glob.glob(os.path.join(run_dir, "eval", "*")))

    before = job_ids(cluster)
    p = swax.cli("eval-submit", *ev)
    assert p.returncode == 0 and p.stdout == "" and "nothing to submit" in p.stderr, p.stderr
    assert f"{run_dir}: all requested evaluations done" in p.stderr, p.stderr
    assert job_ids(cluster) == before
    # a task not done yet makes the run due again
    p = swax.cli("eval", "submit", run_dir, "--tasks", "mqar", *SMALL_EVAL, "--dry-run")
    assert p.returncode == 0 and " --array=0 " in p.stdout, p.stderr

    p = swax.script("eval.sh", run_dir, "--tasks", EVAL_TASKS, *SMALL_EVAL, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stderr.count(", skipped") == 2, p.stderr
    assert mtimes == sorted(os.path.getmtime(p) for p in glob.glob(os.path.join(run_dir, "eval", "*")))


@on_gpu_cluster
def test_eval_submit_bad_input_is_one_line(swax, cluster, reference, tmp_path):
    run_dir = reference[3]
    before = job_ids(cluster)
    for args, message in [
        ([str(tmp_path / "missing")], "neither a recipe file nor a run directory"),
        ([str(tmp_path)], "not a run directory (no resolved.yaml)"),
        ([run_dir, "--tasks", "nosuch"], "unknown evaluation task 'nosuch'"),
        ([run_dir, "train.steps=3"], "only eval.* settings can be changed"),
        ([run_dir, "eval.samples=0"], "eval.samples"),
        ([RECIPE, run_dir], "give one recipe, or run directories, not both"),
        ([run_dir, "--parallel", "0"], "--parallel must be at least 1"),
    ]:
        p = swax.cli("eval", "submit", *args)
        assert p.returncode == 2 and p.stdout == "", (args, p.stderr)
        assert p.stderr.count("\n") == 1 and message in p.stderr, (args, p.stderr)
    assert job_ids(cluster) == before
    p = swax.script("eval.sh", str(tmp_path / "missing"))
    assert p.returncode == 2 and "neither a recipe file nor a run directory" in p.stderr, p.stderr
