#!/usr/bin/env bash
# The install step of the GPU check (bench/gpu_check.py), with hard time limits. Never touches a project venv.
#
#   bash bench/gpu_check.sh fetch           # on a machine with PyPI (the CPU dev machine): wheels for the GPU
#                                           # machine's Python (cp312) into bench/out/wheels (git-ignored)
#   bash bench/gpu_check.sh run [ARGS...]   # on the GPU machine: install those wheels into /tmp/gpu_check_site
#                                           # (PYTHONPATH only), then python3 bench/gpu_check.py ARGS
#                                           # --json-out $OUT/gpu_check.json, log in $OUT/gpu_check.log
#   bash bench/gpu_check.sh run --online [ARGS...]   # a GPU machine that reaches PyPI: a fresh venv in
#                                           # /tmp/gpu_check_venv with torch (CUDA build), triton, the project's
#                                           # dependencies, mlstm_kernels, and flash-attn / Transformer Engine
#                                           # where they install within their limits
#
# Why two steps: the lent GPU machines (H200, KINDS.md) reach no registry. Their image has CUDA torch and the
# triton it pins (seen: torch 2.11.0+cu130, triton 3.6.0, Python 3.12); what it lacks travels as wheels
# (megatron-core 0.16.1, mlstm_kernels 2.0.6; about 3 MB) in the call's carry. PyPI has no binary wheel of
# flash-attn nor of Transformer Engine's torch extension (both build from source against the installed
# torch, far beyond the time a check has), so offline they are absent and their cases report "skipped";
# `fetch` still tries them, in case a binary wheel appears.
#
# Environment: PYTHON (default python3), GPU_CHECK_WHEELS (bench/out/wheels), GPU_CHECK_SITE
# (/tmp/gpu_check_site), GPU_CHECK_INSTALL_S (install limit, default 120 s), GPU_CHECK_TE_S (Transformer Engine
# limit with --online, default 240 s), OUT (where the log and JSON go; default bench/out).
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
WHEELS=${GPU_CHECK_WHEELS:-bench/out/wheels}
SITE=${GPU_CHECK_SITE:-/tmp/gpu_check_site}
INSTALL_S=${GPU_CHECK_INSTALL_S:-120}
TE_S=${GPU_CHECK_TE_S:-240}
OUTDIR=${OUT:-bench/out}
PINS=(megatron-core==0.16.1 mlstm_kernels==2.0.6)  # setup.cfg's pins
OPTIONAL=(flash-attn transformer-engine-torch)
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)

fetch() {
  local pyver=${GPU_CHECK_PYVER:-3.12}
  mkdir -p "$WHEELS"
  timeout 300 "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
    "${PLATFORMS[@]}" -d "$WHEELS" "${PINS[@]}" || { echo "gpu_check.sh: fetching ${PINS[*]} failed" >&2; return 1; }
  for p in "${OPTIONAL[@]}"; do
    timeout 120 "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" \
      --implementation cp "${PLATFORMS[@]}" -d "$WHEELS" "$p" >/dev/null 2>&1 \
      || echo "gpu_check.sh: no binary wheel of $p for cp${pyver/./} on PyPI: its cases will be skipped"
  done
  ls -l "$WHEELS"
  local mb
  mb=$(du -sm "$WHEELS" | cut -f1)
  echo "gpu_check.sh: $mb MiB of wheels in $WHEELS (a device call carries at most 64 MiB with the tree)"
}

install_offline() {
  shopt -s nullglob
  local whl=("$WHEELS"/*.whl)
  if [ ${#whl[@]} -eq 0 ]; then
    echo "gpu_check.sh: no wheels in $WHEELS (run 'bash bench/gpu_check.sh fetch' where PyPI is reachable, and" \
         "carry $WHEELS); going on with what the image has" >&2
    return 0
  fi
  timeout "$INSTALL_S" "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "${whl[@]}" \
    || echo "gpu_check.sh: installing the wheels failed or ran past ${INSTALL_S} s; going on" >&2
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
}

install_online() {
  local venv=/tmp/gpu_check_venv
  timeout "$INSTALL_S" "$PY" -m venv "$venv" || return 1
  # torch from PyPI is the CUDA build on Linux x86-64 and brings the triton it pins; then the project's
  # dependencies (setup.cfg) and the bench extra, without touching any other environment.
  timeout 600 "$venv/bin/pip" install -q torch || { echo "gpu_check.sh: torch install failed" >&2; return 1; }
  timeout "$INSTALL_S" "$venv/bin/pip" install -q "${PINS[@]}" psutil einops numpy "pyyaml>=6" sentencepiece \
    tqdm tensorboard matplotlib || { echo "gpu_check.sh: dependency install failed" >&2; return 1; }
  timeout "$INSTALL_S" "$venv/bin/pip" install -q --only-binary=:all: flash-attn \
    || echo "gpu_check.sh: no flash-attn wheel for this torch; skipped"
  timeout "$TE_S" "$venv/bin/pip" install -q --no-build-isolation "transformer-engine[pytorch]>=2.9.0a0,<2.12.0" \
    || echo "gpu_check.sh: Transformer Engine did not install within ${TE_S} s; its cases will be skipped"
  PY="$venv/bin/python"
}

run() {
  local online=0
  if [ "${1:-}" = "--online" ]; then online=1; shift; fi
  mkdir -p "$OUTDIR"
  local t0=$SECONDS
  if [ $online = 1 ]; then install_online || echo "gpu_check.sh: online install incomplete; going on" >&2
  else install_offline; fi
  echo "gpu_check.sh: install took $((SECONDS - t0)) s"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | tee "$OUTDIR/nvidia-smi.txt"
  export PYTHONUNBUFFERED=1
  unset TRITON_INTERPRET
  "$PY" bench/gpu_check.py --json-out "$OUTDIR/gpu_check.json" "$@" 2>&1 | tee "$OUTDIR/gpu_check.log"
  return "${PIPESTATUS[0]}"
}

case "${1:-}" in
  fetch) shift; fetch "$@" ;;
  run) shift; run "$@" ;;
  *) sed -n '2,13p' "$0"; exit 2 ;;
esac
