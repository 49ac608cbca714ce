"""The `swax` command line.

    swax recipe resolve FILE [a.b=c ...] [--get run_dir|hash|name|world_size]
    swax recipe sweep FILE [a.b=c ...] (--count | --list | --index I)
    swax slurm options FILE [a.b=c ...] [--sweep] [--no-check]
    swax slurm submit FILE [a.b=c ...] [--dry-run] [--no-check] [--script PATH]
    swax slurm job-env FILE [a.b=c ...] [--sweep-index I]      (for slurm/pretrain.sh)
    swax sweep submit FILE [a.b=c ...] [--parallel K] [--dry-run] [--no-check] [--script PATH]
    swax generate RUN_DIR_OR_HF_DIR --prompt TEXT [--max-new-tokens N] [--window W] [--step N]
                  [--temperature T --seed S]                  (needs the hf extra)
    swax eval RUN_DIR [--tasks a,b] [--layout single|run] [eval.key=value ...]   (needs the hf extra)
    swax eval submit RECIPE|RUN_DIR... [--tasks a,b] [--parallel K] [--layout single|run] [--dry-run]
                     [--no-check] [--script PATH] [eval.key=value ...]   (= swax eval-submit; slurm/eval.sh)
    swax plan RECIPE [a.b=c ...] --gpus N [--gpu-memory 80GB] [--gpu-flops 989e12] [--mfu 0.4]
              [--gpus-per-node 8] [--top 5] [--sweep-index I] [--json]

A user error (a recipe typo, a bad override, a sweep index out of range, a recipe that does not
fit the cluster) prints one line on stderr and exits with status 2; nothing is written or submitted.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from .cliutil import OneLineParser as _Parser
from .cliutil import error_line, nonnegative_int, positive_int
from .config.errors import RecipeError
from .exit_codes import EXIT_BAD_INPUT as EXIT_USAGE


def _print_resolved(r, get: Optional[str]) -> int:
    """The resolved recipe as YAML, or only the value `--get` asks for."""
    if get:
        print({"run_dir": r.run_dir, "hash": r.config_hash, "name": r.run_name,
               "world_size": r.recipe.world_size}[get])
    else:
        sys.stdout.write(r.to_yaml())
    return 0


def _cmd_resolve(args) -> int:
    from .config.resolve import resolve

    return _print_resolved(resolve(args.recipe, args.overrides), args.get)


def _cmd_sweep(args) -> int:
    from .config.resolve import resolve, resolve_sweep

    if args.index is not None:
        return _print_resolved(resolve(args.recipe, args.overrides, sweep_index=args.index), args.get)
    entries = resolve_sweep(args.recipe, args.overrides)
    if args.count:
        print(len(entries))
        return 0
    for r in entries:
        index = r.sweep_entry.index if r.sweep_entry is not None else 0
        print(f"{index}\t{r.run_dir}")
    return 0


def _launch_errors(fn):
    """Launch commands report LaunchError (and unreadable files) like recipe errors."""
    def wrapped(args) -> int:
        from .launch import LaunchError

        try:
            return fn(args)
        except (LaunchError, OSError) as e:
            print(f"swax: error: {e}", file=sys.stderr)
            return EXIT_USAGE
    return wrapped


def _print_notes(plan) -> None:
    for note in plan.notes:
        print(f"swax: note: {note}", file=sys.stderr)


@_launch_errors
def _cmd_slurm_options(args) -> int:
    import shlex

    from .launch import make_log_dir, plan_job, plan_sweep

    if args.sweep:
        plan = plan_sweep(args.recipe, args.overrides, check=not args.no_check, script="-")
    else:
        plan = plan_job(args.recipe, args.overrides, check=not args.no_check, script="-")
    make_log_dir(plan.log_dir)  # the --output folder must exist before sbatch
    _print_notes(plan)
    print(" ".join(shlex.quote(o) for o in plan.options))
    return 0


def _submit(plan, dry_run: bool) -> int:
    import shlex

    from .launch import submit

    _print_notes(plan)
    if dry_run:
        print(" ".join(shlex.quote(c) for c in plan.command))
        return 0
    job = submit(plan)
    print(job)
    print(f"swax: submitted job {job}; logs in {plan.log_dir}", file=sys.stderr)
    return 0


@_launch_errors
def _cmd_slurm_submit(args) -> int:
    from .launch import plan_job

    plan = plan_job(args.recipe, args.overrides, check=not args.no_check, script=args.script)
    return _submit(plan, args.dry_run)


@_launch_errors
def _cmd_slurm_job_env(args) -> int:
    from .launch import job_env

    sys.stdout.write(job_env(args.recipe, args.overrides, args.sweep_index))
    return 0


@_launch_errors
def _cmd_sweep_submit(args) -> int:
    from .launch import plan_sweep

    plan = plan_sweep(args.recipe, args.overrides, parallel=args.parallel,
                      check=not args.no_check, script=args.script)
    n = len(plan.entries)
    if plan.done:
        print(f"swax: {len(plan.done)} of {n} entries already done (skipped): "
              f"{', '.join(str(i) for i in plan.done)}", file=sys.stderr)
    if plan.array is None:
        print(f"swax: all {n} entries are done; nothing to submit", file=sys.stderr)
        return 0
    return _submit(plan, args.dry_run)


def _with_hf_extra(name: str, call) -> int:
    """Run a command that needs the hf extra: its absence and bad input are one line, exit 2."""
    import warnings

    warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
    try:
        import transformers  # noqa: F401

        from .eval.harness import bad_input_errors  # convert's errors and the harness's
        from .hf.convert import quiet
    except ImportError as e:
        print(f"swax: error: swax {name} needs the hf extra (pip install 'swax_megatron[hf]'): "
              f"{e}", file=sys.stderr)
        return EXIT_USAGE
    quiet()
    try:
        return call()
    except bad_input_errors() as e:
        return error_line("swax", e)


def _cmd_generate(args) -> int:
    """Stream a continuation of --prompt (swax_megatron.hf.generate)."""
    def call():
        from .hf.generate import generate

        generate(args.path, args.prompt, max_new_tokens=args.max_new_tokens, window=args.window,
                 step=args.step, temperature=args.temperature, seed=args.seed)
        return 0
    return _with_hf_extra("generate", call)


def _names(text: Optional[str], option: str) -> Optional[List[str]]:
    """A comma-separated list option; None when not given; [] (an error) when it names nothing."""
    if text is None:
        return None
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        print(f"swax: error: {option} names no task", file=sys.stderr)
    return names


def _cmd_eval(args) -> int:
    """Evaluate a run's latest checkpoint (swax_megatron.eval.harness; lm-eval with --lm-eval);
    prints the results files. Bad input (not a run directory, no or a damaged checkpoint, an
    unknown task): one line, exit 2."""
    tasks, lm_tasks = _names(args.tasks, "--tasks"), _names(args.lm_eval, "--lm-eval")
    if tasks == [] or lm_tasks == []:
        return EXIT_USAGE

    def call():
        from .eval.harness import evaluate_run

        if tasks is not None or lm_tasks is None:  # --lm-eval alone runs lm-eval only
            for path in evaluate_run(args.recipe, tasks=tasks, overrides=args.overrides,
                                     layout=args.layout):
                print(path)
        if lm_tasks is not None:
            from .eval.lm_eval_adapter import evaluate_lm_eval

            for result in evaluate_lm_eval(args.recipe, lm_tasks,
                                           include_path=args.lm_eval_include).values():
                print(result.path)
        return 0
    return _with_hf_extra("eval", call)


@_launch_errors
def _cmd_eval_submit(args) -> int:
    """An array job (slurm/eval.sh) over the runs still to evaluate (launch/evaljob.py)."""
    import warnings

    warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
    from .launch.evaljob import plan_eval

    tasks = _names(args.tasks, "--tasks")
    if tasks == []:
        return EXIT_USAGE
    targets = [a for a in args.targets if "=" not in a or os.path.exists(a)]
    overrides = [a for a in args.targets if a not in targets] + list(args.overrides)
    ep = plan_eval(targets, overrides, tasks=tasks, parallel=args.parallel,
                   check=not args.no_check, script=args.script, layout=args.layout)
    for run, why in ep.skipped:
        print(f"swax: note: {run}: {why}; skipped", file=sys.stderr)
    if ep.plan is None:
        print(f"swax: none of the {len(ep.runs)} run(s) needs evaluating; nothing to submit",
              file=sys.stderr)
        return 0
    return _submit(ep.plan, args.dry_run)


def _cmd_plan(args) -> int:
    """Every valid TP x PP x Ulysses x DP layout of the recipe on --gpus GPUs (swax_megatron.plan)."""
    from .config.resolve import resolve
    from .plan.layouts import Cluster
    from .plan.report import default_gpu_flops, parse_memory, run

    r = resolve(args.recipe, args.overrides, sweep_index=args.sweep_index).recipe
    try:
        memory = parse_memory(args.gpu_memory)
        flops = default_gpu_flops(r) if args.gpu_flops is None else args.gpu_flops
        if not 0 < args.mfu <= 1:
            raise ValueError(f"--mfu must be in (0, 1], got {args.mfu}")
        if not 0 < args.usable_memory <= 1:
            raise ValueError(f"--usable-memory must be in (0, 1], got {args.usable_memory}")
        if not flops > 0 or flops == float("inf"):
            raise ValueError(f"--gpu-flops must be a finite number > 0, got {args.gpu_flops}")
        cluster = Cluster(gpus=args.gpus, gpu_memory=memory, gpu_flops=flops, mfu=args.mfu,
                          gpus_per_node=args.gpus_per_node, usable=args.usable_memory)
        print(run(r, cluster, top=args.top, as_json=args.json, label=f"swax plan {args.recipe}"))
    except ValueError as e:
        return error_line("swax", e)
    return 0


def _command(subparsers, name: str, help: str, func) -> argparse.ArgumentParser:
    """A subcommand taking RECIPE [KEY=VALUE ...]."""
    p = subparsers.add_parser(name, help=help)
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(func=func)
    return p


def _submission_flags(p: argparse.ArgumentParser, script: str) -> None:
    p.add_argument("--dry-run", action="store_true", help="print the sbatch command only")
    p.add_argument("--no-check", action="store_true", help="do not ask the cluster (sinfo)")
    p.add_argument("--script", help=f"batch script (default: {script})")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="swax", description="SWAX ablation framework on Megatron-core")
    sub = parser.add_subparsers(dest="group", required=True, parser_class=_Parser)
    recipe = sub.add_parser("recipe", help="resolve recipes and expand sweeps")
    rsub = recipe.add_subparsers(dest="command", required=True, parser_class=_Parser)
    get = dict(choices=["run_dir", "hash", "name", "world_size"])

    res = _command(rsub, "resolve", "print the resolved recipe (YAML) and its hash", _cmd_resolve)
    res.add_argument("--get", **get, help="print only this value")

    sw = _command(rsub, "sweep", "count, list or resolve the entries of a sweep", _cmd_sweep)
    mode = sw.add_mutually_exclusive_group(required=True)
    mode.add_argument("--count", action="store_true", help="number of entries")
    mode.add_argument("--list", action="store_true", help="index and run directory of each entry")
    mode.add_argument("--index", type=int, help="resolve entry I")
    sw.add_argument("--get", **get, help="with --index: print only this value")

    slurm = sub.add_parser("slurm", help="sbatch options from a recipe, checked against the cluster")
    ssub = slurm.add_subparsers(dest="command", required=True, parser_class=_Parser)
    opt = _command(ssub, "options", "print the sbatch options of the recipe's slurm section",
                   _cmd_slurm_options)
    opt.add_argument("--sweep", action="store_true", help="options of the sweep's array job")
    opt.add_argument("--no-check", action="store_true",
                     help="do not ask the cluster (sinfo); GPUs are then always requested")
    sb = _command(ssub, "submit", "check the recipe against the cluster and sbatch it",
                  _cmd_slurm_submit)
    _submission_flags(sb, "slurm/pretrain.sh")
    je = _command(ssub, "job-env", "shell variables slurm/pretrain.sh evaluates", _cmd_slurm_job_env)
    je.add_argument("--sweep-index", type=int, help="entry I of the recipe's sweep")

    sweep = sub.add_parser("sweep", help="run a recipe's sweep as a SLURM array job")
    wsub = sweep.add_subparsers(dest="command", required=True, parser_class=_Parser)
    ws = _command(wsub, "submit", "validate every entry, then sbatch --array=0-(N-1)%%K",
                  _cmd_sweep_submit)
    ws.add_argument("--parallel", type=int, metavar="K",
                    help="at most K entries at once (default: slurm.array_parallelism, else all)")
    _submission_flags(ws, "slurm/sweep.sh")

    gen = sub.add_parser("generate", help="stream a model's continuation of a prompt (hf extra)")
    gen.add_argument("path", metavar="RUN_DIR_OR_HF_DIR",
                     help="a Hugging Face export, or a run directory / checkpoint (converted in memory)")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--max-new-tokens", type=positive_int, default=64)
    gen.add_argument("--window", type=positive_int, metavar="W",
                     help="sliding window (default: the model's, model.swa.window)")
    gen.add_argument("--step", type=nonnegative_int, help="the checkpoint of this step (default: latest)")
    gen.add_argument("--temperature", type=float, default=0.0, help="> 0 samples (default: greedy)")
    gen.add_argument("--seed", type=int, default=0, help="sampling seed")
    gen.set_defaults(func=_cmd_generate)

    ev = _command(sub, "eval", "evaluate a run's latest checkpoint: NIAH, recall, perplexity by "
                               "position (hf extra)", _cmd_eval)
    for action in ev._actions:
        if action.dest == "recipe":
            action.metavar = "RUN_DIR"
    ev.add_argument("--tasks", metavar="A,B", help="these tasks (default: the recipe's eval.tasks)")
    ev.add_argument("--layout", choices=("single", "run"), default="single",
                    help="single (default): the Hugging Face model in this process; run: the megatron "
                         "model at the run's TP x PP, one process per rank (srun/torchrun's, else local)")
    ev.add_argument("--lm-eval", metavar="A,B", help="lm-evaluation-harness tasks on the run's "
                    "Hugging Face export (eval extra; offline); alone, only these run")
    ev.add_argument("--lm-eval-include", metavar="DIR",
                    help="a directory of local lm-eval task YAMLs (dataset_path: json + data_files)")

    es = sub.add_parser("eval-submit", help="`swax eval submit`: evaluate runs as a SLURM array "
                                            "job (slurm/eval.sh), skipping finished evaluations")
    es.add_argument("targets", nargs="+", metavar="RECIPE|RUN_DIR",
                    help="one recipe (its sweep's runs) or run directories; then eval.key=value")
    es.set_defaults(func=_cmd_eval_submit, overrides=[])
    es.add_argument("--tasks", metavar="A,B", help="these tasks (default: each run's eval.tasks)")
    es.add_argument("--parallel", type=int, metavar="K", help="at most K runs at once")
    es.add_argument("--layout", choices=("single", "run"), default="single",
                    help="as swax eval --layout; run: each array task gets the largest run's TP x PP "
                         "tasks (and GPUs), srun gives the ranks")
    _submission_flags(es, "slurm/eval.sh")

    pl = _command(sub, "plan", "parameters, FLOPs, memory per GPU and tokens/day of every valid "
                               "TP x PP x Ulysses x DP layout; the best first", _cmd_plan)
    pl.add_argument("--gpus", type=positive_int, required=True, help="number of GPUs")
    pl.add_argument("--gpu-memory", default="80GB", help="memory per GPU (default 80GB = 80e9 bytes)")
    pl.add_argument("--gpu-flops", type=float, help="dense peak FLOP/s per GPU (default: H100 SXM "
                                                    "at the recipe's precision, 989e12 for bf16)")
    pl.add_argument("--mfu", type=float, default=0.4,
                    help="fraction of peak the GPUs sustain while computing (default 0.4)")
    pl.add_argument("--gpus-per-node", type=positive_int, default=8,
                    help="tensor parallelism stays within a node (default 8)")
    pl.add_argument("--usable-memory", type=float, default=0.9,
                    help="fraction of GPU memory a layout may fill (default 0.9)")
    pl.add_argument("--top", type=nonnegative_int, default=5, help="layouts shown (0: all)")
    pl.add_argument("--sweep-index", type=nonnegative_int, help="entry I of the recipe's sweep")
    pl.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # `swax eval submit ...` is `swax eval-submit ...` (a run directory named `submit`: ./submit)
    if argv[:2] == ["eval", "submit"]:
        argv = ["eval-submit", *argv[2:]]
    args, extra = parser.parse_known_args(argv)
    # argparse ends a nargs="*" positional at the first option: `swax slurm submit R --dry-run a=b`
    # leaves `a=b` over. Overrides after options are still overrides, in the order given.
    if extra:
        if not hasattr(args, "overrides") or any(e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    try:
        return args.func(args)
    except RecipeError as e:
        print(f"swax: error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
