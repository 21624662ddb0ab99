#!/usr/bin/env bash
# `smt train` with device = cuda. Where it cannot run (a build without CUDA, or no usable GPU) it is
# refused with exit 2 and one message before anything in the run folder changes. Where a GPU is
# usable, short runs on it must follow the CPU run of the same config: with precision = fp32 the same
# step-1 loss (1e-4 relative: sums in a different order) and a held-out accuracy within 0.06; with the
# GPU's default bf16 GEMM operands a step-1 loss within 2e-2 and an accuracy within 0.08. Under
# mpirun -np 2 (both ranks on GPU 0: MPI staged through pinned memory, since NCCL refuses one GPU for
# two ranks) fp32 training with a capacity must log the one-process GPU run's losses (1e-4 relative,
# every logged step) with rows exchanged between the ranks; parallel.device_comm = nccl is refused
# there before anything is written. `smt eval --device cuda` on the CPU run's checkpoint must give
# the CPU's held-out accuracy (at most 2 examples apart) and NLL (1e-3 relative).
# usage: train_device.sh SMT_BINARY PROJECT_ROOT
set -u
smt=$1; root=$2
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
tiny=(--model.d_model=64 --model.expert_hidden=128 --train.seq_len=128 --data.synthetic_train=512
      --data.synthetic_heldout=128 --train.threads=1 --train.log_every=1)
small=("${tiny[@]}" --train.steps=60)
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
[ $? -eq 0 ] || exit 1
# smt eval --device cuda on the CPU run's checkpoint: the CPU's predictions (fp32 on both sides).
ck=$(ls "$tmp"/cpu/checkpoints/step-*.h5 | tail -1)
for dev in cpu cuda; do
  "$smt" eval --checkpoint "$ck" --data synthetic --device "$dev" --out "$tmp/eval-$dev" >"$tmp/eval-$dev.log" 2>&1 \
    || { echo "FAIL: smt eval --device $dev failed"; tail -5 "$tmp/eval-$dev.log"; exit 1; }
done
python3 - "$tmp/eval-cpu/report.json" "$tmp/eval-cuda/report.json" <<'PY'
import json, sys
c, g = (json.load(open(p)) for p in sys.argv[1:])
vc, vg = c["views"]["synthetic"], g["views"]["synthetic"]
ok = g["device"] == "cuda" and abs(vc["accuracy"] - vg["accuracy"]) <= 2 / vc["n"] and abs(vc["nll"] - vg["nll"]) <= 1e-3 * abs(vc["nll"])
print(f"{'ok' if ok else 'FAIL'} smt eval --device cuda vs cpu: accuracy {vg['accuracy']:.4f} vs {vc['accuracy']:.4f} "
      f"(at most 2 of {vc['n']} examples apart), NLL {vg['nll']:.6f} vs {vc['nll']:.6f} (1e-3 relative)")
sys.exit(0 if ok else 1)
PY
[ $? -eq 0 ] || exit 1
command -v mpirun >/dev/null || { echo "SKIP: mpirun not installed, so the two-rank GPU run did not run"; exit 0; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# Ranks share GPU 0 here whatever the machine has, so MPI staged is named (auto would pick NCCL on a
# machine whose ranks have a GPU each).
cap=("${tiny[@]}" --precision=fp32 --model.capacity_factor=1.0 --train.steps=20)
"$smt" train --config "$root/configs/synthetic-tiny.ini" --run.dir "$tmp/gpu1" "${cap[@]}" \
  --device=cuda >"$tmp/gpu1.log" 2>&1 || { echo "FAIL: the one-rank GPU run failed"; cat "$tmp/gpu1.log"; exit 1; }
CUDA_VISIBLE_DEVICES=0 timeout 600 mpirun --oversubscribe -np 2 -x CUDA_VISIBLE_DEVICES "$smt" train \
  --config "$root/configs/synthetic-tiny.ini" --run.dir "$tmp/gpu2" "${cap[@]}" --device=cuda \
  --parallel.device_comm=mpi >"$tmp/gpu2.log" 2>&1 \
  || { echo "FAIL: mpirun -np 2 --device=cuda exited $?"; tail -20 "$tmp/gpu2.log"; exit 1; }
grep -q "over mpi+staged" "$tmp/gpu2.log" || { echo "FAIL: two ranks on one GPU did not use the staged MPI backend"; exit 1; }
CUDA_VISIBLE_DEVICES=0 timeout 300 mpirun --oversubscribe -np 2 -x CUDA_VISIBLE_DEVICES "$smt" train \
  --config "$root/configs/synthetic-tiny.ini" --run.dir "$tmp/nccl" "${cap[@]}" --device=cuda \
  --parallel.device_comm=nccl >"$tmp/nccl.log" 2>&1
rc=$?
# Both ranks on GPU 0: NCCL must be refused.
[ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q "NCCL refuses two ranks on one device" "$tmp/nccl.log" \
  || { echo "FAIL: parallel.device_comm = nccl on one GPU: exit $rc"; tail -5 "$tmp/nccl.log"; exit 1; }
[ ! -e "$tmp/nccl/config.ini" ] || { echo "FAIL: the refused NCCL run wrote config.ini"; exit 1; }
echo "ok: parallel.device_comm = nccl on one GPU refused (exit $rc, usage error aborts the job)"
python3 - "$tmp/gpu1/metrics.jsonl" "$tmp/gpu2/metrics.jsonl" <<'PY'
import json, sys
def steps(p):
    return [r for r in (json.loads(l) for l in open(p) if l.strip()) if r.get("event") == "step"]
one, two = steps(sys.argv[1]), steps(sys.argv[2])
assert len(one) == len(two) == 20, (len(one), len(two))
worst = max(abs(a["loss"] - b["loss"]) / abs(a["loss"]) for a, b in zip(one, two))
sent = sum(sum(r["parallel"]["rows_sent"]) for r in two)
dropped = [sum(l["dropped"] for l in r["moe_layers"]) for r in (one[0], two[0])]
ok = worst < 1e-4 and sent > 0
print(f"{'ok' if ok else 'FAIL'} 2 ranks on one GPU (staged MPI) vs 1 rank: worst relative loss difference over "
      f"20 steps {worst:.2e} (max 1e-4); rows sent between ranks {sent}; step-1 dropped 1 rank {dropped[0]}, "
      f"2 ranks {dropped[1]}")
sys.exit(0 if ok else 1)
PY
