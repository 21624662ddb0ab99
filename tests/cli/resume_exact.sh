#!/usr/bin/env bash
# Bit-exact resume on the CPU: 12 steps in one run against a second run that resumes from the
# first run's step-6 checkpoint and trains steps 7-12: identical losses at every step and
# bit-identical final parameters (compared through `smt export`, whose tensor bytes are the raw
# fp32 parameters). Also bit-exact reruns: a second fresh run with the same seed and threads gives
# the same parameters bit for bit, and one with another seed does not (the comparison can fail).
# usage: resume_exact.sh SMT_BINARY PROJECT_ROOT
set -eu
smt=$1; root=$2
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
args=(--config "$root/configs/synthetic-tiny.ini" --model.d_model=64 --model.expert_hidden=64 --train.seq_len=64
      --model.block_size=16 --model.window=32 --data.synthetic_train=256 --data.synthetic_heldout=64
      --train.log_every=1 --train.threads=2 --train.warmup=3)
"$smt" train "${args[@]}" --run.dir "$tmp/full" --train.steps=12 --checkpoint.every=3 --checkpoint.keep=10 >/dev/null
mkdir -p "$tmp/split/checkpoints"
cp "$tmp/full/checkpoints/step-00000006.h5" "$tmp/split/checkpoints/"
printf 'step-00000006.h5\n' >"$tmp/split/checkpoints/latest"
"$smt" train "${args[@]}" --run.dir "$tmp/split" --train.steps=12 --resume >"$tmp/resume.log"
grep -q "resuming from .*step-00000006.h5 at step 6" "$tmp/resume.log" || { cat "$tmp/resume.log"; exit 1; }
"$smt" train "${args[@]}" --run.dir "$tmp/again" --train.steps=12 --checkpoint.every=12 >/dev/null
"$smt" train "${args[@]}" --run.dir "$tmp/seed2" --train.steps=12 --checkpoint.every=12 --seed=2 >/dev/null
for r in again seed2; do
  "$smt" export "$tmp/$r/checkpoints/step-00000012.h5" --format safetensors --out "$tmp/$r.st" >/dev/null
done
"$smt" export "$tmp/full/checkpoints/step-00000012.h5" --format safetensors --out "$tmp/full.st" >/dev/null
"$smt" export "$tmp/split/checkpoints/step-00000012.h5" --format safetensors --out "$tmp/split.st" >/dev/null
python3 - "$tmp" "$root/tests/cli/lib" <<'PY'
import json, sys
tmp = sys.argv[1]
sys.path.insert(0, sys.argv[2])
from safetensors_read import tensors
def losses(p):
    return {r["step"]: r["loss"] for r in map(json.loads, open(p)) if r.get("event") == "step"}
a, b = losses(f"{tmp}/full/metrics.jsonl"), losses(f"{tmp}/split/metrics.jsonl")
assert sorted(a) == list(range(1, 13)) and sorted(b) == list(range(7, 13)), (sorted(a), sorted(b))
diff = [s for s in b if a[s] != b[s]]
assert not diff, f"losses differ at steps {diff}: {[(a[s], b[s]) for s in diff]}"
ta, tb = tensors(f"{tmp}/full.st"), tensors(f"{tmp}/split.st")
assert ta.keys() == tb.keys() and len(ta) > 10
bad = [k for k in ta if ta[k] != tb[k]]
assert not bad, f"parameters differ bitwise: {bad}"
ragain, rseed2 = tensors(f"{tmp}/again.st"), tensors(f"{tmp}/seed2.st")
bad = [k for k in ta if ta[k] != ragain[k]]
assert ragain.keys() == ta.keys() and not bad, f"a rerun with the same seed differs bitwise: {bad}"
same = [k for k in ta if ta[k] == rseed2[k]]
assert len(same) < len(ta), "another seed gave bit-identical parameters: the comparison cannot fail"
print(f"{len(b)} resumed losses identical; {len(ta)} parameter tensors bit-identical after resume "
      f"and in a rerun; another seed differs in {len(ta) - len(same)} tensors")
PY
