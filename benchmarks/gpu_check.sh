#!/usr/bin/env bash
# One call on a GPU machine (under 8 minutes on an H200): build the CUDA extension, run the CUDA
# tests, the kernel benchmarks and the end-to-end decode benchmark; prints short tables.
#   bash benchmarks/gpu_check.sh
# The device image has torch and triton but no pytest: carry wheels in .wheels/ (pip download
# pytest pluggy iniconfig packaging -d .wheels) and they are installed from there.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
if [ -d .wheels ]; then pip install -q --no-index --find-links .wheels pytest 2>&1 | tail -1; fi
echo "== install (pure Python first, so a failed CUDA build cannot stop the rest)"
TTS_ENGINE_NO_CUDA_EXT=1 pip install -q -e . --no-deps --no-build-isolation 2>&1 | tail -2
timeout 240 python setup.py -q build_ext --inplace 2>&1 | tail -5
python -c "from tts_engine import _C; print('tts_engine._C built')" || echo "tts_engine._C NOT built (torch fallback)"
echo "== CUDA tests"
timeout 240 python -m pytest -q -x tests/test_kernels.py tests/test_csrc.py 2>&1 | tail -5
echo "== kernel benchmarks"
timeout 120 python benchmarks/bench_kernels.py
echo "== end to end"
timeout 150 python benchmarks/bench_gpu_e2e.py
