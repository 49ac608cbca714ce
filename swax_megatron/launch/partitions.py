"""What the cluster offers: partitions with their node count, CPUs, GPUs and time limit (`sinfo`).

Submission checks a recipe against this before calling sbatch, because SLURM accepts a job that
asks for more CPUs, GPUs, nodes or time than a partition has and lets it pend forever.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Dict, Optional

from .errors import LaunchError

# partition (default marked with *), availability, nodes, CPUs per node, GRES per node, time limit
SINFO_FORMAT = "%P|%a|%D|%c|%G|%l"


@dataclass
class Partition:
    name: str
    default: bool
    available: bool
    nodes: int
    cpus_per_node: int  # the largest node's
    gpus_per_node: int  # the largest node's; 0 on a CPU-only partition
    max_minutes: Optional[float]  # None: no limit


def gpus_in_gres(gres: str) -> int:
    """GPUs in a node's GRES string: `gpu:8`, `gpu:a100:4(S:0-1)`, `gpu:2,nvme:1`, `(null)`."""
    total = 0
    for item in re.split(r",(?![^(]*\))", gres):
        m = re.fullmatch(r"gpu(?::[^:(]+)?:(\d+)(?:\(.*\))?", item.strip())
        if m:
            total += int(m.group(1))
    return total


def minutes(text: str) -> Optional[float]:
    """A SLURM time (`MM`, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM`, `D-HH:MM:SS`) in minutes;
    None for `infinite` / `UNLIMITED`. Raises ValueError on anything else."""
    t = text.strip()
    if t.lower() in ("infinite", "unlimited"):
        return None
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", t)
    if not m:
        raise ValueError(f"`{text}` is not a SLURM time (MM, HH:MM:SS or D-HH:MM:SS)")
    days, a, b, c = m.groups()
    parts = [int(x) for x in (a, b, c) if x is not None]
    if days is not None:  # D-HH, D-HH:MM, D-HH:MM:SS
        h, mi, s = (parts + [0, 0])[:3]
        return int(days) * 1440 + h * 60 + mi + s / 60
    if len(parts) == 1:  # MM
        return float(parts[0])
    if len(parts) == 2:  # MM:SS
        return parts[0] + parts[1] / 60
    return parts[0] * 60 + parts[1] + parts[2] / 60  # HH:MM:SS


def parse_sinfo(text: str) -> Dict[str, Partition]:
    """Partitions from `sinfo -h -a -o SINFO_FORMAT`; a partition with several kinds of node has
    several lines, merged here (node counts add up, CPUs and GPUs take the largest node)."""
    out: Dict[str, Partition] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) != 6:
            raise LaunchError(f"unexpected sinfo output line: {line!r}")
        name, avail, nodes, cpus, gres, limit = (f.strip() for f in fields)
        default = name.endswith("*")
        name = name.rstrip("*")
        cpus_n = int(re.match(r"\d*", cpus).group(0) or 0)
        try:
            limit_min = minutes(limit)
        except ValueError:
            limit_min = None
        p = Partition(name, default, avail == "up", int(nodes), cpus_n, gpus_in_gres(gres), limit_min)
        if name in out:
            q = out[name]
            q.nodes += p.nodes
            q.cpus_per_node = max(q.cpus_per_node, p.cpus_per_node)
            q.gpus_per_node = max(q.gpus_per_node, p.gpus_per_node)
            q.available = q.available or p.available
        else:
            out[name] = p
    return out


def query_partitions() -> Dict[str, Partition]:
    """The cluster's partitions, from `sinfo`; LaunchError where SLURM is not reachable."""
    if shutil.which("sinfo") is None:
        raise LaunchError("`sinfo` not found: run this on a SLURM login node, or pass --no-check "
                          "to print options without checking them against the cluster")
    try:
        p = subprocess.run(["sinfo", "-h", "-a", "-o", SINFO_FORMAT], capture_output=True,
                           text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise LaunchError("`sinfo` did not answer within 60 s: is slurmctld up?") from None
    if p.returncode != 0:
        msg = (p.stderr.strip().splitlines() or ["no output"])[-1]
        raise LaunchError(f"`sinfo` failed (exit {p.returncode}): {msg}")
    parts = parse_sinfo(p.stdout)
    if not parts:
        raise LaunchError("`sinfo` lists no partitions")
    return parts
