"""What slurm/pretrain.sh needs to know about a recipe, as shell assignments it can `eval`.

One Python call resolves and validates the recipe (a typo fails here, before any GPU is touched)
and answers everything the script asks: run directory, world size and its layout, launcher, site
profile, the trainer's requeue exit code and the trainer's arguments.

A sweep entry is handed to the trainer as the base recipe plus explicit overrides (the swept
values and the entry's run name), checked here to resolve to the very same hash as
`resolve(recipe, sweep_index=i)`, so the trainer needs no notion of sweeps.
"""

from __future__ import annotations

import json
import os
import shlex
from typing import List, Optional, Sequence

from ..config.resolve import resolve
from ..training.signals import EXIT_REQUEUE
from .errors import LaunchError


def entry_overrides(recipe: str, overrides: Sequence[str], index: int) -> List[str]:
    """Overrides that turn the base recipe into sweep entry `index` (same hash, same run dir)."""
    r = resolve(recipe, overrides, sweep_index=index)
    # JSON is YAML: strings stay quoted, floats keep their value, lists stay lists.
    extra = [f"{key}={json.dumps(value)}" for key, value in r.sweep_entry.values]
    extra.append(f"run.name={json.dumps(r.recipe.run.name)}")
    again = resolve(recipe, [*overrides, *extra])
    if again.config_hash != r.config_hash or again.run_dir != r.run_dir:
        raise LaunchError(f"sweep entry {index} does not resolve to the same run through overrides "
                          f"({again.run_dir} vs {r.run_dir})")
    return [*overrides, *extra]


def job_env(recipe: str, overrides: Sequence[str] = (), sweep_index: Optional[int] = None) -> str:
    if sweep_index is not None:
        args = entry_overrides(recipe, overrides, sweep_index)
    else:
        args = list(overrides)
    r = resolve(recipe, args)
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
    }
    lines = [f"{k}={shlex.quote(str(v))}" for k, v in values.items()]
    lines.append("SWAX_TRAIN_ARGS=(" + " ".join(shlex.quote(a) for a in [recipe, *args]) + ")")
    return "\n".join(lines) + "\n"
