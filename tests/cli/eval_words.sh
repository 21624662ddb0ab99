#!/usr/bin/env bash
# A word-level (data.tokenizer = words) LIAR checkpoint: smt eval must feed the model the same
# word ids it was trained on, so its liar6 view equals the held-out evaluation that smt train
# wrote for the same valid.tsv (accuracy exactly, NLL to 1e-6).
# usage: eval_words.sh SMT_BINARY PROJECT_ROOT
set -eu
smt=$1; root=$2
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
. "$root/tests/cli/lib/eval.bash"
make_liar "$tmp/liar"
"$smt" train --config "$root/configs/synthetic-tiny.ini" --run.dir "$tmp/w" --train.steps=30 --train.log_every=10 \
  --model.d_model=32 --model.expert_hidden=32 --model.experts=4 --model.attention=dense --train.seq_len=32 \
  --train.batch_size=16 --train.threads=1 --data.source=liar --data.path="$tmp/liar" \
  --data.tokenizer=words --model.vocab_size=2048 >"$tmp/w.log" 2>&1 || { echo "training failed:"; cat "$tmp/w.log"; exit 1; }
"$smt" eval --checkpoint "$tmp/w/checkpoints/step-00000030.h5" --data "liar:$tmp/liar/valid.tsv" --out "$tmp/e" \
  --threads 1 >"$tmp/e.out" 2>&1 || { cat "$tmp/e.out"; exit 1; }
python3 - "$tmp/w/metrics.jsonl" "$tmp/e/report.json" <<'PY'
import json, sys
final = [json.loads(l) for l in open(sys.argv[1]) if '"final"' in l][-1]
v = json.load(open(sys.argv[2]))["views"]["liar6"]
assert v["n"] == final["eval_n"] == 60, (v["n"], final["eval_n"])
assert abs(v["accuracy"] - final["eval_accuracy"]) < 1e-9, (v["accuracy"], final["eval_accuracy"])
assert abs(v["nll"] - final["eval_nll"]) < 1e-6, (v["nll"], final["eval_nll"])
# the cue word decides the label: 30 steps of the word model must beat chance (1/6) clearly
assert v["accuracy"] > 0.4, v["accuracy"]
print("ok: eval of a word-level checkpoint matches training's held-out evaluation", v["accuracy"], v["nll"])
PY
