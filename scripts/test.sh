#!/usr/bin/env bash
# The whole test suite on a fresh machine: install, build the cpu preset, run ctest (unit tests,
# PyTorch parity, LIAR reader, CLI end-to-end). With nvcc present it also compiles the cuda preset.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
bash scripts/install-deps.sh
cmake --preset cpu >/dev/null
cmake --build --preset cpu -j"$(nproc)"
ctest --preset cpu --timeout 900
if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
  echo "== cuda preset (compile only: no GPU here) =="
  cmake --preset cuda >/dev/null
  cmake --build --preset cuda -j"$(nproc)"
fi
