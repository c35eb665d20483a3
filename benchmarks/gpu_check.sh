#!/usr/bin/env bash
# The one-call GPU check, from the repo root, 7 minutes at most on an H100, with no network:
#   bash benchmarks/gpu_check.sh            # on the GPU machine (the device tool, carry [".wheels"])
#   bash benchmarks/gpu_check.sh --smoke    # every stage's Python on a CPU, tiny shapes (CI runs this)
# Stages, each with its own time limit, log and rows, so that a stage cut by its limit loses only
# itself; the last lines are a table of the stages. Logs: $OUT/gpu_check/ (else /tmp/gpu_check/).
#   install   tts-engine from the source tree, no network; stops here if tts_engine.kernels
#             .attention_triton does not import
#   build     the CUDA sampler (tts_engine._C) with MAX_JOBS=16, in the background during the kernels
#             (CPU work beside GPU timings: two nvcc processes on a 16-core machine)
#   kernels   benchmarks/bench_kernels.py: decode against copy bandwidth, cascade against plain,
#             extend against SDPA, at Llama-3.2-1B and Qwen2.5-1.5B shapes
#   workload  benchmarks/bench_workload.py: beam search and DVTS through the study code, a 1B policy
#             and a 1.5B PRM at 0.45 / 0.45 of the GPU, N=64, with the roofline beside it
#   host      benchmarks/bench_host.py on the GPU: host ms per decode step at 256 sequences x 4k,
#             overlapped and one step at a time, with a forward that costs nothing and one of 10 ms
#   tests     the GPU-only tests (CUDA graphs, the CUDA sampler's distribution), from pytest wheels
#             carried in .wheels/; fill it once, where pip works:
#             pip download --no-deps -d .wheels pytest pluggy iniconfig packaging
set -uo pipefail
cd "$(dirname "$0")/.."
SMOKE=""
[ "${1:-}" = "--smoke" ] && SMOKE=--smoke
PY=${PYTHON:-python3}
LOG="${OUT:-/tmp}/gpu_check"
mkdir -p "$LOG"
: > "$LOG/stages"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"     # the source tree works without the install too
[ -n "$SMOKE" ] && export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES=""

stage() {   # stage NAME SECONDS COMMAND...: run with a time limit, keep the log, show its tail
  local name=$1 limit=$2 start=$SECONDS rc
  shift 2
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@" > "$LOG/$name.log" 2>&1
  rc=$?
  tail -n "${TAIL:-40}" "$LOG/$name.log"
  record "$name" "$rc" $((SECONDS - start)) "$limit"
}
record() {  # record NAME RC SECONDS LIMIT: one row of the closing table
  local status=ok
  [ "$2" -eq 124 ] && status="cut at ${4}s"
  [ "$2" -ne 0 ] && [ "$2" -ne 124 ] && status="failed (exit $2)"
  printf '%-10s %-16s %5ss\n' "$1" "$status" "$3" >> "$LOG/stages"
}

if [ -z "$SMOKE" ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
$PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"

# 1. install (no network; the smoke run's environment has it installed already)
if [ -z "$SMOKE" ]; then
  TAIL=3 stage install 30 env TTS_ENGINE_NO_CUDA_EXT=1 $PY -m pip install -e . --no-deps --no-build-isolation \
    --no-index
fi
if ! $PY -c "import tts_engine.kernels.attention_triton" > "$LOG/import.log" 2>&1; then
  tail -n 5 "$LOG/import.log"
  echo "STOP: tts_engine.kernels.attention_triton does not import (log: $LOG/import.log)"
  exit 1
fi
echo "tts_engine.kernels.attention_triton imports"

# 2. build the CUDA sampler beside the kernel benchmarks (CPU work against GPU work)
if [ -z "$SMOKE" ]; then
  BUILD_START=$SECONDS
  ( MAX_JOBS=16 timeout 90 $PY setup.py -q build_ext --inplace > "$LOG/build.log" 2>&1; echo $? > "$LOG/build.rc" ) &
  BUILD=$!
fi

# 3. kernels
stage kernels 75 $PY benchmarks/bench_kernels.py $SMOKE

if [ -z "$SMOKE" ]; then
  wait "$BUILD"
  echo "== build (limit 90s, beside the kernels)"
  tail -n 3 "$LOG/build.log"
  record build "$(cat "$LOG/build.rc")" $((SECONDS - BUILD_START)) 90
  $PY -c "from tts_engine import _C; print('tts_engine._C built')" 2>/dev/null \
    || echo "tts_engine._C NOT built: the sampler runs in torch"
fi

# 4. the real workload
stage workload 180 $PY benchmarks/bench_workload.py $SMOKE

# 5. host work per step, the overlapped loop against the synchronous one
if [ -n "$SMOKE" ]; then
  HOST_ARGS="--device cpu --seqs 8 --contexts 64 --steps 4"
else
  HOST_ARGS="--device cuda --seqs 256 --contexts 4096 --steps 16"
fi
TAIL=10 stage host 75 bash -c "$PY benchmarks/bench_host.py $HOST_ARGS --sync \
  && $PY benchmarks/bench_host.py $HOST_ARGS --sync --forward-ms 10"

# 6. GPU-only tests (on the CPU they skip)
if [ -z "$SMOKE" ] && [ -d .wheels ]; then
  $PY -m pip install -q --no-index --no-deps --target /tmp/gpu_check_site .wheels/*.whl > "$LOG/wheels.log" 2>&1
  export PYTHONPATH="$PYTHONPATH:/tmp/gpu_check_site"
fi
if $PY -c "import pytest" 2>/dev/null; then
  TAIL=5 stage tests 45 $PY -m pytest -q -p no:cacheprovider tests/test_backends.py tests/test_csrc.py \
    -k "cuda_graph or cuda_sampling"
else
  echo "== tests: no pytest here (carry .wheels/: pip download --no-deps -d .wheels pytest pluggy iniconfig packaging)"
  record tests 1 0 45
fi

echo "== stages"
cat "$LOG/stages"
echo "total ${SECONDS}s; logs in $LOG"
# (limits: install 30 + max(kernels 75, build 90) + workload 180 + host 75 + tests 45 = 420 s at most)
! grep -qv ' ok ' "$LOG/stages"      # exit 1 when a stage failed or was cut
