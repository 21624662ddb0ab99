#!/usr/bin/env bash
# `smt train --device=cuda` end to end on a small config, quick enough for the CUDA emulation in CI
# (cuda-emu preset, tests/cuda_emu): fp32 on the device follows the CPU run (every logged step's loss within
# 1e-4 relative over 6 steps); a device run checkpointed at step 4 and resumed there logs the uninterrupted
# run's losses for steps 5-8 (1e-5 relative: fp32 atomics may reorder sums on a GPU) and its final
# parameters (smt export, 1e-5 relative); --train.profile=true ends the log with the phase table. Without a
# usable device (or without CUDA in the build) the run is refused and the test skips, saying why.
# usage: train_device_resume.sh SMT_BINARY PROJECT_ROOT
set -u
smt=$1; root=$2
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
args=(--config "$root/configs/synthetic-tiny.ini" --model.d_model=64 --model.expert_hidden=64 --train.seq_len=64
      --model.block_size=64 --model.window=32 --data.synthetic_train=256 --data.synthetic_heldout=64
      --train.log_every=1 --train.threads=1 --train.warmup=3)
"$smt" train "${args[@]}" --device=cuda --precision=fp32 --run.dir "$tmp/probe" --train.steps=1 >"$tmp/probe.log" 2>&1
rc=$?
if [ $rc -eq 2 ] && grep -qE "built without CUDA|no CUDA device is usable" "$tmp/probe.log"; then
  echo "SKIP: $(tail -1 "$tmp/probe.log")"
  exit 0
fi
[ $rc -eq 0 ] || { echo "FAIL: device run exited $rc"; cat "$tmp/probe.log"; exit 1; }
set -e
"$smt" train "${args[@]}" --device=cpu --run.dir "$tmp/cpu" --train.steps=6 >/dev/null 2>&1
"$smt" train "${args[@]}" --device=cuda --precision=fp32 --run.dir "$tmp/gpu" --train.steps=6 >/dev/null 2>&1
"$smt" train "${args[@]}" --device=cuda --run.dir "$tmp/full" --train.steps=8 --checkpoint.every=4 --checkpoint.keep=10 \
  --train.profile=true >"$tmp/full.log" 2>&1
grep -q "GPU time per step by phase" "$tmp/full.log" || { echo "FAIL: no phase table"; tail -20 "$tmp/full.log"; exit 1; }
mkdir -p "$tmp/split/checkpoints"
cp "$tmp/full/checkpoints/step-00000004.h5" "$tmp/split/checkpoints/"
printf 'step-00000004.h5\n' >"$tmp/split/checkpoints/latest"
"$smt" train "${args[@]}" --device=cuda --run.dir "$tmp/split" --train.steps=8 --resume >"$tmp/resume.log" 2>&1
grep -q "resuming from .*step-00000004.h5 at step 4" "$tmp/resume.log" || { echo "FAIL: no resume"; cat "$tmp/resume.log"; exit 1; }
"$smt" export "$tmp/full/checkpoints/step-00000008.h5" --format safetensors --out "$tmp/full.st" >/dev/null
"$smt" export "$tmp/split/checkpoints/step-00000008.h5" --format safetensors --out "$tmp/split.st" >/dev/null
python3 - "$tmp" "$root/tests/cli/lib" <<'PY'
import json, sys
tmp = sys.argv[1]
sys.path.insert(0, sys.argv[2])
from safetensors_read import floats
def losses(p):
    return {r["step"]: r["loss"] for r in map(json.loads, open(p)) if r.get("event") == "step"}
def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-30)
cpu, gpu = losses(f"{tmp}/cpu/metrics.jsonl"), losses(f"{tmp}/gpu/metrics.jsonl")
assert sorted(cpu) == sorted(gpu) == list(range(1, 7)), (sorted(cpu), sorted(gpu))
worst = max(rel(gpu[s], cpu[s]) for s in cpu)
assert worst < 1e-4, f"device fp32 losses leave the CPU's: worst relative difference {worst:.2e}"
full, split = losses(f"{tmp}/full/metrics.jsonl"), losses(f"{tmp}/split/metrics.jsonl")
assert sorted(split) == [5, 6, 7, 8], sorted(split)
worst_resume = max(rel(split[s], full[s]) for s in split)
assert worst_resume < 1e-5, f"resumed losses differ: {[(s, full[s], split[s]) for s in split]}"
fa, fb = floats(f"{tmp}/full.st"), floats(f"{tmp}/split.st")
assert fa.keys() == fb.keys()
worst_param = 0.0
for name in fa:
    num = sum((x - y) ** 2 for x, y in zip(fa[name], fb[name])) ** 0.5
    den = sum(x * x for x in fa[name]) ** 0.5 or 1.0
    worst_param = max(worst_param, num / den)
assert worst_param < 1e-5, f"resumed parameters differ: worst norm-relative {worst_param:.2e}"
print(f"ok: device fp32 vs CPU worst step loss difference {worst:.2e}; resume at step 4: losses {worst_resume:.2e}, "
      f"parameters {worst_param:.2e} (norm-relative)")
PY
echo "ok: phase table present; device training, checkpoint and resume agree"
