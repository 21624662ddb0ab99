#!/usr/bin/env bash
# A short training run through the CLI: it finishes, writes the resolved config and
# metrics.jsonl with the documented keys, and the loss falls.
# usage: train_smoke.sh SMT_BINARY PROJECT_ROOT
set -eu
smt=$1; root=$2
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
"$smt" train --config "$root/configs/synthetic-tiny.ini" --run.dir "$tmp/run" --train.steps=60 --train.log_every=5 \
  --model.d_model=64 --model.expert_hidden=128 --train.seq_len=128 --data.synthetic_train=512 \
  --data.synthetic_heldout=128 --train.threads=1 >"$tmp/log" 2>&1 || { cat "$tmp/log"; exit 1; }
test -s "$tmp/run/config.ini"
python3 - "$tmp/run/metrics.jsonl" <<'PY'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
steps = [r for r in recs if r.get("event") == "step"]
final = [r for r in recs if r.get("event") == "final"]
assert len(final) == 1, "one final record expected"
for key in ("step", "loss", "aux_loss", "z_loss", "lr", "grad_norm", "tokens_per_s", "moe_layers"):
    assert all(key in r for r in steps), f"step records lack {key}"
for key in ("eval_accuracy", "majority_accuracy"):
    assert 0.0 <= final[0][key] <= 1.0, f"final {key} = {final[0].get(key)}"
tpe = steps[-1]["moe_layers"][0]["tokens_per_expert"]
assert len(tpe) == 8, tpe
first = sum(r["task_loss"] for r in steps[:3]) / 3
last = sum(r["task_loss"] for r in steps[-3:]) / 3
print(f"task loss {first:.4f} -> {last:.4f} over {steps[-1]['step']} steps")
assert last < first - 0.02, "loss did not fall"
PY
