"""slurm/pretrain.sh across nodes: a real two-node SLURM cluster built from network namespaces
(netns_cluster.py: each slurmd with its own hostname and address, traffic over a private bridge),
the real trainer on gloo, both launchers.

The reference is the same recipe at TP=2 x DP=2 on one node (4 tasks). Spread over two nodes (2
ranks per node, 1 thread each) it must give bitwise the same losses and final weights and
optimizer state, with srun (a task per rank) and torchrun (one per node, c10d rendezvous at the
first node). A USR1 preemption requeues the two-node job, which resumes on both nodes; a node
that fails mid-run (every process in its namespace killed) ends the attempt with a clear state
(SLURM: node down, job requeued and waiting for it; exit.json: code, step, checkpoint) and the run
resumes to the reference's losses once the node is back.

The rendezvous tests run the script's launch path with a probe in the trainer's place (torch
only) and are in the default suite; the tests that train are `slow`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile

import pytest
import torch

from netns_cluster import NetnsCluster, netns_skip_reason
from slurm_testing import REPO, Swax, records, train_losses

RECIPE = os.path.join(REPO, "recipes", "tiny", "swax.yaml")
STEPS = 8
TINY = ["train.seq_length=128", "optim.warmup_steps=2", "train.eval_every=1000",
        "train.eval_iters=1", "checkpoint.every_minutes=null", "train.global_batch_size=8",
        "parallel.tensor_model_parallel_size=2", "slurm.cpus_per_task=1"]
ONE_NODE = ["slurm.nodes=1", "slurm.gpus_per_node=4"]
TWO_NODES = ["slurm.nodes=2", "slurm.gpus_per_node=2"]
JOB_TIMEOUT = 240
# The tests that train are `slow` (each job starts torch and megatron in 4 processes on
# the 2-core CI machine: about a minute, more under load); the rendezvous tests run every time.


@pytest.fixture(scope="module")
def netns_cluster():
    reason = netns_skip_reason()
    if reason:
        pytest.skip(reason)
    root = tempfile.mkdtemp(prefix="swax-netns-")
    os.chmod(root, 0o755)  # munged wants every folder above its socket searchable by all
    c = NetnsCluster(root, nodes=2, cpus=4)
    try:
        c.up()
        yield c
    finally:
        try:
            c.down()
        finally:  # SWAX_KEEP_CLUSTER=1 keeps the logs and state for a look after a failure
            if os.environ.get("SWAX_KEEP_CLUSTER") != "1":
                shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def swax(netns_cluster, tmp_path_factory):
    return Swax(netns_cluster, str(tmp_path_factory.mktemp("submit")))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data-cache"))


def overrides(out, cache, *extra, steps=STEPS, every=1000):
    return [*TINY, f"train.steps={steps}", f"checkpoint.every_steps={every}",
            f"run.output_root={out}", f"data.cache_dir={cache}", *extra]


def run_dir_of(log):
    """The run directory the job says it trains (the job resolved the recipe itself)."""
    m = re.search(r"\] run \S+ in (\S+)$", log, re.M)
    assert m, log
    return m.group(1)


def submit(swax, cluster, args, timeout=JOB_TIMEOUT, wait=True):
    job = swax.submit("slurm", "submit", RECIPE, *args)
    if not wait:
        return job
    return finished(cluster, job, timeout)


def finished(cluster, job, timeout=JOB_TIMEOUT):
    info = cluster.wait(job, timeout)[0]
    log = open(info["StdOut"], errors="replace").read() if os.path.exists(info.get("StdOut", "")) else ""
    return job, info, log


def checkpoint_tensors(run_dir):
    """Every tensor of the run's latest checkpoint (model, optimizer state), read without a
    process group: megatron's torch_dist format is torch.distributed.checkpoint's."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    root = os.path.join(run_dir, "checkpoints")
    path = os.path.join(root, open(os.path.join(root, "latest")).read().strip())
    state = {}
    _load_state_dict(state, storage_reader=FileSystemReader(path),
                     planner=_EmptyStateDictLoadPlanner(), no_dist=True)
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def steps_done(run_dir):
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    with open(path) as f:  # being appended to: whole lines only
        return sum(1 for line in f if line.endswith("\n") and '"kind": "train"' in line)


