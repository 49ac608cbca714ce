#!/bin/bash
# Pretrain a recipe on a SLURM cluster or on one machine.
#
#   swax slurm submit RECIPE [key=value ...]                      # sbatch with the recipe's slurm: section
#   sbatch $(swax slurm options RECIPE) slurm/pretrain.sh RECIPE [key=value ...]
#   sbatch [--gpus-per-node=G] slurm/pretrain.sh RECIPE [...]     # the #SBATCH defaults below
#   bash slurm/pretrain.sh RECIPE [key=value ...]                 # no SLURM: torchrun --standalone
#
# Under SLURM: one srun task per GPU (slurm.launcher: srun) or one torchrun per node
# (slurm.launcher: torchrun); MASTER_ADDR is the job's first node, MASTER_PORT derives from the
# job id. SIGUSR1 (sent by --signal=B:USR1@N before the time limit, or by
# `scancel --signal=USR1 --batch JOB`) is forwarded to the ranks, which checkpoint at the next
# step and exit with the trainer's requeue code; the script then runs `scontrol requeue` and the
# job resumes from the run directory's `latest`. SIGTERM (cancel, preemption, time limit) is
# forwarded too, but never leads to a requeue from here.
#
# Exit codes: 0 finished (the run directory gets a DONE marker; a run that is DONE is not started
# again), 2 the recipe does not fit this job, the trainer's requeue code (42) stopped with a
# checkpoint (rerun to resume), anything else: the training's own failure.
#
# Environment: SWAX_PYTHON (interpreter, default python3), SWAX_LAUNCHER (srun | torchrun,
# default slurm.launcher), SWAX_SITE (default slurm.site: sources slurm/site/<site>.env),
# SWAX_MAX_REQUEUES (default 50), SWAX_RESIGNAL_SECONDS (repeat a forwarded USR1 this often while
# the ranks have not stopped, default 60), SWAX_LOCAL=1 (run locally even inside an allocation),
# SWAX_SWEEP_INDEX (train this entry of the recipe's sweep; set by slurm/sweep.sh).
#
# Defaults for a plain `sbatch slurm/pretrain.sh`: edit once for your cluster (`swax slurm
# submit` replaces them with the recipe's slurm: section). They ask for no GPUs: a partition
# without GPU GRES refuses any GPU request, and options on the command line can add a request
# but never remove one. `swax slurm options` adds --gpus-per-node where the partition has GPUs;
# by hand, pass --gpus-per-node=G (a job on GPU nodes without its GPUs stops with exit 2).
#SBATCH --job-name=swax
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out

set -uo pipefail

log() { echo "[pretrain $(date +%H:%M:%S)] $*"; }
die() { local code=$1; shift; echo "pretrain.sh: error: $*" >&2; exit "$code"; }

