"""From a recipe's `slurm:` section to sbatch options, checked against the cluster, and submission.

    plan = plan_job("recipes/tiny/swax.yaml", ["train.steps=50"])      # resolves + checks
    plan.command        # ["sbatch", "--parsable", "--job-name=tiny-swax", ..., "slurm/pretrain.sh", ...]
    job_id = submit(plan)

    plan = plan_sweep("recipes/tiny/window_sweep.yaml", [], parallel=2)   # every entry validated
    plan.array          # "0-2%2" (entries whose run directory is done are left out)

Launch layouts (slurm.launcher):
    srun      one task per GPU: --ntasks-per-node=G --cpus-per-task=C, srun starts the ranks
    torchrun  one task per node: --ntasks-per-node=1 --cpus-per-task=G*C, torchrun starts G ranks
GPUs are requested (--gpus-per-node=G) when the partition's nodes have GPUs; on a CPU-only
partition G is the number of processes per node. This is the only GPU request: the #SBATCH headers
of slurm/*.sh ask for none, since a partition without GPU GRES refuses any GPU request and an
option on the command line can add a request but never take one away.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..config.errors import RecipeError, did_you_mean
from ..config.resolve import Resolved, resolve_sweep
from ..config.schema import SlurmConfig
from .errors import LaunchError
from .partitions import Partition, minutes, query_partitions

DONE_MARKER = "DONE"
SLURM_DIR = Path(__file__).resolve().parents[2] / "slurm"
LOG_FOLDER = "slurm-logs"  # under run.output_root


def batch_script(script: Optional[str], name: str) -> str:
    """--script, else slurm/<name>; `-` stands for none (options only)."""
    if script == "-":
        return script
    if script is not None:
        if not os.path.isfile(script):
            raise LaunchError(f"--script: {script} is not a file")
        return os.path.abspath(script)
    path = SLURM_DIR / name
    if not path.is_file():
        raise LaunchError(f"{path} not found (the package is installed without its repository): "
                          f"pass --script PATH")
    return str(path)


def slurm_dir() -> Path:
    """The slurm/ folder a job takes its site profiles from: SWAX_SLURM_DIR where set (it wins in
    the job too, and slurm/pretrain.sh sets it to the folder it found), else the repository's."""
    return Path(os.environ.get("SWAX_SLURM_DIR") or SLURM_DIR)


def check_site(r: Resolved) -> None:
    """slurm.site names a profile in <slurm dir>/site/. Checked before submission: the job would
    only find out once it runs. `default` needs no file (slurm/pretrain.sh runs without it)."""
    site = r.recipe.slurm.site
    folder = slurm_dir() / "site"
    profiles = sorted(p.stem for p in folder.glob("*.env")) if folder.is_dir() else []
    if site == "default" or site in profiles:
        return
    where = f"profiles in {folder}: {', '.join(profiles)}" if profiles else \
        f"{folder} has none; set SWAX_SLURM_DIR to the repository's slurm/ folder"
    raise RecipeError(f"no site profile `{site}`{did_you_mean(site, profiles)} ({where})",
                      path="slurm.site", origin=r.origins.get("slurm.site"))


def make_log_dir(path: str) -> List[str]:
    """SLURM does not create the --output folder: a job whose log cannot be opened fails unseen.
    Returns the folders created, outermost first."""
    created, d = [], os.path.abspath(path)
    while not os.path.lexists(d) and os.path.dirname(d) != d:
        created.insert(0, d)
        d = os.path.dirname(d)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise LaunchError(f"run.output_root: cannot create the log folder {path}: "
                          f"{e.strerror or e}") from None
    return created


def is_done(run_dir: str) -> bool:
    """The run finished: slurm/pretrain.sh wrote DONE, or the trainer's exit.json says "done"
    (a run trained without the script)."""
    if os.path.exists(os.path.join(run_dir, DONE_MARKER)):
        return True
    try:
        with open(os.path.join(run_dir, "exit.json")) as f:
            return json.load(f).get("reason") == "done"
    except (OSError, ValueError, AttributeError):
        return False


def tasks_per_node(s: SlurmConfig) -> int:
    return s.gpus_per_node if s.launcher == "srun" else 1


def cpus_per_task(s: SlurmConfig) -> int:
    return s.cpus_per_task if s.launcher == "srun" else s.cpus_per_task * s.gpus_per_node