# --- rendezvous: the launch path of slurm/pretrain.sh with a probe in the trainer's place ------
# Fast enough for every test run: only torch is imported. SWAX_PYTHON is a shim that runs the
# probe where the script runs `python -m swax_megatron.train` (everything else it runs, job-env
# and torchrun, is the real interpreter). The probe sets up the process group with the trainer's
# own code (training.distributed), so rank, world, MASTER_ADDR and MASTER_PORT come from where the
# trainer takes them, and all ranks gather who they are and all-reduce a tensor.
PROBE = """
import json, os, socket, sys
import torch
from swax_megatron.training import distributed
env = distributed.detect()
distributed.init_process_group(env)
x = torch.tensor([float(env.rank + 1)])
torch.distributed.all_reduce(x)
me = dict(rank=env.rank, world=env.world_size, local_rank=env.local_rank, launcher=env.launcher,
          host=socket.gethostname(), addr=socket.gethostbyname(socket.gethostname()),
          master=os.environ["MASTER_ADDR"], port=os.environ["MASTER_PORT"], sum=x.item())
everyone = [None] * env.world_size
torch.distributed.all_gather_object(everyone, me)
if env.rank == 0:
    with open(sys.argv[1], "w") as f:
        json.dump(everyone, f)
torch.distributed.destroy_process_group()
"""


def probe_python(tmp_path):
    """A SWAX_PYTHON that runs PROBE (writing tmp_path/ranks.json) in the trainer's place."""
    probe, shim = tmp_path / "probe.py", tmp_path / "python"
    probe.write_text(PROBE)
    shim.write_text(f"""#!/bin/sh
if [ "$1" = -m ] && [ "$2" = swax_megatron.train ]; then exec {sys.executable} {probe} {tmp_path}/ranks.json; fi
exec {sys.executable} "$@"
""")
    shim.chmod(0o755)
    return str(shim)


@pytest.mark.parametrize("launcher", ["srun", "torchrun"])
def test_rendezvous_across_nodes(launcher, swax, netns_cluster, cache, tmp_path):
    c = netns_cluster
    args = overrides(str(tmp_path / "runs"), cache, *TWO_NODES, f"slurm.launcher={launcher}")
    p = swax.cli("slurm", "options", RECIPE, *args)
    assert p.returncode == 0, p.stderr
    env = swax.env()
    env["SWAX_PYTHON"] = probe_python(tmp_path)
    job = c.run("sbatch", "--parsable", *p.stdout.split(), os.path.join(REPO, "slurm", "pretrain.sh"),
                RECIPE, *args, env=env, cwd=swax.workdir).stdout.strip()
    _, info, log = finished(c, job, timeout=120)
    assert info["JobState"] == "COMPLETED", log + c.logs()
    first, second = c.nodes
    assert f"job {job} on {c.tag}-node[1-2], restart count 0, launcher {launcher}, world size 4, " \
           f"master {first}:{20000 + int(job) % 20000}" in log, log
    ranks = json.load(open(tmp_path / "ranks.json"))
    assert [r["rank"] for r in ranks] == [0, 1, 2, 3] and {r["sum"] for r in ranks} == {10.0}
    # two ranks on each node, each node by its own name and bridge address
    assert [(r["host"], r["addr"], r["local_rank"]) for r in ranks] == [
        (first, c.addr[first], 0), (first, c.addr[first], 1),
        (second, c.addr[second], 0), (second, c.addr[second], 1)], ranks
    assert {r["launcher"] for r in ranks} == {"slurm" if launcher == "srun" else "torchrun"}
    if launcher == "srun":  # every rank meets at the first node, by name, at the job's port
        assert {(r["master"], r["port"]) for r in ranks} == {(first, str(20000 + int(job) % 20000))}
    else:  # torchrun's c10d rendezvous met there; its agents chose the ranks' own master
        assert {r["master"] for r in ranks} in ({first}, {c.addr[first]}), ranks


@pytest.fixture(scope="module")
def one_node(swax, netns_cluster, cache, tmp_path_factory):
    """The reference: TP=2 x DP=2 as 4 tasks on the first node alone."""
    args = overrides(str(tmp_path_factory.mktemp("one-node")), cache, *ONE_NODE)
    job, info, log = submit(swax, netns_cluster, args)
    assert info["JobState"] == "COMPLETED", log
    assert info["NumNodes"] == "1" and info["NumTasks"] == "4", info
    run_dir = run_dir_of(log)
    assert sorted(train_losses(run_dir)) == list(range(1, STEPS + 1))
    return run_dir


