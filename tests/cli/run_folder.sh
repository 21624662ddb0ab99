#!/usr/bin/env bash
# A fresh run into a folder that holds an earlier run is refused with nothing touched; --overwrite starts
# it over (the old checkpoints deleted, so --resume cannot pick them); --resume and --overwrite together
# are refused; a missing model.init_from is refused before any folder is created; smt bench --help.
# usage: run_folder.sh SMT_BINARY PROJECT_ROOT
set -u
smt=$1; root=$2
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
. "$root/tests/cli/lib/expect.bash"  # expect CODE PATTERN -- args...
train=(train --config "$root/configs/synthetic-tiny.ini" --train.threads=1 --train.log_every=1)
fail() { echo "FAIL: $*"; fails=$((fails+1)); }
state() { (cd "$1" && find . -type f -exec md5sum {} + | sort -k2); }  # every file and its content

"$smt" "${train[@]}" --train.steps=4 --checkpoint.every=2 --run.dir "$tmp/a" >"$tmp/a.log" 2>&1 ||
  { cat "$tmp/a.log"; echo "FAIL: the first run failed"; exit 1; }
[ -f "$tmp/a/checkpoints/step-00000002.h5" ] && [ -f "$tmp/a/checkpoints/step-00000004.h5" ] ||
  fail "the first run did not leave checkpoints 2 and 4: $(ls "$tmp/a/checkpoints")"
before=$(state "$tmp/a")

# The same folder again without --resume: refused, every file as it was.
expect 2 "an earlier run is there (.*metrics.jsonl and 2 checkpoints in .*): continue it with --resume" -- \
  "${train[@]}" --train.steps=3 --run.dir "$tmp/a"
[ "$(state "$tmp/a")" = "$before" ] || fail "a refused run changed $tmp/a"
# A new run folder whose checkpoint folder holds the earlier run's checkpoints: refused too.
expect 2 "an earlier run is there (2 checkpoints in $tmp/a/checkpoints)" -- \
  "${train[@]}" --train.steps=3 --run.dir "$tmp/b" --checkpoint.dir "$tmp/a/checkpoints"
[ -e "$tmp/b" ] && fail "a refused run created $tmp/b"
expect 2 "give one of them" -- "${train[@]}" --run.dir "$tmp/a" --resume --overwrite
# resume and overwrite are command-line flags: a config file cannot set them.
for key in "overwrite = true" "resume = latest"; do
  printf 'seed = 1\n%s\n' "$key" >"$tmp/flag.ini"
  expect 2 "'${key%% *}' is a command-line flag" -- train --config "$tmp/flag.ini" --run.dir "$tmp/a"
done
expect 2 "model.init_from: no checkpoint file $tmp/none.h5" -- \
  "${train[@]}" --run.dir "$tmp/c" --model.init_from "$tmp/none.h5"
[ -e "$tmp/c" ] && fail "a run refused for its model.init_from created $tmp/c"
[ "$(state "$tmp/a")" = "$before" ] || fail "a refused run changed $tmp/a"

# --overwrite: starts over; only the new run's checkpoint is left and `latest` names it.
"$smt" "${train[@]}" --train.steps=3 --run.dir "$tmp/a" --overwrite >"$tmp/ow.log" 2>&1 ||
  { cat "$tmp/ow.log"; fail "--overwrite run failed"; }
grep -q "starting over (.*2 checkpoints in .*; 2 deleted)" "$tmp/ow.log" || fail "--overwrite did not say what it deleted: $(grep -i overwrite "$tmp/ow.log")"
left=$(cd "$tmp/a/checkpoints" && ls)
[ "$left" = "$(printf 'latest\nstep-00000003.h5')" ] || fail "after --overwrite the checkpoint folder holds: $left"
[ "$(cat "$tmp/a/checkpoints/latest")" = "step-00000003.h5" ] || fail "latest names $(cat "$tmp/a/checkpoints/latest")"
python3 - "$tmp/a/metrics.jsonl" <<'PY' || fail "metrics.jsonl after --overwrite is not the new run's alone"
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
steps = [r["step"] for r in recs if r.get("event") != "final" and "step" in r]
finals = [r for r in recs if r.get("event") == "final"]
assert steps == [1, 2, 3], steps
assert len(finals) == 1 and finals[0]["steps"] == 3, finals
PY
grep -q "overwrite" "$tmp/a/config.ini" && fail "config.ini stores the per-invocation --overwrite"

# A folder whose run wrote nothing yet (an empty metrics.jsonl, no checkpoint) is not an earlier run.
mkdir -p "$tmp/d/checkpoints" && : >"$tmp/d/metrics.jsonl"
"$smt" "${train[@]}" --train.steps=1 --run.dir "$tmp/d" >"$tmp/d.log" 2>&1 || { cat "$tmp/d.log"; fail "a run into an empty run folder failed"; }

# A run stopped before its first checkpoint (metrics, no checkpoint): a fresh run is refused; --resume starts
# it from step 0; --overwrite keeps a model.init_from that lies in the checkpoint folder.
mkdir -p "$tmp/e/checkpoints" && echo '{"step": 1}' >"$tmp/e/metrics.jsonl"
expect 2 "an earlier run is there ($tmp/e/metrics.jsonl)" -- "${train[@]}" --train.steps=2 --run.dir "$tmp/e"
"$smt" "${train[@]}" --train.steps=2 --run.dir "$tmp/e" --resume >"$tmp/e.log" 2>&1 || { cat "$tmp/e.log"; fail "--resume of a run without checkpoints failed"; }
grep -q "starting from step 0" "$tmp/e.log" || fail "--resume without checkpoints did not start from step 0"
cp "$tmp/a/checkpoints/step-00000003.h5" "$tmp/e/checkpoints/step-00000099.h5"
"$smt" "${train[@]}" --train.steps=2 --run.dir "$tmp/e" --overwrite --model.init_from "$tmp/e/checkpoints/step-00000099.h5" \
  >"$tmp/e2.log" 2>&1 || { cat "$tmp/e2.log"; fail "--overwrite with model.init_from in the folder failed"; }
[ -f "$tmp/e/checkpoints/step-00000099.h5" ] || fail "--overwrite deleted the model.init_from it had read"
[ -f "$tmp/e/checkpoints/step-00000002.h5" ] || fail "the --overwrite run did not write its checkpoint"

# smt bench --help: the subcommands, exit 0; smt --help names bench attention and bench exchange.
"$smt" bench --help >"$tmp/bh" 2>&1 || fail "smt bench --help exit $?"
for sub in step compare exchange attention moe; do grep -q "smt bench $sub" "$tmp/bh" || fail "smt bench --help lacks $sub"; done
"$smt" --help >"$tmp/h" 2>&1
for sub in "bench attention" "bench exchange" "--overwrite"; do grep -q -- "$sub" "$tmp/h" || fail "smt --help lacks '$sub'"; done
echo "$checks refusals checked; $fails failures"
[ "$fails" -eq 0 ]
