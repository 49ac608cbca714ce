#!/bin/bash
# Evaluate trained runs (swax eval) on a SLURM cluster or on one machine.
#
#   swax eval submit RECIPE|RUN_DIR... [--tasks a,b] [--parallel K] [eval.key=value ...]
#   sbatch --array=0-$((N-1))%K [--gpus-per-node=1] slurm/eval.sh RUN_DIR... [--tasks a,b] [eval.k=v ...]
#   sbatch --array=0-$((N-1)) slurm/eval.sh RECIPE [key=value ...] [--tasks a,b] [eval.k=v ...]
#   bash slurm/eval.sh RUN_DIR...|RECIPE [--tasks a,b] [eval.key=value ...]   # no SLURM: in turn
#   ... [--layout run]    # each run at its own TP x PP (swax eval --layout run), ranks from srun
#
# Array task i evaluates the i-th run: of the run directories given, or of the recipe's sweep
# entries (`swax recipe sweep RECIPE --list`; a recipe without a sweep is one run; key=value
# other than eval.* only select the recipe's runs). Outside an array job every run is evaluated
# in turn. Each run is one process, `swax eval RUN_DIR [--tasks] [eval.*]`, which skips results
# already done for the run's latest checkpoint and these settings, so a resubmission resumes.
# With --layout run, a run of TP x PP = n is evaluated by n ranks: `srun --ntasks=n` inside an
# allocation of at least n tasks (`swax eval submit --layout run` asks for the largest n), else
# n local worker processes started by swax eval itself.
# `swax eval submit` passes only the runs that exist, have a checkpoint and have something left.
#
# Exit codes: 0 every run evaluated (or already done); 2 bad input (no runs, an array index past
# the runs, not a run directory, no checkpoint, an unknown task or setting: swax eval's one line);
# anything else: the evaluation's own failure. Locally every run is tried, and the first failing
# run's code is the script's.
#
# Environment: SWAX_PYTHON (interpreter, default python3), SWAX_LOCAL=1 (run every run locally
# even inside an allocation). No requeue: SIGUSR1 is ignored, SIGTERM stops the evaluation (the
# results files written so far stay; a rerun does the rest).
#SBATCH --job-name=swax-eval
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --no-requeue
#SBATCH --output=slurm-%x-%A_%a.out

set -uo pipefail

log() { echo "[eval $(date +%H:%M:%S)] $*"; }
die() { local code=$1; shift; echo "eval.sh: error: $*" >&2; exit "$code"; }

if [ $# -lt 1 ] || [ "$1" = -h ] || [ "$1" = --help ]; then
  sed -n '2,7p' "$0" 2>/dev/null | sed 's/^# \{0,1\}//' >&2
  [ $# -lt 1 ] && exit 2 || exit 0
fi

PY=${SWAX_PYTHON:-python3}
command -v "$PY" >/dev/null 2>&1 || die 2 "python interpreter '$PY' not found (set SWAX_PYTHON)"

# --- arguments: targets (run directories or one recipe), --tasks, key=value ------------------
targets=() eval_args=() recipe_overrides=() layout=single
while [ $# -gt 0 ]; do
  case "$1" in
    --tasks) [ $# -ge 2 ] || die 2 "--tasks needs a value"; eval_args+=(--tasks "$2"); shift 2 ;;
    --tasks=*) eval_args+=("$1"); shift ;;
    --layout) [ $# -ge 2 ] || die 2 "--layout needs a value"; layout=$2; shift 2 ;;
    --layout=*) layout=${1#--layout=}; shift ;;
    eval.*=*) eval_args+=("$1"); shift ;;
    -*) die 2 "unknown option $1" ;;
    *=*) [ -e "$1" ] && { targets+=("$1"); shift; continue; }; recipe_overrides+=("$1"); shift ;;
    *) targets+=("$1"); shift ;;
  esac
done
[ ${#targets[@]} -ge 1 ] || die 2 "no run directory or recipe given"
case "$layout" in single|run) eval_args+=(--layout "$layout") ;; *) die 2 "--layout must be single or run, got '$layout'" ;; esac

