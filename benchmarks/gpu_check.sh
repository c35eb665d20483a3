#!/usr/bin/env bash
# One call on a GPU machine, under 8 minutes on an H200: build the CUDA extension, run the CUDA
# tests, the kernel benchmarks and the end-to-end decode benchmark; prints short tables.
#   bash benchmarks/gpu_check.sh
# The device image has torch and triton but no pytest: carry wheels in .wheels/ (pip download
# pytest pluggy iniconfig packaging -d .wheels; the folder is gitignored, so pass it as carried).
# Every stage has its own time limit (they add up to 8 minutes) and its full output goes to
# $OUT/gpu_check/ when $OUT is set, so a stage that runs out of time still leaves its log.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD"
PY=python3
LOG="${OUT:-/tmp}/gpu_check"
mkdir -p "$LOG"
stage() {   # stage NAME SECONDS COMMAND...: run with a time limit, keep the log, show its tail
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@" > "$LOG/$name.log" 2>&1
  local rc=$?
  tail -n "${TAIL:-25}" "$LOG/$name.log"
  [ $rc -eq 124 ] && echo "!! $name ran out of time"
  return 0
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
if [ -d .wheels ]; then $PY -m pip install -q --no-index --find-links .wheels pytest 2>&1 | tail -1; fi
# pure Python first, so that a failed CUDA build cannot stop the rest
TTS_ENGINE_NO_CUDA_EXT=1 $PY -m pip install -q -e . --no-deps --no-build-isolation 2>&1 | tail -2
TAIL=5 stage build 100 $PY setup.py -q build_ext --inplace
$PY -c "from tts_engine import _C; print('tts_engine._C built')" || echo "tts_engine._C NOT built (torch fallback)"
TAIL=8 stage tests 170 $PY -m pytest -q -x tests/test_kernels.py tests/test_backends.py tests/test_csrc.py
stage kernels 80 $PY benchmarks/bench_kernels.py
stage e2e 120 $PY benchmarks/bench_gpu_e2e.py
