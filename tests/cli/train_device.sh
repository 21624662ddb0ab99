#!/usr/bin/env bash
# `smt train` with device = cuda. Where it cannot run (a build without CUDA, or no usable GPU) it is
# refused with exit 2 and one message before anything in the run folder changes. Where a GPU is
# usable, short runs on it must follow the CPU run of the same config: with precision = fp32 the same
# step-1 loss (1e-4 relative: sums in a different order) and a held-out accuracy within 0.06; with the
# GPU's default bf16 GEMM operands a step-1 loss within 2e-2 and an accuracy within 0.08.
# usage: train_device.sh SMT_BINARY PROJECT_ROOT
set -u
smt=$1; root=$2
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
small=(--model.d_model=64 --model.expert_hidden=128 --train.seq_len=128 --data.synthetic_train=512
       --data.synthetic_heldout=128 --train.threads=1 --train.steps=60 --train.log_every=1)
mkdir -p "$tmp/run"
echo '{"event":"step","step":1,"sentinel":true}' >"$tmp/run/metrics.jsonl"
cp "$tmp/run/metrics.jsonl" "$tmp/before"
"$smt" train --config "$root/configs/synthetic-tiny.ini" --run.dir "$tmp/run" "${small[@]}" --device=cuda \
  >"$tmp/out" 2>"$tmp/err"
rc=$?
if [ $rc -eq 2 ]; then
  lines=$(wc -l <"$tmp/err")
  if ! grep -qE "built without CUDA|no CUDA device is usable" "$tmp/err" || [ "$lines" -ne 1 ]; then
    echo "FAIL: exit 2 but not the expected single message:"; cat "$tmp/err"; exit 1
  fi
  cmp -s "$tmp/before" "$tmp/run/metrics.jsonl" || { echo "FAIL: the refused run changed metrics.jsonl"; exit 1; }
  [ ! -e "$tmp/run/config.ini" ] || { echo "FAIL: the refused run wrote config.ini"; exit 1; }
  echo "ok: refused as expected: $(cat "$tmp/err")"
  echo "SKIP: no usable GPU here, so the CPU-vs-GPU training comparison did not run"
  exit 0
fi
[ $rc -eq 0 ] || { echo "FAIL: device=cuda exited $rc"; cat "$tmp/err"; exit 1; }
grep -q "cuda device" "$tmp/err" "$tmp/out" || { echo "FAIL: the log does not name the cuda device"; cat "$tmp/err"; exit 1; }
grep -q "bf16 GEMM operands" "$tmp/err" "$tmp/out" || { echo "FAIL: device=cuda did not default to bf16"; exit 1; }
"$smt" train --config "$root/configs/synthetic-tiny.ini" --run.dir "$tmp/fp32" "${small[@]}" --device=cuda \
  --precision=fp32 >"$tmp/fp32.log" 2>&1 || { echo "FAIL: the GPU fp32 run failed"; cat "$tmp/fp32.log"; exit 1; }
"$smt" train --config "$root/configs/synthetic-tiny.ini" --run.dir "$tmp/cpu" "${small[@]}" --device=cpu \
  >"$tmp/cpu.log" 2>&1 || { echo "FAIL: the CPU run failed"; cat "$tmp/cpu.log"; exit 1; }
# label metrics.jsonl max-step-1-relative-loss-difference max-accuracy-difference, against the CPU run
python3 - "$tmp/cpu/metrics.jsonl" fp32 "$tmp/fp32/metrics.jsonl" 1e-4 0.06 bf16 "$tmp/run/metrics.jsonl" 2e-2 0.08 <<'PY'
import json, sys
def load(p):
    recs = [json.loads(l) for l in open(p) if l.strip()]
    return [r for r in recs if r.get("event") == "step"], [r for r in recs if r.get("event") == "final"][0]
cs, cf = load(sys.argv[1])
bad = 0
for label, path, max_rel, max_acc in zip(*[iter(sys.argv[2:])] * 4):
    gs, gf = load(path)
    rel = abs(gs[0]["loss"] - cs[0]["loss"]) / abs(cs[0]["loss"])
    acc = abs(gf["eval_accuracy"] - cf["eval_accuracy"])
    ok = rel < float(max_rel) and acc <= float(max_acc)
    bad += not ok
    print(f"{'ok' if ok else 'FAIL'} {label}: step-1 loss gpu {gs[0]['loss']:.6f} cpu {cs[0]['loss']:.6f} (rel {rel:.2e}, "
          f"max {max_rel}); held-out accuracy gpu {gf['eval_accuracy']:.4f} cpu {cf['eval_accuracy']:.4f} (max diff {max_acc})")
sys.exit(1 if bad else 0)
PY