if [ $# -lt 1 ] || [ "$1" = -h ] || [ "$1" = --help ]; then
  sed -n '2,7p' "$0" 2>/dev/null | sed 's/^# \{0,1\}//' >&2
  [ $# -lt 1 ] && exit 2 || exit 0
fi

# sbatch runs a copy of this script from its spool folder: find slurm/ (for site profiles) through
# SWAX_SLURM_DIR, the job's submitted script path, or this file's own path.
slurm_dir() {
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

# --- signals: remember them until the ranks run, then forward --------------------------------
child=""        # srun (SLURM) whose tasks are the ranks
stop_requested=""
got_term=""
resender=""
forward() { [ -n "$child" ] && kill -"$1" "$child" 2>/dev/null; return 0; }
on_usr1() {
  log "SIGUSR1: asking the ranks to checkpoint and stop"
  stop_requested=1
  forward USR1
  # The ranks ignore USR1 until the trainer's handler is installed: repeat it until they stop.
  if [ -n "$child" ] && [ -z "$resender" ]; then
    ( while sleep "${SWAX_RESIGNAL_SECONDS:-60}"; do kill -USR1 "$child" 2>/dev/null || exit 0; done ) &
    resender=$!
  fi
}
on_term() { log "SIGTERM: forwarding it to the ranks"; got_term=1; stop_requested=1; forward TERM; }
trap on_usr1 USR1
trap on_term TERM

PY=${SWAX_PYTHON:-python3}
command -v "$PY" >/dev/null 2>&1 || die 2 "python interpreter '$PY' not found (set SWAX_PYTHON)"
export SWAX_PY=$PY

# --- the recipe: resolved and validated before anything is launched ---------------------------
recipe=$1; shift
SLURM_DIR=$(slurm_dir) || SLURM_DIR=""
jobenv=(-m swax_megatron.cli slurm job-env)
[ -n "${SWAX_SWEEP_INDEX:-}" ] && jobenv+=(--sweep-index "$SWAX_SWEEP_INDEX")
# job-env checks slurm.site against the profiles of the slurm/ folder found here
env_text=$(SWAX_SLURM_DIR=$SLURM_DIR "$PY" "${jobenv[@]}" "$recipe" "$@") \
  || die 2 "recipe $recipe did not resolve (error above); nothing was launched"
eval "$env_text"
export SWAX_REQUEUE_EXIT

if [ "$SWAX_DONE" = 1 ]; then
  log "$SWAX_RUN_DIR is done: nothing to do"
  exit 0
fi
site=${SWAX_SITE:-$SWAX_RECIPE_SITE}
if [ -n "$SLURM_DIR" ] && [ -f "$SLURM_DIR/site/$site.env" ]; then
  # shellcheck disable=SC1090
  . "$SLURM_DIR/site/$site.env"
elif [ "$site" != default ]; then
  die 2 "site profile '$site' not found (looked for ${SLURM_DIR:-<slurm dir unknown>}/site/$site.env; set SWAX_SLURM_DIR)"
fi
mkdir -p "$SWAX_RUN_DIR" || die 1 "cannot create the run directory $SWAX_RUN_DIR"
export SWAX_EXIT_FILE=$SWAX_RUN_DIR/.rank0-exit
export PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$SWAX_CPUS_PER_TASK}
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-${TMPDIR:-/tmp}/triton-cache-$(id -u)}  # node-local, not NFS

# Every rank runs through this wrapper. Stop signals stay ignored until the trainer installs its
# handlers (Python's default for SIGUSR1 is to die). The requeue code becomes 0 plus a note from
# rank 0, so that `srun --kill-on-bad-exit` and torchrun do not take a clean stop for a crash.
export SWAX_RANK_WRAPPER='trap "" USR1 TERM
"$@"; rc=$?
if [ "$rc" = "$SWAX_REQUEUE_EXIT" ]; then
  [ "${RANK:-${SLURM_PROCID:-0}}" = 0 ] && echo "$rc" > "$SWAX_EXIT_FILE"
  exit 0
fi
exit "$rc"'

# PID $1 and all its descendants, from /proc (no procps needed). torchrun starts every rank in a
# session of its own, so signalling torchrun's process group would miss the ranks.
swax_tree() {
  local f s rest pid changed=1
  local -A parent=() in=(["$1"]=1)
  for f in /proc/[0-9]*/stat; do
    read -r s 2>/dev/null < "$f" || continue
    pid=${s%% *}; rest=${s##*) }; rest=${rest#* }
    parent[$pid]=${rest%% *}
  done
  while [ $changed = 1 ]; do
    changed=0
    for pid in "${!parent[@]}"; do
      if [ -z "${in[$pid]:-}" ] && [ -n "${in[${parent[$pid]}]:-}" ]; then in[$pid]=1; changed=1; fi
    done
  done
  echo "${!in[@]}"
}

# torchrun for the ranks of one node (local mode, and per node with slurm.launcher=torchrun):
#   swax_node_torchrun TORCHRUN_OPTIONS... -- TRAINER_ARGS...
# torchrun ignores USR1/TERM (forwarding them itself, it would kill the ranks 30 s later);
# this shell sends them to every process below torchrun, and the trainers act on them.
swax_node_torchrun() {
  local opts=() pid rc last ints=0
  while [ $# -gt 0 ] && [ "$1" != -- ]; do opts+=("$1"); shift; done
  shift
  trap '' USR1 TERM
  TORCHELASTIC_SIGNALS_TO_HANDLE=SIGHUP PET_SIGNALS_TO_HANDLE=SIGHUP \
    "$SWAX_PY" -m torch.distributed.run "${opts[@]}" --no-python \
    bash -c "$SWAX_RANK_WRAPPER" swax-rank "$SWAX_PY" -m swax_megatron.train "$@" &
  pid=$!
  trap 'kill -USR1 $(swax_tree '"$pid"') 2>/dev/null' USR1
  trap 'kill -TERM $(swax_tree '"$pid"') 2>/dev/null' TERM
  trap 'ints=$((ints + 1))
        if [ $ints -ge 2 ]; then echo "[pretrain] killing the ranks" >&2; kill -KILL $(swax_tree '"$pid"') 2>/dev/null
        else echo "[pretrain] stopping: the ranks checkpoint first (Ctrl-C again kills them)" >&2; kill -TERM $(swax_tree '"$pid"') 2>/dev/null; fi' INT
  while :; do
    wait "$pid"; rc=$?
    kill -0 "$pid" 2>/dev/null || break
  done
  wait "$pid" 2>/dev/null; last=$?; [ $last != 127 ] && [ $last -ge 0 ] && rc=$last
  trap - USR1 TERM INT
  return "$rc"
}
export -f swax_tree swax_node_torchrun

jobref=${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID:-}}
jobref=${jobref:-${SLURM_JOB_ID:-}}
launcher=${SWAX_LAUNCHER:-$SWAX_RECIPE_LAUNCHER}
rm -f "$SWAX_EXIT_FILE"

if [ -n "${SLURM_JOB_ID:-}" ] && [ "${SWAX_LOCAL:-0}" != 1 ]; then
  mode=slurm
  MASTER_ADDR=$(scontrol show hostnames "${SLURM_JOB_NODELIST:-}" 2>/dev/null | head -n 1)
  [ -n "$MASTER_ADDR" ] || die 1 "scontrol show hostnames gave no node for SLURM_JOB_NODELIST='${SLURM_JOB_NODELIST:-}': refusing to guess MASTER_ADDR"
  export MASTER_ADDR
  export MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
  nodes=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}
  hint="submit with \`swax slurm submit\` or \`sbatch \$(swax slurm options RECIPE) ...\`"
  [ "$nodes" = "$SWAX_NODES" ] || die 2 "the recipe asks for slurm.nodes=$SWAX_NODES, this job has $nodes node(s): $hint"
  cpt=()
  [ -n "${SLURM_CPUS_PER_TASK:-}" ] && cpt=(--cpus-per-task="$SLURM_CPUS_PER_TASK")  # srun does not inherit it
  # A job that SLURM requeued after a node failure can restart the moment the node is back and
  # then lose that node from its allocation again (seen with SLURM 22.05: slurmctld answers the
  # step request with "requested nodes ... not part of JobId"), and srun would wait for it
  # forever. --immediate gives up after 120 s ("Unable to create step"): the job fails, and a
  # resubmission resumes.
  srun_step=(--nodes="$nodes" --immediate=120)
  case "$launcher" in
    srun)
      [ "${SLURM_NTASKS:-}" = "$SWAX_WORLD_SIZE" ] || die 2 "the recipe's world size is $SWAX_WORLD_SIZE (slurm.nodes x slurm.gpus_per_node = $SWAX_NODES x $SWAX_GPUS_PER_NODE), this job has ${SLURM_NTASKS:-?} tasks: $hint"
      cmd=(srun --kill-on-bad-exit=1 "${srun_step[@]}" --ntasks="$SWAX_WORLD_SIZE" --ntasks-per-node="$SWAX_GPUS_PER_NODE" "${cpt[@]}"
           bash -c "$SWAX_RANK_WRAPPER" swax-rank "$PY" -m swax_megatron.train "${SWAX_TRAIN_ARGS[@]}")
      ;;
    torchrun)
      cmd=(srun --kill-on-bad-exit=1 "${srun_step[@]}" --ntasks="$nodes" --ntasks-per-node=1 "${cpt[@]}"
           bash -c 'swax_node_torchrun "$@"' swax-node
           --nnodes="$nodes" --nproc-per-node="$SWAX_GPUS_PER_NODE" --max-restarts=0
           --rdzv-backend=c10d --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv-id="$SLURM_JOB_ID"
           -- "${SWAX_TRAIN_ARGS[@]}")
      ;;
    *) die 2 "unknown launcher '$launcher' (srun or torchrun)" ;;
  esac
  # On GPU nodes a job without its GPUs (a plain sbatch: the header asks for none) would train
  # on CPUs, or put ranks on one GPU, without saying so.
  node_gres=$(scontrol show node -o "${SLURMD_NODENAME:-}" 2>/dev/null | sed -n 's/.*[[:space:]]Gres=\([^[:space:]]*\).*/\1/p')
  if [[ "$node_gres" == *gpu* ]] && [ "${SLURM_GPUS_ON_NODE:-0}" -lt "$SWAX_GPUS_PER_NODE" ]; then
    die 2 "the recipe runs $SWAX_GPUS_PER_NODE processes per node (slurm.gpus_per_node), this job has ${SLURM_GPUS_ON_NODE:-0} of the node's GPUs ($node_gres): add --gpus-per-node=$SWAX_GPUS_PER_NODE, or $hint"
  fi