def pick_partitions(s: SlurmConfig, partitions: Dict[str, Partition]) -> List[Partition]:
    """The partitions the job may run in: slurm.partition (sbatch takes a comma-separated list),
    else the cluster's default."""
    if s.partition is None:
        default = [p for p in partitions.values() if p.default]
        if not default:
            raise LaunchError("slurm.partition is not set and the cluster has no default "
                              f"partition (partitions: {', '.join(sorted(partitions))})")
        return default[:1]
    out = []
    for name in s.partition.split(","):
        if name not in partitions:
            raise LaunchError(f"slurm.partition: partition `{name}` does not exist on this "
                              f"cluster{did_you_mean(name, partitions)} "
                              f"(partitions: {', '.join(sorted(partitions))})")
        out.append(partitions[name])
    return out


def check_fits(s: SlurmConfig, p: Partition) -> None:
    """The errors SLURM would not give: requests it accepts and then pends on forever."""
    if s.nodes > p.nodes:
        raise LaunchError(f"slurm.nodes={s.nodes}, but partition `{p.name}` has {p.nodes} "
                          f"node{'s' if p.nodes != 1 else ''}")
    if p.gpus_per_node and s.gpus_per_node > p.gpus_per_node:
        raise LaunchError(f"slurm.gpus_per_node={s.gpus_per_node}, but the nodes of partition "
                          f"`{p.name}` have at most {p.gpus_per_node} GPUs")
    cpus = tasks_per_node(s) * cpus_per_task(s)
    if cpus > p.cpus_per_node:
        raise LaunchError(f"slurm.gpus_per_node x slurm.cpus_per_task = {s.gpus_per_node} x "
                          f"{s.cpus_per_task} = {cpus} CPUs per node, but the nodes of partition "
                          f"`{p.name}` have at most {p.cpus_per_node}")
    want = minutes(s.time)
    if p.max_minutes is not None and (want is None or want > p.max_minutes):
        raise LaunchError(f"slurm.time={s.time} exceeds the time limit of partition `{p.name}` "
                          f"({p.max_minutes:g} minutes)")


def sbatch_options(s: SlurmConfig, job_name: str, output: str, gpus: bool) -> List[str]:
    """sbatch options for one job of shape `s` (a validated recipe's: slurm.time is a SLURM time);
    `output` is the log file pattern."""
    opts = [f"--job-name={s.job_name or job_name}", f"--nodes={s.nodes}",
            f"--ntasks-per-node={tasks_per_node(s)}", f"--cpus-per-task={cpus_per_task(s)}"]
    if gpus:
        opts.append(f"--gpus-per-node={s.gpus_per_node}")
    opts.append(f"--time={s.time}")
    if s.partition:
        opts.append(f"--partition={s.partition}")
    if s.account:
        opts.append(f"--account={s.account}")
    if s.signal_seconds > 0:
        # B: the batch shell gets it; slurm/pretrain.sh forwards it to the ranks, so a launcher
        # in between (torchrun) cannot swallow it.
        opts.append(f"--signal=B:USR1@{s.signal_seconds}")
    opts += ["--requeue", "--open-mode=append", f"--output={output}"]
    opts += list(s.extra_args)
    return opts


@dataclass
class Plan:
    """One sbatch call: the options, the script and its arguments."""

    options: List[str]
    script: str
    args: List[str]
    log_dir: str
    partitions: List[Partition] = field(default_factory=list)  # empty: not checked
    notes: List[str] = field(default_factory=list)  # for the user (stderr)
    array: Optional[str] = None  # sweeps: the --array value, None when nothing is left to run
    entries: List[Resolved] = field(default_factory=list)
    done: List[int] = field(default_factory=list)  # sweep entries already done

    @property
    def command(self) -> List[str]:
        array = [f"--array={self.array}"] if self.array else []
        return ["sbatch", "--parsable", *array, *self.options, self.script, *self.args]


def check_partitions(s: SlurmConfig, parts: List[Partition], notes: List[str]) -> bool:
    """Check shape `s` against every partition it may run in; returns whether to request GPUs."""
    for p in parts:
        check_fits(s, p)  # in each: the job could wait forever for the one it does not fit
        if not p.available:
            notes.append(f"partition `{p.name}` is not up: the job will wait until it is")
    gpu = [p.name for p in parts if p.gpus_per_node]
    cpu = [p.name for p in parts if not p.gpus_per_node]
    if gpu and cpu:  # sbatch refuses a GPU request for the one, and without it the other idles
        raise LaunchError(f"slurm.partition: `{gpu[0]}` has GPUs and `{cpu[0]}` has none: a job "
                          f"asks for GPUs or not, so list partitions of one kind")
    if cpu:
        names = ", ".join(f"`{n}`" for n in cpu)
        notes.append(f"partition {names} has no GPUs: {s.gpus_per_node} processes per node on CPUs"
                     if len(cpu) == 1 else
                     f"partitions {names} have no GPUs: {s.gpus_per_node} processes per node on CPUs")
    return bool(gpu)


