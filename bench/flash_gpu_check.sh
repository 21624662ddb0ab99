#!/usr/bin/env bash
# The GPU checks of the flash attention kernels in one short run (for a session with a GPU):
#   1. correctness: smt_gpu_tests FlashGpu.* (every pattern, both head dims, both dq modes, against the
#      double CPU reference with the bf16-reference criterion) and the fp32 reference kernels' Gpu.Attention*;
#   2. speed: smt bench attention over the B3 grid with the flash kernel (atomic dq), the deterministic dq at
#      4k, and the fp32 reference kernels at 4k for comparison. Every row is measured, nothing is estimated.
#   bash bench/flash_gpu_check.sh BIN_DIR OUT_DIR
# BIN_DIR holds smt and smt_gpu_tests of the cuda preset (plain or gzip'ed as smt.gz / smt_gpu_tests.gz, so
# that stripped binaries fit the device machine's 64 MiB transfer). Logs and JSON rows land in OUT_DIR.
set -u
bin=${1:?usage: bench/flash_gpu_check.sh BIN_DIR OUT_DIR}
out=${2:?usage: bench/flash_gpu_check.sh BIN_DIR OUT_DIR}
mkdir -p "$out"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
for b in smt smt_gpu_tests; do
  if [ -f "$bin/$b.gz" ]; then gunzip -c "$bin/$b.gz" >"$work/$b"; else cp "$bin/$b" "$work/$b"; fi
  chmod +x "$work/$b"
done
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
status=0
"$work/smt_gpu_tests" --gtest_filter='FlashGpu.*:Gpu.Attention*' 2>&1 | tee "$out/tests.txt" | tail -40
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
run_bench() {  # name, then smt bench attention flags
  local name=$1; shift
  echo "== bench $name: $*"
  timeout 300 "$work/smt" bench attention --device cuda --json "$out/bench_$name.jsonl" "$@" 2>&1 | tee "$out/bench_$name.txt"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
}
run_bench flash --kernel flash --seq 4096,16384,65536 --head-dim 64,128 --warmup 2 --repeat 5
run_bench flash_det --kernel flash --dq deterministic --seq 4096 --head-dim 64,128 --warmup 2 --repeat 5
run_bench reference --kernel reference --seq 4096 --head-dim 64 --warmup 1 --repeat 3
exit $status