else
  mode=local
fi

log "run $SWAX_RUN_NAME in $SWAX_RUN_DIR"
if [ $mode = slurm ]; then
  log "job ${jobref} on ${SLURM_JOB_NODELIST:-?}, restart count ${SLURM_RESTART_COUNT:-0}, launcher $launcher, world size $SWAX_WORLD_SIZE, master $MASTER_ADDR:$MASTER_PORT, site $site"
else
  log "local: torchrun --standalone --nproc-per-node $SWAX_WORLD_SIZE"
fi
if [ -n "$SLURM_DIR" ] && command -v git >/dev/null 2>&1; then
  sha=$(git -C "$SLURM_DIR" rev-parse --short HEAD 2>/dev/null) && log "code at git $sha"
fi

if [ -n "$stop_requested" ]; then
  rc=$SWAX_REQUEUE_EXIT  # a stop before the ranks started: nothing to save, requeue at once
  echo "$rc" > "$SWAX_EXIT_FILE"
elif [ $mode = local ]; then
  trap - USR1 TERM
  swax_node_torchrun --standalone --nnodes=1 --nproc-per-node="$SWAX_WORLD_SIZE" -- "${SWAX_TRAIN_ARGS[@]}"
  rc=$?
else
  "${cmd[@]}" &
  child=$!
  [ -n "$stop_requested" ] && forward USR1
  while :; do  # a trapped signal interrupts `wait`: wait again until srun is really gone
    wait "$child"; rc=$?
    kill -0 "$child" 2>/dev/null || break
  done
  # (bash gives -1, no status, for a child it reaped while a trap ran: keep the earlier code)
  wait "$child" 2>/dev/null; last=$?; [ $last != 127 ] && [ $last -ge 0 ] && rc=$last
  [ -n "$resender" ] && kill "$resender" 2>/dev/null