def _cluster(s: SlurmConfig, check: bool, notes: List[str]):
    """(partitions, request GPUs?) for shape `s`; no partitions and GPUs where not checked."""
    if not check:
        return [], True
    parts = pick_partitions(s, query_partitions())
    return parts, check_partitions(s, parts, notes)


def _log_dir(r: Resolved) -> str:
    return os.path.abspath(os.path.join(r.recipe.run.output_root, LOG_FOLDER))


def plan_job(recipe: str, overrides: Sequence[str] = (), *, check: bool = True,
             script: Optional[str] = None) -> Plan:
    entries = resolve_sweep(recipe, overrides)
    if entries[0].sweep_entry is not None:
        raise LaunchError(f"{recipe}: recipe has a sweep block: submit it with `swax sweep submit` "
                          f"(options: `swax slurm options --sweep`)")
    r = entries[0]
    check_site(r)
    notes: List[str] = []
    parts, gpus = _cluster(r.recipe.slurm, check, notes)
    log_dir = _log_dir(r)
    opts = sbatch_options(r.recipe.slurm, r.recipe.run.name, os.path.join(log_dir, "%x_%j.out"), gpus)
    return Plan(opts, batch_script(script, "pretrain.sh"), [os.path.abspath(recipe), *overrides],
                log_dir, parts, notes, entries=[r])


def array_spec(indices: Sequence[int], parallel: Optional[int]) -> str:
    """`0-2,5,7-9%K` for the given indices."""
    runs, start, prev = [], None, None
    for i in sorted(indices):
        if start is None:
            start = prev = i
        elif i == prev + 1:
            prev = i
        else:
            runs.append((start, prev))
            start = prev = i
    if start is not None:
        runs.append((start, prev))
    text = ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs)
    return f"{text}%{parallel}" if parallel else text


def _slurm_differences(entries: List[Resolved]) -> List[str]:
    first = entries[0].recipe.slurm
    return sorted({f"slurm.{k}" for r in entries[1:] for k, v in vars(r.recipe.slurm).items()
                   if getattr(first, k) != v})


def plan_sweep(recipe: str, overrides: Sequence[str] = (), *, parallel: Optional[int] = None,
               check: bool = True, script: Optional[str] = None) -> Plan:
    """An array job over the sweep's entries, every entry resolved and validated first."""
    entries = resolve_sweep(recipe, overrides)
    if entries[0].sweep_entry is None or entries[0].sweep_count == 0:
        raise LaunchError(f"{recipe}: recipe has no sweep block: submit it with `swax slurm submit`")
    diff = _slurm_differences(entries)
    if diff:
        raise LaunchError(f"sweep entries differ in {', '.join(diff)}: an array job has one shape, "
                          f"so sweep these in separate recipes")
    check_site(entries[0])  # (the entries share their slurm section)
    s = entries[0].recipe.slurm
    k = parallel if parallel is not None else s.array_parallelism
    if k is not None and k < 1:
        raise LaunchError(f"--parallel must be at least 1, got {k}")
    notes: List[str] = []
    parts, gpus = _cluster(s, check, notes)
    log_dir = _log_dir(entries[0])
    # the array is named after the sweep, not its first entry: run.name without the entry suffix
    first = entries[0]
    base_name = first.recipe.run.name.removesuffix(f"__{first.sweep_entry.suffix}")
    opts = sbatch_options(s, base_name, os.path.join(log_dir, "%x_%A_%a.out"), gpus)
    done = [i for i, r in enumerate(entries) if is_done(r.run_dir)]
    todo = [i for i in range(len(entries)) if i not in done]
    if k is not None and todo:
        k = min(k, len(todo))
    plan = Plan(opts, batch_script(script, "sweep.sh"), [os.path.abspath(recipe), *overrides],
                log_dir, parts, notes, array=array_spec(todo, k) if todo else None,
                entries=entries, done=done)
    return plan


def submit(plan: Plan) -> str:
    """Run sbatch; returns the job id."""
    created = make_log_dir(plan.log_dir)

    def refused(message: str) -> LaunchError:
        for d in reversed(created):  # nothing was submitted: leave nothing behind either
            try:
                os.rmdir(d)
            except OSError:
                break
        return LaunchError(message)

    try:
        p = subprocess.run(plan.command, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise refused("`sbatch` not found: run this on a SLURM login node") from None
    except subprocess.TimeoutExpired:  # the job may be queued all the same: keep its log folder
        raise LaunchError("`sbatch` did not answer within 120 s: is slurmctld up?") from None
    if p.returncode != 0:
        msg = " ".join(p.stderr.split()) or f"exit code {p.returncode}"
        raise refused(f"sbatch refused the job: {msg}")
    return p.stdout.strip().split(";")[0]