runs=()
if [ ${#targets[@]} = 1 ] && [ -f "${targets[0]}" ]; then
  list=$("$PY" -m swax_megatron.cli recipe sweep "${targets[0]}" "${recipe_overrides[@]}" --list) \
    || die 2 "recipe ${targets[0]} did not resolve (error above)"
  while IFS=$'\t' read -r _ dir; do runs+=("$dir"); done <<< "$list"
else
  [ ${#recipe_overrides[@]} = 0 ] || die 2 "override \`${recipe_overrides[0]}\`: only eval.* settings can be changed at evaluation"
  for t in "${targets[@]}"; do
    [ -d "$t" ] || die 2 "$t: neither a recipe file nor a run directory"
    runs+=("$t")
  done
fi

# --- signals: the evaluation is one process, nothing to checkpoint -------------------------------
child=""
trap 'log "SIGUSR1 ignored: evaluation does not checkpoint (results files already written stay)"' USR1
trap 'log "SIGTERM: stopping the evaluation"; [ -n "$child" ] && kill -TERM "$child" 2>/dev/null' TERM

export PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1
[ -n "${SLURM_CPUS_PER_TASK:-}" ] && export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$SLURM_CPUS_PER_TASK}

evaluate() {  # RUN_DIR: swax eval in the background, so that the TERM trap can act
  local rc last n=1
  if [ "$layout" = run ] && [ -n "${SLURM_JOB_ID:-}" ] && [ "${SWAX_LOCAL:-0}" != 1 ]; then
    n=$("$PY" -m swax_megatron.eval.layout --world "$1") || return 2  # its one line is above
  fi
  trap '' USR1  # the child must not die of the default action
  if [ "$n" -gt 1 ] && [ "${SLURM_NTASKS:-1}" -ge "$n" ]; then  # srun gives the ranks
    log "$1: $n ranks (srun) at the run's layout"
    srun --ntasks="$n" --nodes=1 --kill-on-bad-exit=1 "$PY" -m swax_megatron.cli eval "$1" "${eval_args[@]}" &
  else
    "$PY" -m swax_megatron.cli eval "$1" "${eval_args[@]}" &
  fi
  child=$!
  trap 'log "SIGUSR1 ignored: evaluation does not checkpoint (results files already written stay)"' USR1
  while :; do  # a trapped signal interrupts `wait`: wait again until the process is gone
    wait "$child"; rc=$?
    kill -0 "$child" 2>/dev/null || break
  done
  wait "$child" 2>/dev/null; last=$?; [ $last != 127 ] && rc=$last
  child=""
  return "$rc"
}

if [ -n "${SLURM_ARRAY_TASK_ID:-}" ] && [ "${SWAX_LOCAL:-0}" != 1 ]; then
  i=$SLURM_ARRAY_TASK_ID
  [ "$i" -lt ${#runs[@]} ] || die 2 "array task $i, but there are ${#runs[@]} run(s) (indices 0-$((${#runs[@]} - 1)))"
  log "job ${SLURM_ARRAY_JOB_ID:-?}_$i on ${SLURMD_NODENAME:-?}: run $((i + 1)) of ${#runs[@]}: ${runs[$i]}"
  evaluate "${runs[$i]}"; rc=$?
  [ "$rc" = 0 ] && log "evaluated ${runs[$i]}" || log "evaluation of ${runs[$i]} failed with exit code $rc"
  exit "$rc"
fi
if [ -n "${SLURM_JOB_ID:-}" ] && [ "${SWAX_LOCAL:-0}" != 1 ] && [ ${#runs[@]} -gt 1 ]; then
  log "job ${SLURM_JOB_ID} is not an array job: evaluating the ${#runs[@]} runs in turn"
fi
first_rc=0
for ((i = 0; i < ${#runs[@]}; i++)); do
  log "run $((i + 1)) of ${#runs[@]}: ${runs[$i]}"
  evaluate "${runs[$i]}"; rc=$?
  if [ "$rc" != 0 ]; then
    log "evaluation of ${runs[$i]} failed with exit code $rc"
    [ "$first_rc" = 0 ] && first_rc=$rc
  fi
done
exit "$first_rc"
