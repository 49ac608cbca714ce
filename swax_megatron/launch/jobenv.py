"""What slurm/pretrain.sh needs to know about a recipe, as shell assignments it can `eval`.

One Python call resolves and validates the recipe (a typo fails here, before any GPU is touched)
and answers everything the script asks: run directory (and whether it is done), world size and
its layout, launcher, site profile, the trainer's requeue exit code and the trainer's arguments.

A sweep entry is trained as `python -m swax_megatron.train RECIPE [overrides] --sweep-index I`,
so the trainer resolves the same entry (same hash, same run directory) as printed here.
"""

from __future__ import annotations

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
