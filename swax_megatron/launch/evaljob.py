"""`swax eval submit`: one SLURM array job over runs to evaluate (slurm/eval.sh), array task i
evaluating the i-th run directory given to the script.

The runs come from run directories or from a recipe (its sweep's entries, or its one run). Runs
that do not exist, have no checkpoint, or whose requested evaluations are all done for their latest
checkpoint and these settings (eval.harness.pending_evaluations) are left out with a note. The job
shape is one process per run: the recipe's slurm.cpus_per_task, time, partition, account and
extra_args, one GPU where the partition has GPUs; with layout "run" (swax eval --layout run) as
many tasks and GPUs as the largest TP x PP among the runs, which slurm/eval.sh sruns each run
with. No requeue (evaluation keeps no state between results files, and a rerun skips the files
written).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from ..config.resolve import resolve, resolve_sweep
from .errors import LaunchError
from .sbatch import LOG_FOLDER, Plan, _cluster, array_spec, batch_script, check_site, sbatch_options


def _split_overrides(overrides: Sequence[str]) -> Tuple[List[str], List[str]]:
    """(recipe overrides, eval.* overrides): the first only resolve a recipe to its runs."""
    ev = [o for o in overrides if o.startswith("eval.")]
    return [o for o in overrides if not o.startswith("eval.")], ev


def eval_runs(targets: Sequence[str], overrides: Sequence[str] = ()) -> List[str]:
    """The run directories (absolute) that `targets` name: run directories (resolved.yaml), or one
    recipe file (its sweep's entries in order, or its one run); LaunchError otherwise."""
    if not targets:
        raise LaunchError("no run directory or recipe given")
    recipe_overrides, _ = _split_overrides(overrides)
    recipes = [t for t in targets if os.path.isfile(t)]
    if recipes:
        if len(targets) > 1:
            raise LaunchError(f"{recipes[0]}: give one recipe, or run directories, not both")
        return [os.path.abspath(r.run_dir) for r in resolve_sweep(recipes[0], recipe_overrides)]
    if recipe_overrides:
        raise LaunchError(f"override `{recipe_overrides[0]}`: only eval.* settings can be changed "
                          f"at evaluation (the model is the checkpoint's)")
    out = []
    for t in targets:
        if not os.path.isdir(t):
            raise LaunchError(f"{t}: neither a recipe file nor a run directory")
        if not os.path.isfile(os.path.join(t, "resolved.yaml")):
            raise LaunchError(f"{t}: not a run directory (no resolved.yaml)")
        out.append(os.path.abspath(t))
    return list(dict.fromkeys(out))


@dataclasses.dataclass
class EvalPlan:
    plan: Optional[Plan]  # None: nothing to submit
    runs: List[str]  # every run the targets name
    todo: List[str]  # the runs the array evaluates, in array order
    skipped: List[Tuple[str, str]]  # (run, why)


def plan_eval(targets: Sequence[str], overrides: Sequence[str] = (), *,
              tasks: Optional[Sequence[str]] = None, parallel: Optional[int] = None,
              check: bool = True, script: Optional[str] = None, layout: str = "single") -> EvalPlan:
    """layout "run" (swax eval --layout run): every array task gets as many tasks (and GPUs, one
    each) as the largest TP x PP among the runs to evaluate; slurm/eval.sh sruns each run's own."""
    from ..config.errors import RecipeError
    from ..eval.harness import EvalError, bad_input_errors, pending_evaluations

    _, eval_overrides = _split_overrides(overrides)
    runs = eval_runs(targets, overrides)
    todo, skipped = [], []
    for run in runs:
        if not os.path.isfile(os.path.join(run, "resolved.yaml")):
            skipped.append((run, "not trained yet (no run directory)"))
            continue
        try:
            pending = pending_evaluations(run, tasks=tasks, overrides=eval_overrides)
        except (EvalError, RecipeError) as e:  # the same for every run: bad tasks or settings
            raise LaunchError(str(e).splitlines()[0]) from None
        except bad_input_errors() as e:  # no checkpoint, or a damaged one
            skipped.append((run, f"no checkpoint to evaluate ({str(e).splitlines()[0]})"))
            continue
        if pending:
            todo.append(run)
        else:
            skipped.append((run, "all requested evaluations done for its latest checkpoint"))
    if parallel is not None and parallel < 1:
        raise LaunchError(f"--parallel must be at least 1, got {parallel}")
    if not todo:
        return EvalPlan(None, runs, todo, skipped)

    if layout not in ("single", "run"):
        raise LaunchError(f"--layout must be single or run, got {layout!r}")
    first = resolve(os.path.join(todo[0], "resolved.yaml"))
    check_site(first)
    ranks = 1
    if layout == "run":  # the run's TP x PP, one process each
        from ..eval.layout import run_layout

        for run in todo:
            tp, pp = run_layout(resolve(os.path.join(run, "resolved.yaml")).recipe)
            ranks = max(ranks, tp * pp)
    # one process per rank: the recipe's CPUs per process, time and partition
    s = dataclasses.replace(first.recipe.slurm, nodes=1, gpus_per_node=ranks, launcher="srun",
                            job_name=None, signal_seconds=0)
    notes: List[str] = []
    parts, gpus = _cluster(s, check, notes)
    notes = [n for n in notes if "processes per node on CPUs" not in n]
    log_dir = os.path.abspath(os.path.join(first.recipe.run.output_root, LOG_FOLDER))
    opts = sbatch_options(s, "swax-eval", os.path.join(log_dir, "%x_%A_%a.out"), gpus)
    opts = [o for o in opts if o not in ("--requeue", "--open-mode=append")] + ["--no-requeue"]
    k = parallel if parallel is None else min(parallel, len(todo))
    args = list(todo)
    if tasks is not None:
        args += ["--tasks", ",".join(tasks)]
    if layout != "single":
        args += ["--layout", layout]
    args += list(eval_overrides)
    plan = Plan(opts, batch_script(script, "eval.sh"), args, log_dir, parts, notes,
                array=array_spec(range(len(todo)), k))
    return EvalPlan(plan, runs, todo, skipped)


__all__ = ["EvalPlan", "eval_runs", "plan_eval"]
