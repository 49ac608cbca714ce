"""Pretraining entry point: `python -m swax_megatron.train RECIPE [key=value ...]` (swax-train).

    python -m swax_megatron.train recipes/tiny/swax.yaml                 # 2 local processes
    python -m swax_megatron.train recipes/tiny/swax.yaml train.steps=50
    torchrun --nproc-per-node 8 -m swax_megatron.train recipes/paper/swax_1p4b_stochastic.yaml
    srun python -m swax_megatron.train RECIPE                            # one task per GPU

The run directory (<run.output_root>/<run.name>-<hash8>) gets resolved.yaml, metrics.jsonl,
tensorboard/, checkpoints/, summary.json and loss.png; a second start resumes from its latest
checkpoint. Exit codes (swax_megatron.training.signals): 0 done; 42 checkpointed after
SIGUSR1/SIGTERM/SIGINT or train.exit_after_minutes (requeue); 2 bad input (recipe, data,
checkpoint, run directory: one line on stderr, nothing of an earlier attempt replaced); 3 diverged
or not finite at the end (not done); 4 another trainer holds the run directory; 130 interrupted
before training started. The work is done in swax_megatron.training.loop.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from .exit_codes import EXIT_BAD_INPUT, EXIT_BUSY, EXIT_INTERRUPTED

PROG = "swax-train"


def _bad_input_types():
    from .config.errors import RecipeError
    from .data.errors import DataError
    from .models.config import SwaxConfigError
    from .training.checkpoint import CheckpointError
    from .training.distributed import LaunchError
    from .training.faults import FaultSpecError
    from .training.lr_schedule import LRScheduleError
    from .training.rundir import RunDirError
    from .training.window_schedule import WindowScheduleError

    return (RecipeError, DataError, SwaxConfigError, CheckpointError, LaunchError,
            FaultSpecError, LRScheduleError, RunDirError, WindowScheduleError)


def _quiet_known_warnings() -> None:
    # megatron-core warns at import when TE / Apex are absent (always the case on CPU) and about
    # a cuda-graph default it sets itself: noise that would bury the progress bar.
    import warnings

    # Its advice on `core_attn` recomputation is about TE's fused attention, and repeats on every
    # selective-recompute run whatever the backend; the planner shows what each setting saves.
    for pattern in (r".*Transformer Engine .*not installed.*", r".*Apex is not installed.*",
                    r".*full scope is deprecated.*", r".*the core_attn is from transformer_engine.*"):
        warnings.filterwarnings("ignore", message=pattern)


def _error(text: str, code: int = EXIT_BAD_INPUT) -> int:
    print(f"{PROG}: error: {text}", file=sys.stderr, flush=True)
    return code


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # before the trainer's own Ctrl-C handling is in place
        return _error("interrupted before training started; nothing was written",
                      EXIT_INTERRUPTED)


def _main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("recipe", help="recipe YAML file")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=50")
    parser.add_argument("--sweep-index", type=int, default=None,
                        help="train entry i of the recipe's sweep block (SLURM array index)")
    args = parser.parse_args(argv)

    from .config.errors import RecipeError
    from .config.resolve import resolve
    from .training import distributed

    try:
        resolved = resolve(args.recipe, args.overrides, args.sweep_index)
    except RecipeError as e:
        return _error(str(e))
    recipe = resolved.recipe
    env = distributed.detect()
    if env.launcher == "single" and recipe.world_size > 1:
        if recipe.slurm.nodes != 1:
            return _error(f"the recipe spans {recipe.slurm.nodes} nodes: launch it with "
                          f"slurm/pretrain.sh (or torchrun on every node)")
        from .training.launch import launch_local

        return launch_local(recipe.world_size, argv)
    if env.world_size != recipe.world_size:
        return _error(f"the recipe's world size is {recipe.world_size} (slurm.nodes x "
                      f"slurm.gpus_per_node) but {env.world_size} processes were launched; "
                      f"launch {recipe.world_size} or override slurm.gpus_per_node")

    _quiet_known_warnings()
    distributed.set_determinism(recipe.train.deterministic)
    from .parallel import cpu_compat
    from .training import loop

    cpu_compat.apply()
    bad_input = _bad_input_types()
    try:
        distributed.init_process_group(env)
        distributed.init_model_parallel(recipe.parallel.tensor_model_parallel_size,
                                        recipe.parallel.pipeline_model_parallel_size,
                                        recipe.run.seed, recipe.parallel.ulysses_size)
        return loop.run(resolved)
    except bad_input as e:
        # Every rank meets the same bad input: rank 0 says it once.
        from .training.rundir import RunBusyError

        code = EXIT_BUSY if isinstance(e, RunBusyError) else EXIT_BAD_INPUT
        return _error(str(e), code) if env.rank == 0 else code
    finally:
        distributed.teardown()


if __name__ == "__main__":
    sys.exit(main())