@pytest.mark.slow  # trains: see the note at JOB_TIMEOUT
@pytest.mark.parametrize("launcher", ["srun", "torchrun"])
def test_tp2_dp2_over_two_nodes_equals_one_node(launcher, swax, netns_cluster, cache, one_node,
                                                 tmp_path):
    c = netns_cluster
    args = overrides(str(tmp_path), cache, *TWO_NODES, f"slurm.launcher={launcher}")
    job, info, log = submit(swax, c, args)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log + c.logs()
    first, second = c.nodes
    # both nodes, 2 tasks each (srun) or one torchrun each; the first node is the master by name
    assert info["NumNodes"] == "2" and c.run("scontrol", "show", "hostnames",
                                             info["NodeList"]).stdout.split() == c.nodes, info
    assert info["NumTasks"] == ("4" if launcher == "srun" else "2"), info
    assert f"launcher {launcher}, world size 4, master {first}:" in log, log
    run_dir = run_dir_of(log)
    attempt = [r for r in records(run_dir) if r.get("kind") == "attempt"]
    assert attempt and attempt[0]["host"] == first and attempt[0]["world_size"] == 4, attempt
    assert "(tp 2, pp 1, dp 2)" in log, log
    assert train_losses(run_dir) == train_losses(one_node)
    got, want = checkpoint_tensors(run_dir), checkpoint_tensors(one_node)
    assert sorted(got) == sorted(want) and any(k.startswith("optimizer.") for k in got)
    assert [k for k in got if not torch.equal(got[k], want[k])] == []


@pytest.mark.slow  # trains: see the note at JOB_TIMEOUT
@pytest.mark.parametrize("launcher", ["srun", "torchrun"])
def test_usr1_requeues_and_resumes_across_nodes(launcher, swax, netns_cluster, cache, one_node,
                                                tmp_path):
    """`scancel --signal=USR1 --batch`: the batch shell on the first node forwards USR1 through
    srun to the ranks (or torchruns) of both nodes; they checkpoint and stop, the job requeues
    itself and resumes on two nodes to the one-node run's losses."""
    c = netns_cluster
    args = overrides(str(tmp_path), cache, *TWO_NODES, f"slurm.launcher={launcher}")
    job = submit(swax, c, args, wait=False)
    run_dir = c.wait_for(lambda: _run_dir_in_log(c, job), timeout=JOB_TIMEOUT, what="the job's log")
    c.wait_for(lambda: steps_done(run_dir) >= 2, timeout=JOB_TIMEOUT, what="the first training steps",
               poll=0.05)
    c.run("scancel", "--signal=USR1", "--batch", job)
    _, info, log = finished(c, job)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", log + c.logs()
    assert f"checkpoint written: requeueing job {job} (restart 1)" in log, log
    assert log.count(f"on {info['NodeList']}, restart count") == 2, log  # both runs on both nodes
    saved = [r for r in records(run_dir) if r.get("kind") == "checkpoint" and r["reason"] == "signal"]
    assert len(saved) == 1 and saved[0]["step"] < STEPS, (saved, log)
    assert f"at step {saved[0]['step']}" in log, log
    assert train_losses(run_dir) == train_losses(one_node)