fi

if [ -f "$SWAX_RUN_DIR/exit.json" ]; then
  log "trainer: $(tr -d '\n' < "$SWAX_RUN_DIR/exit.json" | tr -s ' ')"
fi
if [ "$rc" = 0 ] && [ "$(cat "$SWAX_EXIT_FILE" 2>/dev/null)" = "$SWAX_REQUEUE_EXIT" ]; then
  rc=$SWAX_REQUEUE_EXIT
fi
rm -f "$SWAX_EXIT_FILE"

if [ "$rc" = 0 ]; then
  if [ ! -e "$SWAX_RUN_DIR/DONE" ]; then
    printf 'finished %s job %s restarts %s\n' "$(date -Is)" "${jobref:-local}" "${SLURM_RESTART_COUNT:-0}" \
      > "$SWAX_RUN_DIR/.DONE.tmp" && mv "$SWAX_RUN_DIR/.DONE.tmp" "$SWAX_RUN_DIR/DONE"
  fi
  log "training finished: $SWAX_RUN_DIR"
  exit 0
fi
if [ "$rc" != "$SWAX_REQUEUE_EXIT" ]; then
  # Ranks that died with a node, or whose collective broke when another node went away, leave
  # the trainer's exit.json at "running": say here how the job ended and where it resumes.
  where="job ${jobref:-local}${SLURM_JOB_NODELIST:+ on $SLURM_JOB_NODELIST}${got_term:+, after SIGTERM from SLURM (cancel, time limit, preemption or a failed node)}"
  # (TERM ignored: SLURM signals every process of a job it cancels, this one too.)
  # shellcheck disable=SC2016
  ( trap '' TERM; exec "$PY" -c 'import sys; from swax_megatron.launch.jobenv import record_failure
sys.exit(0 if record_failure(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]) else 1)' \
    "$SWAX_RUN_DIR" "$SWAX_CHECKPOINT_DIR" "$rc" "$where" 2>/dev/null ) \
    && log "exit.json: $(tr -d '\n' < "$SWAX_RUN_DIR/exit.json" | tr -s ' ')"
  log "training failed with exit code $rc"
  exit "$rc"
fi
if [ $mode = local ]; then
  log "stopped with a checkpoint in $SWAX_RUN_DIR: run the same command again to resume"
  exit "$rc"
fi
if [ -n "$got_term" ]; then
  log "stopped with a checkpoint after SIGTERM (cancel, preemption or time limit): not requeueing from here"
  exit "$rc"
fi
restarts=${SLURM_RESTART_COUNT:-0}
if [ "$restarts" -ge "${SWAX_MAX_REQUEUES:-50}" ]; then
  log "checkpoint written, but the job was already requeued $restarts times (SWAX_MAX_REQUEUES): resubmit by hand"
  exit "$rc"
fi
log "checkpoint written: requeueing job $jobref (restart $((restarts + 1)))"
scontrol requeue "$jobref" || die "$rc" "scontrol requeue $jobref failed: resubmit by hand, the run resumes from its checkpoint"
exit 0
