"""Helpers for the SLURM tests: run the CLI and the slurm/ scripts as a user does, read results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Dict, List

import pytest

from slurm_cluster import LocalCluster

# a test that is about one kind of cluster (conftest.CLUSTERS) only
on_gpu_cluster = pytest.mark.parametrize("cluster", ["gpu"], indirect=True)
on_cpu_cluster = pytest.mark.parametrize("cluster", ["cpu"], indirect=True)

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


class Swax:
    """Runs the swax CLI and the slurm/ scripts the way a user does, against the test cluster."""

    def __init__(self, cluster: LocalCluster, workdir: str):
        self.cluster, self.workdir = cluster, workdir

    def env(self, slurm: bool = True) -> Dict[str, str]:
        env = self.cluster.env if slurm else {k: v for k, v in os.environ.items()
                                              if not k.startswith("SLURM_")}
        # the interpreter the jobs use: this one, unless the caller names another
        env["SWAX_PYTHON"] = os.environ.get("SWAX_PYTHON", sys.executable)
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        env.pop("SWAX_LOCAL", None)
        return env

    def cli(self, *args: str, timeout: float = 120, prefix=()) -> subprocess.CompletedProcess:
        """`prefix`: a command the CLI runs under (setpriv, to drop capabilities)."""
        return subprocess.run([*prefix, sys.executable, "-m", "swax_megatron.cli", *args],
                              cwd=self.workdir, env=self.env(), capture_output=True, text=True,
                              timeout=timeout)

    def script(self, name: str, *args: str, env=None, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", os.path.join(REPO, "slurm", name), *args], cwd=self.workdir,
                              env=env or self.env(slurm=False), capture_output=True, text=True,
                              timeout=timeout)

    def sbatch(self, *args: str) -> str:
        p = self.cluster.run("sbatch", "--parsable", *args, env=self.env(), cwd=self.workdir)
        return p.stdout.strip().split(";")[0]

    def submit(self, *args: str) -> str:
        p = self.cli(*args)
        assert p.returncode == 0, p.stderr
        return p.stdout.strip().splitlines()[-1]


def records(run_dir: str) -> List[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def train_losses(run_dir: str) -> Dict[int, float]:
    """step -> training loss from the run's metrics.jsonl (floats are written exactly)."""
    return {r["step"]: r["loss"] for r in records(run_dir) if r.get("kind") == "train"}
