#!/usr/bin/env bash
# The prepared script for a session that has the GPU machine (device time is scarce: 15 minutes per
# session including the machine's start; each part is capped at about 9 minutes by the per-step limits
# below and normally takes far less; run `check` first, `bench` with what is left). Run from the
# repository root there, with device/ carried over (bench/pack_for_device.sh: the cuda preset's smt and
# smt_gpu_tests, stripped and gzip'ed into device/bin/; they are unpacked into build/cuda/ here) and
# torch installed; everything goes under $OUT (default ./gpu_session_out).
#   bash bench/gpu_session.sh check   # correctness: GPU tests, 2 ranks on one GPU, sanitizer,
#                                     # smt train on the GPU vs the CPU, a 65,536-token B1 step
#   bash bench/gpu_session.sh bench   # speed beside PyTorch on the same GPU: B2, B1 (and smt's B1 with
#                                     # flash_dq = atomic), B3, then B1's GPU time per phase (train.profile)
# Each step has its own time limit so one hang cannot eat the call; a summary of exit codes ends
# each part (summary.txt). Nothing here needs ../shared or the network.
set -u
part=${1:?usage: bench/gpu_session.sh check|bench}
OUT=${OUT:-$PWD/gpu_session_out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH="/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
smt=build/cuda/smt
tests=build/cuda/smt_gpu_tests
if [ -f device/bin/smt.gz ]; then  # packed binaries (bench/pack_for_device.sh) win over a stale build/cuda
  mkdir -p build/cuda
  for b in smt smt_gpu_tests; do gunzip -c "device/bin/$b.gz" >"build/cuda/$b" && chmod +x "build/cuda/$b"; done
  echo "binaries of commit $(cat device/bin/COMMIT 2>/dev/null || echo unknown)"
fi
summary="$OUT/summary-$part.txt"
: >"$summary"
step() {  # step NAME SECONDS command...: runs with a time limit, log in $OUT/NAME.log
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout --signal=TERM --kill-after=5 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  printf '%-18s exit %3d  %4ds\n' "$name" "$rc" $((SECONDS - t0)) | tee -a "$summary"
  tail -4 "$OUT/$name.log" | sed 's/^/    /'
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
ldd "$smt" "$tests" | grep "not found" && echo "warning: unresolved libraries" | tee -a "$summary"

case "$part" in
  check)
    step gpu_tests 120 "$tests" --gtest_output="json:$OUT/gpu_tests.json"
    step comm_mpi2 30 mpirun --oversubscribe -np 2 "$tests" --gtest_filter='GpuComm.Staged*'
    step model_mpi2 45 mpirun --oversubscribe -np 2 "$tests" --gtest_filter='*GpuModelParallel*'
    step train_device 140 bash tests/cli/train_device.sh "$smt" .
    # The synthetic task on the GPU; the CPU's held-out accuracy for this config is in bench/RESULTS.md.
    step synthetic_gpu 60 "$smt" train --config configs/synthetic-tiny.ini --device=cuda --run.dir "$OUT/synthetic-gpu"
    grep '"final"' "$OUT/synthetic-gpu/metrics.jsonl" >>"$summary" 2>/dev/null
    # Issue 7: one training step of the B1 model at 65,536 tokens with the local pattern.
    step b1_65k 60 "$smt" train --config configs/bench-b1.ini --run.dir "$OUT/b1-65k" --train.steps=3 \
      --train.seq_len=65536 --train.batch_size=1 --train.log_every=1 --train.profile=true
    grep '"final"' "$OUT/b1-65k/metrics.jsonl" >>"$summary" 2>/dev/null
    CS=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
    step memcheck 90 "$CS" --tool memcheck --error-exitcode 9 "$tests" \
      --gtest_filter='-*LongSequence*:*Large*:GpuAttentionPattern.EveryPattern*'
    ;;
  bench)
    step b2 90 bash bench/run_b2.sh "$OUT/b2"
    step b1 160 bash bench/run_b1.sh "$OUT/b1" 12
    # The same smt run with the flash backward's dq by atomics instead of the deterministic second pass.
    step b1_atomic_dq 45 "$smt" train --config configs/bench-b1.ini --run.dir "$OUT/b1-atomic-dq" --train.steps=12 \
      --train.log_every=1 --train.warmup=2 --flash_dq=atomic
    python3 - "$OUT/b1-atomic-dq/metrics.jsonl" <<'PY' 2>&1 | tee -a "$summary"
import json, statistics, sys
try:
    recs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
    steps = [r["step_s"] for r in recs if r.get("event") == "step" and r["step"] >= 4]
    final = [r for r in recs if r.get("event") == "final"][0]
    ms = statistics.median(steps) * 1e3
    print(f"b1 flash_dq=atomic: median step {ms:.1f} ms, {final['tokens_seen'] / max(1, final['steps']) / ms * 1e3:.0f} tokens/s")
except Exception as e:  # the run failed or timed out: say so in one line
    print(f"b1 flash_dq=atomic: no timing ({type(e).__name__}: {e})")
PY
    step b3 160 bash bench/run_b3.sh "$OUT/b3" --seq 4096,16384
    # Where B1's step time goes (train.profile: CUDA events between the phases; not the timed run above).
    step b1_profile 60 "$smt" train --config configs/bench-b1.ini --run.dir "$OUT/b1-profile" --train.steps=4 \
      --train.log_every=1 --train.profile=true
    grep -A40 "GPU time per step by phase" "$OUT/b1_profile.log" >>"$summary" 2>/dev/null
    ;;
  *) echo "unknown part $part (check | bench)"; exit 2 ;;
esac
cat "$summary"
