"""A real SLURM cluster for the session (see slurm_cluster.py), skipped with its reason where the
Debian packages (slurm-wlm, munge) are missing or the tests do not run as root."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import pytest

from slurm_cluster import LocalCluster, missing_binaries
from slurm_testing import Swax


def _skip_reason() -> str:
    if not sys.platform.startswith("linux"):
        return "SLURM tests need Linux"
    missing = missing_binaries()
    if missing:
        return (f"SLURM not installed (missing: {', '.join(missing)}): "
                f"apt-get install -y slurm-wlm munge")
    if os.geteuid() != 0:
        return "SLURM tests start munged, slurmctld and slurmd, which needs root"
    return ""


# The two kinds of partition the scripts must work on, each a one-node cluster whose CPUs and GPUs
# are advertised on the 2-core machine, not real. Tests run on both unless they ask for one
# (slurm_testing.on_gpu_cluster / on_cpu_cluster); pytest brings up one cluster at a time.
CLUSTERS = {
    # a 2-task job fits, and the three 1-GPU tasks of the test sweep run at once
    "gpu": dict(cpus=4, gpus=3, partitions=(("debug", "INFINITE"), ("short", "00:10:00"))),
    # no GRES at all, so sbatch refuses any GPU request; 64 CPUs fit the #SBATCH header defaults
    # of slurm/*.sh (8 tasks x 8 CPUs)
    "cpu": dict(cpus=64, gpus=0, partitions=(("cpu", "INFINITE"),)),
}


@pytest.fixture(scope="session", params=list(CLUSTERS))
def cluster(request):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    # not under pytest's tmp folder: munged wants every folder above its socket searchable by all
    root = tempfile.mkdtemp(prefix=f"swax-slurm-{request.param}-")
    os.chmod(root, 0o755)
    c = LocalCluster(str(root), **CLUSTERS[request.param])
    try:
        c.up()
        yield c
    finally:
        c.down()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def swax(cluster, tmp_path_factory):
    return Swax(cluster, str(tmp_path_factory.mktemp("submit")))
