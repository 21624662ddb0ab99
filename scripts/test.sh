#!/usr/bin/env bash
# The whole test suite on a fresh machine: install, build the cpu preset, run ctest (unit tests,
# PyTorch parity, LIAR reader, CLI end-to-end); the same suite under ASan + UBSan (asan preset);
# 30 s of each fuzz target. With the CUDA toolkit present it also compiles the cuda preset and runs the
# GPU tests on the CPU emulation of the CUDA backend (cuda-emu preset, tests/cuda_emu).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
bash scripts/install-deps.sh
cmake --preset cpu >/dev/null
cmake --build --preset cpu -j"$(nproc)"
ctest --preset cpu --timeout 900
echo "== asan preset: the whole CPU suite under AddressSanitizer + UBSan =="
cmake --preset asan >/dev/null
cmake --build --preset asan -j"$(nproc)"
ctest --preset asan --timeout 900
if command -v clang++ >/dev/null 2>&1; then
  echo "== fuzzing: 30 s per target (scripts/fuzz.sh) =="
  bash scripts/fuzz.sh 30
else
  echo "== fuzzing skipped: clang++ not installed =="
fi
if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
  echo "== cuda preset (compile only: no GPU here) =="
  cmake --preset cuda >/dev/null
  cmake --build --preset cuda -j"$(nproc)"
fi
if [ -f /usr/local/cuda/include/cuda_runtime.h ]; then
  echo "== cuda-emu preset: the CUDA sources on the CPU emulation (tests/cuda_emu): smt_gpu_tests without a GPU =="
  cmake --preset cuda-emu >/dev/null
  cmake --build --preset cuda-emu -j"$(nproc)" --target smt smt_gpu_tests
  ctest --preset cuda-emu --timeout 900
fi
