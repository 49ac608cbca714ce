"""The trainer's exit codes: one home for the trainer, the local launcher, the SLURM front end
(`swax slurm job-env` hands EXIT_REQUEUE to slurm/pretrain.sh) and the README's table. Imports
nothing."""

EXIT_OK = 0
# Bad input (recipe, data, checkpoint, run directory): one clear line on stderr; nothing of an
# earlier attempt was replaced, and requeueing will not help.
EXIT_BAD_INPUT = 2
# Training diverged (train.max_consecutive_nonfinite NaN/Inf steps in a row), or ended on a
# non-finite final evaluation or skipped last steps: not done, and requeueing will not help.
EXIT_DIVERGED = 3
# Another trainer holds the run directory's lock: this one touched nothing.
EXIT_BUSY = 4
# Checkpoint written after a stop request (signal or train.exit_after_minutes): requeue me.
EXIT_REQUEUE = 42
# Ctrl-C before the trainer could install its handlers: nothing was started.
EXIT_INTERRUPTED = 130
