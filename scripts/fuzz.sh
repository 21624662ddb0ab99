#!/usr/bin/env bash
# Build the libFuzzer targets (clang, ASan + UBSan; cmake preset `fuzz`) and run each for
# SECONDS (default 30) on its committed seed corpus (tests/fuzz/corpus/<target>/), one at a time.
# New interesting inputs go to build/fuzz/corpus/<target>/ (not committed); a crash, hang (> 10 s
# per input), leak or sanitizer report stops with the reproducer in build/fuzz/artifacts/ and a
# non-zero exit code. Reproduce: build/fuzz/fuzz_<target> FILE.
# usage: scripts/fuzz.sh [SECONDS] [TARGET...]     TARGET: liar config checkpoint (default all)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}; shift || true
targets=("$@"); [ ${#targets[@]} -gt 0 ] || targets=(liar config checkpoint)
command -v clang++ >/dev/null || { echo "fuzz.sh: clang++ not found (apt-get install clang libclang-rt-dev libomp-dev)"; exit 1; }
cmake --preset fuzz >/dev/null
cmake --build --preset fuzz -j"$(nproc)" --target "${targets[@]/#/fuzz_}"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$PWD/tests/sanitizers/lsan.supp}  # HDF5's own leaks
for t in "${targets[@]}"; do
  work=build/fuzz/corpus/$t; art=build/fuzz/artifacts/$t/
  mkdir -p "$work" "$art"
  echo "== fuzz_$t: ${seconds}s =="
  # -timeout: one input taking > 10 s is a hang; -rss_limit_mb: an input needing > 2 GB is a bug too.
  max_len=65536; [ "$t" = checkpoint ] && max_len=262144
  log=build/fuzz/fuzz_$t.log
  rc=0
  build/fuzz/fuzz_"$t" "$work" "tests/fuzz/corpus/$t" -max_total_time="$seconds" -timeout=10 \
    -rss_limit_mb=2048 -max_len=$max_len -artifact_prefix="$art" -print_final_stats=1 >"$log" 2>&1 || rc=$?
  grep -E "^(#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|stat::peak_rss_mb)" "$log" || true
  [ $rc = 0 ] || { tail -60 "$log"; echo "fuzz_$t FAILED (exit $rc; reproducer under $art, log $log)"; exit 1; }
done
