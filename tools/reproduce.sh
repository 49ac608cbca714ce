#!/bin/bash
# The CPU-scale reproduction of the paper's findings (issue 14), from scratch, in one command:
#
#   bash tools/reproduce.sh [--smoke] [--jobs K] [--report DIR] OUT_DIR
#
# 1. data: the default tokenizer of recipes/repro (cached in OUT_DIR/runs/.cache) and the
#    synthetic recall documents as OUT_DIR/data/recall (tools/make_recall_data.py; reused when
#    there);
# 2. training: `bash slurm/sweep.sh recipes/repro/sweep.yaml --jobs K` (21 runs, K at a time;
#    a run that is done is skipped, so a rerun resumes) into OUT_DIR/runs;
# 3. evaluation: `swax eval` on every run, K at a time (done results are skipped);
# 4. report: tools/summarize.py over the sweep into DIR (default OUT_DIR/report): report.md,
#    report.html, figures/.
# --smoke runs recipes/repro/smoke.yaml instead (2 runs, a few steps, a small evaluation: checks
# the pipeline, not the science). K defaults to the cores over the recipe's slurm.cpus_per_task
# (the threads of each run and evaluation). Each run's output goes to sweep.log and eval.log in
# its run directory. Wall times per stage go to OUT_DIR/timing.json.
# Environment: SWAX_PYTHON (default python3).
set -uo pipefail

die() { local code=$1; shift; echo "reproduce.sh: error: $*" >&2; exit "$code"; }
log() { echo "[reproduce $(date +%H:%M:%S)] $*"; }

smoke=0 report="" out="" jobs=""
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=1 ;;
    --report) [ $# -ge 2 ] || die 2 "--report needs a directory"; report=$2; shift ;;
    --jobs) [ $# -ge 2 ] || die 2 "--jobs needs a number"; jobs=$2; shift ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) die 2 "unknown option $1 (expected --smoke, --jobs K, --report DIR)" ;;
    *) [ -z "$out" ] || die 2 "one OUT_DIR, got '$out' and '$1'"; out=$1 ;;
  esac
  shift
done
[ -n "$out" ] || die 2 "usage: bash tools/reproduce.sh [--smoke] [--jobs K] [--report DIR] OUT_DIR"
[ -z "$jobs" ] || [[ "$jobs" =~ ^[1-9][0-9]*$ ]] || die 2 "--jobs must be a positive integer, got '$jobs'"

repo=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
PY=${SWAX_PYTHON:-python3}
command -v "$PY" >/dev/null 2>&1 || die 2 "python interpreter '$PY' not found (set SWAX_PYTHON)"
export SWAX_PYTHON=$PY
mkdir -p "$out" || die 2 "cannot create $out"
out=$(cd "$out" && pwd)
report=${report:-$out/report}
if [ $smoke = 1 ]; then sweep=$repo/recipes/repro/smoke.yaml; else sweep=$repo/recipes/repro/sweep.yaml; fi
data=$out/data runs=$out/runs
overrides=("run.output_root=$runs" "data.source=[$data/recall]")
timing=()
stage() { timing+=("\"$1\": $2"); }
now() { date +%s; }

t0=$(now)
vocab=$("$PY" - "$sweep" "${overrides[@]}" <<'PY'
import math
import sys
from swax_megatron.config.errors import RecipeError
from swax_megatron.config.resolve import resolve
try:
    r = resolve(sys.argv[1], sys.argv[2:], sweep_index=0).recipe  # the entries share their data
except RecipeError as e:
    sys.exit(f"reproduce.sh: error: {e}")
if r.data.tokenizer_model:
    sys.exit("reproduce.sh: error: the reproduction uses the default tokenizer (data.tokenizer_model is set)")
# Documents: one per training sample of the run (one document is one sample) over the split's
# training share, so no document is seen twice; at least 400, for the validation and test splits.
split = [float(x) for x in str(r.data.split).split(",")]
docs = max(400, math.ceil(r.train.steps * r.train.global_batch_size * sum(split) / split[0]))
print(r.data.tokenizer_vocab_size, r.train.seq_length, docs, r.slurm.cpus_per_task)
PY
) || exit 2
read -r vocab_size seq_length docs threads <<< "$vocab"
cores=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # (nproc obeys OMP_NUM_THREADS)
jobs=${jobs:-$(( cores / threads > 0 ? cores / threads : 1 ))}

log "data: tokenizer (vocab $vocab_size), recall documents ($docs x $seq_length tokens)"
"$PY" "$repo/tools/make_recall_data.py" --output-prefix "$data/recall" --seq-length "$seq_length" \
  --documents "$docs" --vocab-size "$vocab_size" --cache-dir "$runs/.cache" || die 1 "making the recall data failed"
t1=$(now); stage data $((t1 - t0))

log "training: slurm/sweep.sh $sweep --jobs $jobs ($threads threads each)"
bash "$repo/slurm/sweep.sh" "$sweep" "${overrides[@]}" --jobs "$jobs" || die 1 "the sweep stopped (rerun to resume)"
t2=$(now); stage train $((t2 - t1))

mapfile -t run_dirs < <("$PY" -m swax_megatron.cli recipe sweep "$sweep" "${overrides[@]}" --list | cut -f2)
[ ${#run_dirs[@]} -gt 0 ] || die 1 "the sweep lists no runs"
log "evaluation: swax eval on ${#run_dirs[@]} runs, $jobs at a time"
# (xargs exits non-zero when any evaluation failed; each says which in its eval.log)
printf '%s\0' "${run_dirs[@]}" | OMP_NUM_THREADS=$threads xargs -0 -P "$jobs" -I{} bash -c \
  '"$0" -m swax_megatron.cli eval "$1" >> "$1/eval.log" 2>&1 && echo "[reproduce $(date +%H:%M:%S)] evaluated $1" || { echo "reproduce.sh: swax eval $1 failed (see $1/eval.log)" >&2; exit 1; }' "$PY" {} \
  || die 1 "an evaluation failed (above)"
t3=$(now); stage eval $((t3 - t2))

log "report: tools/summarize.py -> $report"
"$PY" "$repo/tools/summarize.py" "${run_dirs[@]}" --out "$report" --title "$( [ $smoke = 1 ] && echo 'Reproduction (smoke)' || echo 'Reproduction')" \
  || die 1 "the report failed"
t4=$(now); stage report $((t4 - t3)); stage total $((t4 - t0))

runs_n=${#run_dirs[@]}
(IFS=,; echo "{\"sweep\": \"$sweep\", \"runs\": $runs_n, \"cpus\": $cores, \"jobs\": $jobs, ${timing[*]}}") > "$out/timing.json.tmp" \
  && mv "$out/timing.json.tmp" "$out/timing.json"
log "done in $((t4 - t0)) s: $report/report.md (timing: $out/timing.json)"
