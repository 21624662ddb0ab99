#!/usr/bin/env bash
# Bit-exact resume on the CPU: 12 steps in one run against a second run that resumes from the
# first run's step-6 checkpoint and trains steps 7-12: identical losses at every step and
# bit-identical final parameters (compared through `smt export`, whose tensor bytes are the raw
# fp32 parameters).
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
print(f"{len(b)} resumed losses identical; {len(ta)} parameter tensors bit-identical after resume")
PY
