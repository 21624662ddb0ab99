#!/bin/bash
# The LIAR recipe over seeds (README "LIAR recipe"): for each seed, word-level LM pretraining on
# the training statements, then the six-way classifiers fine-tuned from it (statement only,
# statement + metadata, statement + metadata + credit history = LEAKING), and the statement-only
# classifier from scratch. Prints one row per run and mean / spread (min-max) per config, all on
# LIAR valid. Run from the project root after building (build/cpu/smt):
#   bash bench/liar_recipe.sh [SEED ...]          # default seeds: 1234 2 3
# Env: SMT (binary, default build/cpu/smt), THREADS (default 1), OUT (default runs/liar-recipe).
set -euo pipefail
SMT=${SMT:-build/cpu/smt}
THREADS=${THREADS:-1}
OUT=${OUT:-runs/liar-recipe}
seeds=("$@")
[ ${#seeds[@]} -gt 0 ] || seeds=(1234 2 3)
mkdir -p "$OUT"
train() {  # name config seed [overrides]
  local name=$1 cfg=$2 seed=$3
  shift 3
  echo "== $name (seed $seed)" >&2
  "$SMT" train --config "$cfg" --seed="$seed" --train.threads="$THREADS" --run.dir="$OUT/$name-s$seed" --overwrite "$@" \
    > "$OUT/$name-s$seed.log" 2>&1 || { echo "$name seed $seed failed, see $OUT/$name-s$seed.log" >&2; exit 1; }
}
for s in "${seeds[@]}"; do
  train pretrain configs/liar-words-pretrain.ini "$s"
  ckpt="$OUT/pretrain-s$s/checkpoints/step-00001500.h5"
  train words configs/liar-words.ini "$s" --model.init_from="$ckpt"
  train words-meta configs/liar-words-meta.ini "$s" --model.init_from="$ckpt"
  train words-meta-credit-LEAKING configs/liar-words-meta-credit-LEAKING.ini "$s" --model.init_from="$ckpt"
  train words-scratch configs/liar-words.ini "$s" --model.init_from "" --model.causal=false
done
python3 - "$OUT" "${seeds[@]}" <<'PY'
import json, sys
out, seeds = sys.argv[1], sys.argv[2:]
keys = [("eval_accuracy", "six-way"), ("eval_binary_accuracy", "binary"), ("eval_binary_auc", "AUC")]
print(f"{'config':28s} {'seed':>5s} " + " ".join(f"{k[1]:>8s}" for k in keys))
for name in ["words", "words-scratch", "words-meta", "words-meta-credit-LEAKING"]:
    vals = {k: [] for k, _ in keys}
    for s in seeds:
        final = [json.loads(l) for l in open(f"{out}/{name}-s{s}/metrics.jsonl") if '"final"' in l][-1]
        for k, _ in keys: vals[k].append(final[k])
        print(f"{name:28s} {s:>5s} " + " ".join(f"{final[k]:8.4f}" for k, _ in keys))
    print(f"{name:28s} {'mean':>5s} " + " ".join(f"{sum(v)/len(v):8.4f}" for v in vals.values()))
    print(f"{name:28s} {'range':>5s} " + " ".join(f"{min(v):.3f}-{max(v):.3f}" for v in vals.values()))
PY
