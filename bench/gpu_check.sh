#!/usr/bin/env bash
# The one GPU check: run from the repository root on the GPU machine with the CUDA build folder
# build/cuda carried over (no network needed). Prints the device, checks that the test binary's shared
# libraries resolve, runs every GPU op test against its CPU reference and writes
# $OUT/gpu_tests.json (GoogleTest JSON) and $OUT/gpu_tests.log. Exits with the test binary's status
# (124 if it ran past the time limit). Whole run: well under 3 minutes.
set -u -o pipefail

OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
export LD_LIBRARY_PATH="/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
BIN="build/cuda/smt_gpu_tests"

echo "== nvidia-smi -L"
nvidia-smi -L || echo "(nvidia-smi failed)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true

if [[ ! -x "$BIN" ]]; then
  echo "error: $BIN not found or not executable (build with -DSMT_CUDA=ON into build/cuda)" | tee "$OUT/gpu_tests.log"
  exit 2
fi
missing=$(ldd "$BIN" 2>/dev/null | grep "not found" || true)
if [[ -n "$missing" ]]; then
  echo "warning: unresolved shared libraries:"
  echo "$missing"
fi

echo "== $BIN"
# 170 s cap so that a hung kernel cannot eat the machine's time; normal runs take seconds.
timeout --signal=TERM --kill-after=10 170 "$BIN" --gtest_output="json:$OUT/gpu_tests.json" 2>&1 | tee "$OUT/gpu_tests.log"
status=${PIPESTATUS[0]}
echo "== smt_gpu_tests exit status: $status"
# On the GPU machine a skipped run is a failure: the binary skips when CUDA cannot reach a device
# (e.g. a driver older than the CUDA 13 runtime it was built with).
if [[ "$status" -eq 0 ]] && grep -q "no CUDA device" "$OUT/gpu_tests.log"; then
  echo "error: the tests were skipped (no usable CUDA device, see above); counting this as a failure"
  exit 3
fi
exit "$status"
