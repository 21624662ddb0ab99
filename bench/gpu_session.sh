#!/usr/bin/env bash
# The prepared script for a session that has the GPU machine. Device time is scarce (15 minutes per
# session, the machine's start included; one call runs at most 10 minutes; a warm machine is given back
# 30 s after a call), so ONE call should do the work:
#   bash bench/gpu_session.sh all [SECONDS]   # every step below in priority order within SECONDS (default 540;
#                                             # give the device call a timeout_s at least SECONDS + 30)
#   bash bench/gpu_session.sh check|bench [SECONDS]   # the correctness or the speed steps alone
# Run from the repository root there, with device/ carried over (bench/pack_for_device.sh: the cuda
# preset's smt and smt_gpu_tests, stripped and gzip'ed into device/bin/; they are unpacked into build/cuda/
# here) and torch installed. Nothing here needs ../shared or the network.
#
# Steps (check: c, bench: b), in the order `all` runs them, each with its own time limit (a hang cannot eat
# the call) cut to what is left of SECONDS; a step that would get under 15 s is skipped, said in the summary:
#   c gpu_tests     every GPU op and the model against the CPU (smt_gpu_tests)
#   b b2            MoE layer forward+backward beside torch._grouped_mm (bench/run_b2.sh)
#   b b1            training tokens/s beside PyTorch eager and torch.compile (bench/run_b1.sh)
#   b b3            block-sparse attention beside SDPA and FlexAttention (bench/run_b3.sh, 4k and 16k)
#   c comm_mpi2, model_mpi2   two ranks on one GPU through the MPI backend
#   c synthetic_gpu `smt train` on the GPU, the synthetic task (held-out accuracy in the final record)
#   c b1_65k        one 65,536-token step of the B1 model with the local pattern (memory in the record)
#   b b1_atomic_dq  smt's B1 with flash_dq = atomic
#   b b1_profile    B1's GPU time per phase (train.profile)
#   c train_device  tests/cli/train_device.sh: fp32 = CPU, bf16 close, eval, 2 ranks vs 1
#   c memcheck      compute-sanitizer over the GPU tests (all but the long ones)
#
# What comes back: the device tool returns at most 8 files from $OUT, so logs and run directories are
# written under a work folder and packed into $OUT/logs.tar.gz after every step (checkpoints left out);
# $OUT/summary.txt holds the card, each step's exit code and time, and the headline lines. The summary is
# also printed last, so the call's output tail carries it even if nothing else comes back. The exit status is
# non-zero when a step that ran failed (skipped steps do not count).
set -u
part=${1:?usage: bench/gpu_session.sh all|check|bench [SECONDS]}
budget=${2:-540}
case "$part" in all | check | bench) ;; *) echo "unknown part $part (all | check | bench)" >&2; exit 2 ;; esac
[[ "$budget" =~ ^[0-9]+$ ]] || { echo "SECONDS must be a whole number, not '$budget'" >&2; exit 2; }
budget=$((10#$budget))  # 0540 is 540, not octal
deadline=$((SECONDS + budget))  # counted from here: unpacking and the library search are inside it
OUT=${OUT:-$PWD/gpu_session_out}
work=$PWD/gpu_session_work  # this call's logs and runs only: a rerun on a warm machine starts it afresh
rm -rf "$work"
mkdir -p "$OUT" "$work"
export LD_LIBRARY_PATH="/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 PYTHONUNBUFFERED=1 GTEST_COLOR=no
smt=build/cuda/smt
tests=build/cuda/smt_gpu_tests
if [ -f device/bin/smt.gz ]; then  # packed binaries (bench/pack_for_device.sh) win over a stale build/cuda
  mkdir -p build/cuda
  for b in smt smt_gpu_tests; do gunzip -c "device/bin/$b.gz" >"build/cuda/$b" && chmod +x "build/cuda/$b"; done
fi
# The binaries were linked on Debian 12. A shared library the loader cannot find there (NCCL or cuBLAS may
# live only in the Python venv's nvidia-* wheels) is looked for once under the usual roots and its folder put
# on LD_LIBRARY_PATH; what stays missing is named in the summary.
for lib in $(ldd "$smt" "$tests" 2>/dev/null | awk '/not found/ {print $1}' | sort -u); do
  found=$(find /usr/local /usr/lib /opt -name "$lib" 2>/dev/null | head -1)
  [ -z "$found" ] || export LD_LIBRARY_PATH="$(dirname "$found"):$LD_LIBRARY_PATH"
done
summary="$OUT/summary.txt"
failed=""  # the steps that ran and exited non-zero
{
  echo "gpu_session $part, binaries of commit $(cat device/bin/COMMIT 2>/dev/null || echo unknown), ${budget}s"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
  ldd "$smt" "$tests" 2>&1 | grep "not found" | sed 's/^/warning: unresolved library: /'
} | tee "$summary"

pack() {  # everything under $work but checkpoints, into one file (replaced atomically)
  tar czf "$OUT/logs.tar.gz.part" -C "$work" --exclude=checkpoints . 2>/dev/null
  [ $? -le 1 ] && mv "$OUT/logs.tar.gz.part" "$OUT/logs.tar.gz"  # 1: a file changed while read, archive written
}
note() { echo "$*" | tee -a "$summary"; }
# step NAME SECONDS command...: runs with a time limit cut to what is left, log in $work/NAME.log. A step
# left under half its limit is skipped; one that runs out of a cut limit is "cut short", not failed.
step() {
  local name=$1 limit=$2; shift 2
  local left=$((deadline - SECONDS - 10))  # 10 s for the timeout's 5 s grace and the last pack
  if [ "$left" -lt 15 ] || [ "$left" -lt $((limit / 2)) ]; then
    note "$(printf '%-14s skipped: %ds left of the %ds, the step takes up to %ds' "$name" $((left < 0 ? 0 : left)) \
      "$budget" "$limit")"
    return 0
  fi
  local cut=""
  [ "$limit" -le "$left" ] || { cut=" cut from ${limit}s"; limit=$left; }
  local t0=$SECONDS
  timeout --signal=TERM --kill-after=5 "$limit" "$@" >"$work/$name.log" 2>&1
  local rc=$?
  if [ -n "$cut" ] && { [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; }; then  # out of time it did not get
    cut="$cut: cut short, not counted as failed"
  elif [ "$rc" -ne 0 ]; then
    failed="$failed $name"
  fi
  note "$(printf '%-14s exit %3d  %4ds (limit %ds%s)' "$name" "$rc" $((SECONDS - t0)) "$limit" "$cut")"
  tail -4 "$work/$name.log" | awk '{print "    " $0}'  # awk: a last line cut off without its newline gets one
  pack
}
final_record() {  # the run's last metrics record (held-out accuracy, memory, tokens) into the summary
  grep '"final"' "$work/$1/metrics.jsonl" 2>/dev/null | sed "s/^/    $1: /" | tee -a "$summary"
}
run_in() {  # run_in PART: is this step in the part being run?
  [ "$part" = all ] || [ "$part" = "$1" ]
}

if run_in check; then
  step gpu_tests 150 "$tests" --gtest_output="json:$work/gpu_tests.json"
  grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$work/gpu_tests.log" 2>/dev/null | head -20 | sed 's/^/    /' | tee -a "$summary"
fi
if run_in bench; then
  step b2 90 bash bench/run_b2.sh "$work/b2"
  sed 's/^/    /' "$work/b2/compare.txt" 2>/dev/null | tee -a "$summary"
  step b1 160 bash bench/run_b1.sh "$work/b1" 12
  sed 's/^/    /' "$work/b1/compare.txt" 2>/dev/null | tee -a "$summary"
  step b3 160 bash bench/run_b3.sh "$work/b3" --seq 4096,16384
  sed 's/^/    /' "$work/b3/compare.txt" 2>/dev/null | tee -a "$summary"
fi
if run_in check; then
  step comm_mpi2 30 mpirun --oversubscribe -np 2 "$tests" --gtest_filter='GpuComm.Staged*'
  step model_mpi2 45 mpirun --oversubscribe -np 2 "$tests" --gtest_filter='*GpuModelParallel*'
  # The synthetic task on the GPU; the CPU's held-out accuracy for this config is in bench/RESULTS.md.
  step synthetic_gpu 60 "$smt" train --config configs/synthetic-tiny.ini --device=cuda --run.dir "$work/synthetic-gpu"
  final_record synthetic-gpu
  # Issue 7: training steps of the B1 model at 65,536 tokens with the local pattern.
  step b1_65k 60 "$smt" train --config configs/bench-b1.ini --run.dir "$work/b1-65k" --train.steps=3 \
    --train.seq_len=65536 --train.batch_size=1 --train.log_every=1 --train.profile=true
  final_record b1-65k
fi
if run_in bench; then
  # The same smt run with the flash backward's dq by atomics instead of the deterministic second pass.
  step b1_atomic_dq 45 "$smt" train --config configs/bench-b1.ini --run.dir "$work/b1-atomic-dq" --train.steps=12 \
    --train.log_every=1 --train.warmup=2 --flash_dq=atomic
  [ ! -f "$work/b1_atomic_dq.log" ] || python3 - "$work/b1-atomic-dq/metrics.jsonl" <<'PY' 2>&1 | sed 's/^/    /' | tee -a "$summary"
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
  # Where B1's step time goes (train.profile: CUDA events between the phases; not the timed run above).
  step b1_profile 60 "$smt" train --config configs/bench-b1.ini --run.dir "$work/b1-profile" --train.steps=4 \
    --train.log_every=1 --train.profile=true
  grep -A40 "GPU time per step by phase" "$work/b1_profile.log" 2>/dev/null | sed 's/^/    /' | tee -a "$summary"
fi
if run_in check; then
  step train_device 140 bash tests/cli/train_device.sh "$smt" .
  CS=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  step memcheck 90 "$CS" --tool memcheck --error-exitcode 9 "$tests" \
    --gtest_filter='-*LongSequence*:*Large*:GpuAttentionPattern.EveryPattern*'
fi
[ -z "$failed" ] || note "failed:$failed"
pack
echo "---- summary ($OUT/summary.txt; logs in $OUT/logs.tar.gz) ----"
cat "$summary"
[ -z "$failed" ]
