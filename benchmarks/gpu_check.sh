#!/usr/bin/env bash
# The GPU check of issue 24, from a fresh checkout on a CUDA machine, in <= 8 minutes:
# its own venv with the gpu extra (make setup picks it where nvidia-smi answers), the
# gpu-marked tests (compiled Triton kernels against the torch reference), the kernels
# benchmark (Triton vs SDPA vs the memory-bandwidth floor) and benchmarks/gpu_check.py
# (scoring on CUDA, 10^6-event summarization, FAISS GPU top-k). Writes
# benchmarks/out/gpu_check.{json,md} and benchmarks/out/kernels.json; exits non-zero if a
# step failed (the later steps still run).
set -u
cd "$(dirname "$0")/.."
nvidia-smi -L || { echo "gpu_check: no NVIDIA GPU here"; exit 2; }
# PY=/path/to/python: an environment that already has the project's dependencies with a
# CUDA torch (a machine with no package index); else make setup builds .venv.
if [ -z "${PY:-}" ]; then
  timeout 300 make setup || exit 1
  PY=.venv/bin/python
fi
mkdir -p benchmarks/out
rc=0
VISTA_GPU_TESTS=1 timeout 180 $PY -m pytest -q -m gpu tests/kernels/test_gpu.py \
  --junitxml benchmarks/out/gpu_tests.xml || rc=1
timeout 120 $PY benchmarks/kernels.py --quick --out benchmarks/out || rc=1
timeout 180 $PY benchmarks/gpu_check.py || rc=1
echo "gpu_check: done (rc=$rc); see benchmarks/out/gpu_check.md"
exit $rc
