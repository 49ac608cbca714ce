#!/bin/bash
# A recipe's sweep as a SLURM array job: array task i trains sweep entry i.
#
#   swax sweep submit RECIPE [key=value ...] [--parallel K]      # validates every entry first
#   sbatch --array=0-$((N-1))%K [--gpus-per-node=G] slurm/sweep.sh RECIPE [key=value ...]
#   bash slurm/sweep.sh RECIPE [key=value ...] [--jobs K]        # no SLURM: K entries at a time
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

# Local: --jobs K runs K entries at once (each with the recipe's slurm.cpus_per_task threads; size
# K to the cores), each one's output appended to <run dir>/sweep.log. The first failure stops
# new entries; the running ones finish.
jobs=1 args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --jobs) [ $# -ge 2 ] || die 2 "--jobs needs a number"; jobs=$2; shift ;;
    --jobs=*) jobs=${1#--jobs=} ;;
    *) args+=("$1") ;;
  esac
  shift
done
[[ "$jobs" =~ ^[1-9][0-9]*$ ]] || die 2 "--jobs must be a positive integer, got '$jobs'"
set -- "${args[@]}"

PY=${SWAX_PYTHON:-python3}
n=$("$PY" -m swax_megatron.cli recipe sweep "$@" --count) || die 2 "the sweep did not resolve (error above)"
if [ "$jobs" = 1 ]; then
  for ((i = 0; i < n; i++)); do
    echo "[sweep] entry $i of $n"
    SWAX_SWEEP_INDEX=$i bash "$SWAX_SLURM_DIR/pretrain.sh" "$@"
    rc=$?
    [ $rc = 0 ] || { echo "[sweep] entry $i stopped with exit code $rc; rerun to continue" >&2; exit $rc; }
  done
  exit 0
fi

mapfile -t dirs < <("$PY" -m swax_megatron.cli recipe sweep "$@" --list | cut -f2)
[ ${#dirs[@]} = "$n" ] || die 2 "the sweep lists ${#dirs[@]} run directories for $n entries"
declare -A entry_of=()
rc=0 done_n=0
# Each entry runs in its own session (setsid), so a Ctrl-C here reaches them only as TERM to their
# whole process group (torchrun and the trainer, which checkpoints and stops); then we wait.
stop() {
  echo "[sweep] stopping: TERM to ${#entry_of[@]} running entries" >&2
  [ $rc = 0 ] && rc=143
  local pid
  for pid in "${!entry_of[@]}"; do kill -TERM -- "-$pid" 2>/dev/null; done
}
trap stop TERM INT
reap() {  # wait for one entry to end; the first failure is the sweep's exit code
  local pid r
  wait -n -p pid "${!entry_of[@]}"; r=$?
  [ -n "$pid" ] || return 0  # a trapped signal interrupted the wait
  done_n=$((done_n + 1))
  if [ $r = 0 ]; then
    echo "[sweep $(date +%H:%M:%S)] entry ${entry_of[$pid]} finished ($done_n of $n)"
  else
    echo "[sweep $(date +%H:%M:%S)] entry ${entry_of[$pid]} stopped with exit code $r (log: ${dirs[${entry_of[$pid]}]}/sweep.log)" >&2
    [ $rc = 0 ] && rc=$r
  fi
  unset "entry_of[$pid]"
}
for ((i = 0; i < n && rc == 0; i++)); do
  while [ ${#entry_of[@]} -ge "$jobs" ]; do reap; done
  [ $rc = 0 ] || break
  mkdir -p "${dirs[$i]}" || die 1 "cannot create ${dirs[$i]}"
  echo "[sweep $(date +%H:%M:%S)] entry $i of $n: ${dirs[$i]} (log: sweep.log there)"
  SWAX_SWEEP_INDEX=$i setsid bash "$SWAX_SLURM_DIR/pretrain.sh" "$@" >> "${dirs[$i]}/sweep.log" 2>&1 &
  entry_of[$!]=$i
done
while [ ${#entry_of[@]} -gt 0 ]; do reap; done
[ $rc = 0 ] || echo "[sweep] stopped with exit code $rc; rerun to continue (done entries are skipped)" >&2
exit $rc
