#!/usr/bin/env bash
# Numerical guard: a NaN injected into a step's gradient (test hook SMT_TEST_INJECT_NAN_AT_STEP /
# SMT_TEST_INJECT_NAN_TENSOR, see src/app/numeric_guard.h) skips that update: a warning names the
# step and the tensor, metrics.jsonl gets a skipped_step record, parameters and AdamW moments stay
# exactly as they were (checkpoint before == checkpoint after, every tensor), and training goes on.
# NaN from some step on: the run stops after train.max_bad_steps skipped steps with exit code 1,
# naming the last good checkpoint, and writes no checkpoint of a skipped step.
# usage: numeric_guard.sh SMT_BINARY PROJECT_ROOT
set -eu
smt=$1; root=$2
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
args=(--config "$root/configs/synthetic-tiny.ini" --model.d_model=64 --model.expert_hidden=64 --train.seq_len=64
      --model.block_size=16 --model.window=32 --data.synthetic_train=256 --data.synthetic_heldout=64
      --train.log_every=1 --train.threads=1 --train.warmup=3 --checkpoint.keep=100)

# 1. One bad step (5): skipped, the run completes.
SMT_TEST_INJECT_NAN_AT_STEP=5 SMT_TEST_INJECT_NAN_TENSOR=layers.1.wq \
  "$smt" train "${args[@]}" --run.dir "$tmp/one" --train.steps=8 --checkpoint.every=1 >"$tmp/one.log" 2>&1 \
  || { cat "$tmp/one.log"; echo "FAIL: a single non-finite step stopped the run"; exit 1; }
grep -q "step 5: the gradient of layers.1.wq is not finite (NaN or Inf); update skipped" "$tmp/one.log" \
  || { cat "$tmp/one.log"; echo "FAIL: no warning naming step 5 and layers.1.wq"; exit 1; }
# The skipped step leaves no checkpoint; step 4's state is what step 6 starts from.
[ ! -e "$tmp/one/checkpoints/step-00000005.h5" ] || { echo "FAIL: a checkpoint of the skipped step 5 was written"; exit 1; }
# A NaN in the loss is caught too (named "loss"), without a backward pass.
SMT_TEST_INJECT_NAN_AT_STEP=2 SMT_TEST_INJECT_NAN_TENSOR=loss \
  "$smt" train "${args[@]}" --run.dir "$tmp/loss" --train.steps=3 >"$tmp/loss.log" 2>&1 || { cat "$tmp/loss.log"; exit 1; }
grep -q "step 2: the loss is not finite" "$tmp/loss.log" || { cat "$tmp/loss.log"; echo "FAIL: NaN loss not reported"; exit 1; }

# 2. NaN from step 5 on, train.max_bad_steps = 3: stop after step 7, exit 1, last good checkpoint named.
SMT_TEST_INJECT_NAN_AT_STEP=5- SMT_TEST_INJECT_NAN_TENSOR=layers.0.experts.w2 \
  "$smt" train "${args[@]}" --run.dir "$tmp/many" --train.steps=30 --checkpoint.every=2 --train.max_bad_steps=3 \
  >"$tmp/many.log" 2>&1 && { cat "$tmp/many.log"; echo "FAIL: NaN at every step from 5 on did not stop the run"; exit 1; }
rc=$?
[ $rc -eq 1 ] || { cat "$tmp/many.log"; echo "FAIL: exit code $rc, want 1"; exit 1; }
grep -q "stopping: 3 steps in a row (5-7) had a non-finite loss or gradient (train.max_bad_steps = 3); last good checkpoint: .*step-00000004.h5" "$tmp/many.log" \
  || { cat "$tmp/many.log"; echo "FAIL: no stop message naming the last good checkpoint"; exit 1; }
ls "$tmp/many/checkpoints" | grep -q 'step-0000000[5-9]' && { ls "$tmp/many/checkpoints"; echo "FAIL: checkpoint of a bad step"; exit 1; }
python3 - "$tmp" <<'PY'
import json, sys
tmp = sys.argv[1]
recs = [json.loads(l) for l in open(f"{tmp}/many/metrics.jsonl") if l.strip()]
skipped = [r for r in recs if r.get("event") == "skipped_step"]
assert [r["step"] for r in skipped] == [5, 6, 7], skipped
assert all(r["non_finite"] == "layers.0.experts.w2" for r in skipped), skipped
assert [r["bad_in_a_row"] for r in skipped] == [1, 2, 3], skipped
assert [r["step"] for r in recs if r.get("event") == "step"] == [1, 2, 3, 4], recs
one = [json.loads(l) for l in open(f"{tmp}/one/metrics.jsonl") if l.strip()]
assert [r["step"] for r in one if r.get("event") == "skipped_step"] == [5]
assert [r["step"] for r in one if r.get("event") == "step"] == [1, 2, 3, 4, 6, 7, 8]
PY
# 3. Skipped steps change nothing: NaN from step 5 on (max_bad_steps large), SIGTERM once step 6
# was skipped; the graceful stop checkpoints the state after the last skipped step, which must hold
# exactly step 4's parameters and AdamW moments (every tensor's norm, and the parameters bitwise).
SMT_TEST_INJECT_NAN_AT_STEP=5- "$smt" train "${args[@]}" --run.dir "$tmp/stop" --train.steps=100000 \
  --checkpoint.every=4 --train.max_bad_steps=100000 >"$tmp/stop.log" 2>&1 & pid=$!
for _ in $(seq 600); do grep -q "step 6: the gradient" "$tmp/stop.log" && break; sleep 0.05; done
kill -TERM $pid; rc=0; wait $pid || rc=$?
[ $rc -eq 143 ] || { cat "$tmp/stop.log"; echo "FAIL: SIGTERM exit code $rc, want 143"; exit 1; }
stopped=$(sed -n 's/.*SIGTERM: stopped after step \([0-9]*\);.*/\1/p' "$tmp/stop.log")
[ -n "$stopped" ] && [ "$stopped" -ge 6 ] || { cat "$tmp/stop.log"; echo "FAIL: no stop message"; exit 1; }
after=$(printf '%s/stop/checkpoints/step-%08d.h5' "$tmp" "$stopped")
"$smt" inspect --json "$tmp/stop/checkpoints/step-00000004.h5" >"$tmp/a.json"
"$smt" inspect --json "$after" >"$tmp/b.json"
"$smt" export "$tmp/stop/checkpoints/step-00000004.h5" --format safetensors --out "$tmp/a.st" >/dev/null
"$smt" export "$after" --format safetensors --out "$tmp/b.st" >/dev/null
python3 - "$tmp" "$stopped" "$root/tests/cli/lib" <<'PY'
import json, sys
sys.path.insert(0, sys.argv[3])
from safetensors_read import tensors
tmp, stopped = sys.argv[1], int(sys.argv[2])
def norms(p):
    return {t["name"]: t["norm"] for t in json.load(open(p))["tensors"]}
a, b = norms(f"{tmp}/a.json"), norms(f"{tmp}/b.json")
assert len(a) > 30 and any(k.startswith("optimizer/adam_v") for k in a), list(a)[:5]
assert any(v > 0 for k, v in a.items() if k.startswith("optimizer/adam_m")), "no moments at step 4"
diff = [k for k in a if a[k] != b.get(k)]
assert not diff, f"skipped steps 5..{stopped} changed {diff[:5]}"
assert tensors(f"{tmp}/a.st") == tensors(f"{tmp}/b.st"), "parameters differ bitwise"
print(f"skip + warning + skipped_step records + stop after max_bad_steps ok; {len(a)} tensors unchanged by skipped steps 5..{stopped}")
PY
