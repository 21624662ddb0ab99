# Shared helpers of tests/cli/eval_*.sh (sourced; kept outside tests/cli/*.sh so ctest does not run it).
# make_liar DIR: a small LIAR-format train.tsv / valid.tsv (14 tab-separated columns, all six
# labels, the label word-correlated so that something is learnable).
make_liar() {
  python3 - "$1" <<'PY'
import os, random, sys
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
labels = ["pants-fire", "false", "barely-true", "half-true", "mostly-true", "true"]
cue = ["outrageous", "wrong", "misleading", "partly", "largely", "accurate"]
words = ["tax", "budget", "jobs", "health", "vote", "senator", "city", "crime", "school", "rate"]
rng = random.Random(7)
for split, n in (("train", 180), ("valid", 60)):
    with open(os.path.join(out, split + ".tsv"), "w") as f:
        for i in range(n):
            y = i % 6
            text = " ".join(rng.choice(words) for _ in range(6)) + " " + cue[y] + " claim"
            row = [f"{i}.json", labels[y], text, "economy", "jane-doe", "Governor", "Ohio", "republican",
                   "1", "2", "3", "4", "5", "a speech"]
            f.write("\t".join(row) + "\n")
PY
}
# tiny_train SMT RUN_DIR [overrides...]: a few steps of a very small model.
tiny_train() {
  local smt=$1 dir=$2; shift 2
  "$smt" train --config "$root/configs/synthetic-tiny.ini" --run.dir "$dir" --train.steps=6 --train.log_every=3 \
    --model.d_model=32 --model.expert_hidden=32 --model.experts=4 --model.block_size=16 --model.window=16 \
    --train.seq_len=64 --train.batch_size=8 --data.synthetic_train=128 --data.synthetic_heldout=64 \
    --train.threads=1 "$@" >"$dir.log" 2>&1 || { echo "training failed:"; cat "$dir.log"; exit 1; }
}