@pytest.mark.slow  # trains: see the note at JOB_TIMEOUT
@pytest.mark.parametrize("launcher", ["srun", "torchrun"])
def test_a_failed_node_fails_the_job_clearly_and_the_run_resumes(launcher, swax, netns_cluster,
                                                                 cache, one_node, tmp_path):
    """Every process of the second node killed (slurmd, step daemons, ranks) right after the
    run's first checkpoint: the first node's ranks fail on the broken collective, SLURM marks the
    node down and requeues the job (--requeue), which waits for the node with a reason saying
    so; exit.json says how the attempt ended and where a rerun resumes. The node comes back,
    the job runs again and resumes to the one-node run's losses."""
    c = netns_cluster
    first, second = c.nodes
    args = overrides(str(tmp_path), cache, *TWO_NODES, f"slurm.launcher={launcher}", every=2)
    job = submit(swax, c, args, wait=False)
    run_dir = c.wait_for(lambda: _run_dir_in_log(c, job), timeout=JOB_TIMEOUT, what="the job's log")
    latest = os.path.join(run_dir, "checkpoints", "latest")
    c.wait_for(lambda: os.path.exists(latest), timeout=JOB_TIMEOUT, what="the first checkpoint",
               poll=0.05)
    try:
        assert c.kill_node(second)
        # SLURM: node down (not responding), the job requeued and held until the node is back
        c.wait_for(lambda: c.node_states().get(second, "").startswith("down"), timeout=120,
                   what=f"{second} to be marked down")
        info = c.wait_for(lambda: (lambda i: i if i["JobState"] == "PENDING" and "DOWN" in i["Reason"]
                                   else None)(c.job(job)), timeout=60, what="the job to wait for the node")
        assert info["Restarts"] == "1", info
        node = c.run("scontrol", "show", "node", "-o", second).stdout
        assert "Reason=Not responding" in node, node
        log = open(info["StdOut"], errors="replace").read()
        assert "CANCELLED AT" in log and "DUE TO NODE FAILURE" in log, log
        # the run directory: the failed attempt as the launcher saw it, and the checkpoint
        exit_record = json.load(open(os.path.join(run_dir, "exit.json")))
        ckpt = os.path.join(run_dir, "checkpoints", open(latest).read().strip())
        assert exit_record["code"] not in (None, 0) and exit_record["checkpoint"] == ckpt, exit_record
        reason = exit_record["reason"]
        assert f"(job {job} on {c.tag}-node[1-2]" in reason, reason
        assert reason.endswith(f"a rerun resumes from {ckpt}"), reason
        assert exit_record["step"] >= int(ckpt[-7:]), exit_record
        assert f"training failed with exit code {exit_record['code']}" in log, log
    finally:
        c.start_slurmd(second)
    c.wait_for(lambda: c.node_states().get(second) in ("idle", "mixed", "allocated"), timeout=60,
               what=f"{second} back in service")
    _, info, log = finished(c, job)
    if info["JobState"] == "FAILED":
        # SLURM's race (see slurm/pretrain.sh, --immediate): the job restarted the moment the node
        # was back and lost it again; srun gave up instead of waiting forever. Resubmitted, it resumes.
        assert f"Unable to create step for job {job}" in log, log + c.logs()
        job, info, log = submit(swax, c, args)
    else:
        assert info["Restarts"] == "1" and "restart count 1" in log, log
    assert info["JobState"] == "COMPLETED", log + c.logs()
    assert f"at step {int(ckpt[-7:])}" in log.split("restart count")[-1], log
    assert json.load(open(os.path.join(run_dir, "exit.json")))["reason"] == "done"
    assert train_losses(run_dir) == train_losses(one_node)


def _run_dir_in_log(cluster, job):
    path = cluster.job(job).get("StdOut", "")
    if not os.path.exists(path):
        return None
    m = re.search(r"\] run \S+ in (\S+)$", open(path, errors="replace").read(), re.M)
    return m and m.group(1)


def test_record_failure_writes_only_over_a_running_record(tmp_path):
    """The launcher's exit.json: over the trainer's "running" only, with the last trained step
    and the checkpoint a rerun resumes from."""
    from swax_megatron.launch.jobenv import record_failure

    run, ckpts = tmp_path / "run", tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    assert not record_failure(str(run), str(ckpts), 1, "job 7")  # no exit.json: nothing started
    exit_json = run / "exit.json"
    exit_json.write_text(json.dumps({"code": None, "step": 0, "reason": "running", "checkpoint": None}))
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"kind": "attempt", "attempt": 1, "start_step": 0},
        {"kind": "train", "step": 1, "loss": 7.0}, {"kind": "train", "step": 2, "loss": 6.0},
        {"kind": "checkpoint", "step": 2, "reason": "every_steps"},
        {"kind": "train", "step": 3, "loss": 5.0}]))
    assert record_failure(str(run), str(ckpts), 1, "job 7 on n[1-2]")
    got = json.loads(exit_json.read_text())
    assert got == {"code": 1, "step": 3, "checkpoint": None,
                   "reason": "the ranks failed with exit code 1 before the trainer recorded why "
                             "(job 7 on n[1-2]); no checkpoint yet: a rerun starts over"}
    exit_json.write_text(json.dumps({"code": None, "step": 0, "reason": "running", "checkpoint": None}))
    (ckpts / "latest").write_text("iter_0000002\n")
    assert record_failure(str(run), str(ckpts), 137, "job 8")
    got = json.loads(exit_json.read_text())
    assert got["code"] == 137 and got["checkpoint"] == str(ckpts / "iter_0000002")
    assert got["reason"].endswith(f"a rerun resumes from {ckpts / 'iter_0000002'}")
    # the trainer's own record (a diverged run, a finished one) is never replaced
    for own in ({"code": 3, "step": 5, "reason": "diverged", "checkpoint": None},
                {"code": 0, "step": 8, "reason": "done", "checkpoint": None}):
        exit_json.write_text(json.dumps(own))
        assert not record_failure(str(run), str(ckpts), 1, "job 9")
        assert json.loads(exit_json.read_text()) == own
