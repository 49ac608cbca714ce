#!/bin/bash
# A recipe's sweep as a SLURM array job: array task i trains sweep entry i.
#
#   swax sweep submit RECIPE [key=value ...] [--parallel K]      # validates every entry first
#   sbatch --array=0-$((N-1))%K [--gpus-per-node=G] slurm/sweep.sh RECIPE [key=value ...]
#   bash slurm/sweep.sh RECIPE [key=value ...]                   # no SLURM: entries one by one
#
# Each entry has its own run directory (<output_root>/<name>__<key>=<value>-<hash8>); an entry
# whose run directory holds DONE exits at once, so resubmitting a sweep resumes it. Everything
# else (launch, signals, requeue of this array task alone) is slurm/pretrain.sh.
#
# Defaults for a plain sbatch, no GPUs among them (see slurm/pretrain.sh; `swax sweep submit`
# replaces them):
#SBATCH --job-name=swax-sweep
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%A_%a.out

set -uo pipefail

die() { local code=$1; shift; echo "sweep.sh: error: $*" >&2; exit "$code"; }

if [ $# -lt 1 ] || [ "$1" = -h ] || [ "$1" = --help ]; then
  sed -n '2,6p' "$0" 2>/dev/null | sed 's/^# \{0,1\}//' >&2
  [ $# -lt 1 ] && exit 2 || exit 0
fi

# sbatch runs a copy of this script: find pretrain.sh next to the submitted one.
find_slurm_dir() {
  local d cands=()
  [ -n "${SWAX_SLURM_DIR:-}" ] && cands+=("$SWAX_SLURM_DIR")
  if [ -n "${SLURM_JOB_ID:-}" ]; then
    # (for the last task of an array, SLURM_JOB_ID is the array's id: one line per task)
    d=$(scontrol show job -o "$SLURM_JOB_ID" 2>/dev/null | sed -n 's/.*[[:space:]]Command=\([^[:space:]]*\).*/\1/p' | head -n 1)
    [ -n "$d" ] && cands+=("$(dirname "$d")")
  fi
  cands+=("$(dirname "$(readlink -f "$0")")")
  for d in "${cands[@]}"; do
    [ -f "$d/pretrain.sh" ] && { echo "$d"; return 0; }
  done
  return 1
}
SWAX_SLURM_DIR=$(find_slurm_dir) || die 2 "slurm/pretrain.sh not found: set SWAX_SLURM_DIR to the repository's slurm/ folder"
export SWAX_SLURM_DIR

if [ -n "${SLURM_ARRAY_TASK_ID:-}" ]; then
  # exec: the batch shell stays this PID, so --signal=B:USR1 reaches pretrain.sh's trap
  SWAX_SWEEP_INDEX=$SLURM_ARRAY_TASK_ID exec bash "$SWAX_SLURM_DIR/pretrain.sh" "$@"
fi
if [ -n "${SLURM_JOB_ID:-}" ] && [ "${SWAX_LOCAL:-0}" != 1 ]; then
  die 2 "job ${SLURM_JOB_ID} is not an array job: submit with \`swax sweep submit RECIPE\` or sbatch --array=..."
fi

PY=${SWAX_PYTHON:-python3}
n=$("$PY" -m swax_megatron.cli recipe sweep "$@" --count) || die 2 "the sweep did not resolve (error above)"
for ((i = 0; i < n; i++)); do
  echo "[sweep] entry $i of $n"
  SWAX_SWEEP_INDEX=$i bash "$SWAX_SLURM_DIR/pretrain.sh" "$@"
  rc=$?
  [ $rc = 0 ] || { echo "[sweep] entry $i stopped with exit code $rc; rerun to continue" >&2; exit $rc; }
done
