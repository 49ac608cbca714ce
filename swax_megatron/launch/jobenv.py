"""What slurm/pretrain.sh needs to know about a recipe, as shell assignments it can `eval`.

One Python call resolves and validates the recipe (a typo fails here, before any GPU is touched)
and answers everything the script asks: run directory (and whether it is done), world size and
its layout, launcher, site profile, the trainer's requeue exit code and the trainer's arguments.

A sweep entry is trained as `python -m swax_megatron.train RECIPE [overrides] --sweep-index I`,
so the trainer resolves the same entry (same hash, same run directory) as printed here.

`record_failure` is the script's word in exit.json when the ranks ended without the trainer's:
a rank killed with its node, or one whose collective broke when another node went away.
"""

from __future__ import annotations

import json
import os
import shlex
from typing import Optional, Sequence

from ..config.resolve import resolve
from ..exit_codes import EXIT_REQUEUE
from .sbatch import check_site, is_done


def job_env(recipe: str, overrides: Sequence[str] = (), sweep_index: Optional[int] = None) -> str:
    r = resolve(recipe, overrides, sweep_index=sweep_index)
    check_site(r)
    args = [*overrides, "--sweep-index", str(sweep_index)] if sweep_index is not None else list(overrides)
    s = r.recipe.slurm
    values = {
        "SWAX_RUN_DIR": os.path.abspath(r.run_dir),
        "SWAX_CHECKPOINT_DIR": os.path.abspath(r.checkpoint_dir),  # where checkpoints/latest live
        "SWAX_RUN_NAME": r.run_name,
        "SWAX_NODES": s.nodes,
        "SWAX_GPUS_PER_NODE": s.gpus_per_node,
        "SWAX_CPUS_PER_TASK": s.cpus_per_task,
        "SWAX_WORLD_SIZE": r.recipe.world_size,
        "SWAX_RECIPE_LAUNCHER": s.launcher,
        "SWAX_RECIPE_SITE": s.site,
        "SWAX_REQUEUE_EXIT": EXIT_REQUEUE,
        "SWAX_DONE": int(is_done(r.run_dir)),
    }
    lines = [f"{k}={shlex.quote(str(v))}" for k, v in values.items()]
    lines.append("SWAX_TRAIN_ARGS=(" + " ".join(shlex.quote(a) for a in [recipe, *args]) + ")")
    return "\n".join(lines) + "\n"


def record_failure(run_dir: str, checkpoint_dir: str, code: int, detail: str) -> bool:
    """Write exit.json for ranks that failed with exit code `code` while the trainer's own record
    still says "running" (code null): the trainer of a rank that died with its node, or whose
    gloo/NCCL peer vanished, never got to write one. The record says which step was trained
    last (metrics.jsonl), which checkpoint a rerun resumes from (checkpoints/latest) and
    `detail` (the job and its nodes). A record the trainer wrote itself is left alone.
    Returns whether it wrote."""
    from ..training.metrics import read_metrics, write_summary

    path = os.path.join(run_dir, "exit.json")
    try:
        with open(path) as f:
            current = json.load(f)
    except (OSError, ValueError):
        return False
    if not isinstance(current, dict) or current.get("code") is not None:
        return False
    step = current.get("step")
    try:
        trained = [r["step"] for r in read_metrics(os.path.join(run_dir, "metrics.jsonl"))
                   if r.get("kind") == "train"]
        step = trained[-1] if trained else step
    except (OSError, ValueError, KeyError):
        pass
    checkpoint = None
    try:
        with open(os.path.join(checkpoint_dir, "latest")) as f:
            name = f.read().strip()
        checkpoint = os.path.join(checkpoint_dir, name) if name else None
    except OSError:
        pass
    resume = f"a rerun resumes from {checkpoint}" if checkpoint \
        else "no checkpoint yet: a rerun starts over"
    write_summary(path, {"code": code, "step": step,
                         "reason": f"the ranks failed with exit code {code} before the trainer "
                                   f"recorded why ({detail}); {resume}",
                         "checkpoint": checkpoint})
    return True

