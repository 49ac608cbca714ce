"""Launching recipes on SLURM: sbatch options from a recipe's `slurm:` section, checks against
the cluster before anything is submitted, array jobs for sweeps, and the environment
slurm/pretrain.sh reads. The shell side (traps, srun/torchrun, requeue) is in slurm/."""

from .errors import LaunchError
from .jobenv import job_env
from .partitions import Partition, query_partitions
from .sbatch import (DONE_MARKER, Plan, check_site, is_done, make_log_dir, plan_job, plan_sweep,
                     sbatch_options, submit)

__all__ = ["LaunchError", "Partition", "Plan", "DONE_MARKER", "check_site", "is_done", "job_env",
           "make_log_dir", "plan_job", "plan_sweep", "query_partitions", "sbatch_options", "submit"]
