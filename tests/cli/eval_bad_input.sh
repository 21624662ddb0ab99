#!/usr/bin/env bash
# smt eval on bad input: one clear line on stderr, non-zero exit (2 for usage), no report written.
# usage: eval_bad_input.sh SMT_BINARY PROJECT_ROOT
set -u
smt=$1; root=$2
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
. "$root/tests/cli/lib/eval.bash"
. "$root/tests/cli/lib/expect.bash"  # expect CODE PATTERN -- args...
make_liar "$tmp/liar"
tiny_train "$smt" "$tmp/syn"
tiny_train "$smt" "$tmp/liar6" --data.source=liar --data.path="$tmp/liar"
tiny_train "$smt" "$tmp/lm" --model.head=lm
syn=$tmp/syn/checkpoints/step-00000006.h5
l6=$tmp/liar6/checkpoints/step-00000006.h5
fix=$root/tests/fixtures/liar
: >"$tmp/empty.tsv"
printf 'not a checkpoint\n' >"$tmp/text.h5"
out=$tmp/out-dir
expect 2 "checkpoint not found" -- eval --checkpoint "$tmp/missing.h5" --data synthetic --out "$out"
expect 2 "--checkpoint FILE is required" -- eval --data synthetic --out "$out"
expect 2 "--data liar:PATH.tsv or --data synthetic is required" -- eval --checkpoint "$syn" --out "$out"
expect 2 "--data must be liar:PATH.tsv or synthetic" -- eval --checkpoint "$syn" --data imagenet --out "$out"
expect 2 "needs a non-negative integer seed" -- eval --checkpoint "$syn" --data synthetic:abc --out "$out"
expect 2 "LIAR file not found: $tmp/nowhere.tsv" -- eval --checkpoint "$l6" --data "liar:$tmp/nowhere.tsv" --out "$out"
expect 1 "bad_label.tsv:3" -- eval --checkpoint "$l6" --data "liar:$fix/bad_label.tsv" --out "$out"
expect 1 "bad_columns.tsv:2" -- eval --checkpoint "$l6" --data "liar:$fix/bad_columns.tsv" --out "$out"
expect 2 "is empty" -- eval --checkpoint "$l6" --data "liar:$tmp/empty.tsv" --out "$out"
expect 2 "6-way head but the synthetic set has 2 classes" -- eval --checkpoint "$l6" --data synthetic --out "$out"
expect 2 "language-model head" -- eval --checkpoint "$tmp/lm/checkpoints/step-00000006.h5" --data synthetic --out "$out"
expect 1 "is not an HDF5 file" -- eval --checkpoint "$tmp/text.h5" --data synthetic --out "$out"
expect 2 "batch-size must be >= 0" -- eval --checkpoint "$syn" --data synthetic --batch-size -3 --out "$out"
expect 2 "--bootstrap must be 0 (no intervals) or between 100 and 1000000, got 50" -- eval --checkpoint "$syn" --data synthetic --bootstrap 50 --out "$out"
expect 2 "bootstrap" -- eval --checkpoint "$syn" --data synthetic --bootstrap lots --out "$out"
expect 2 "bootstrap-seed must be in" -- eval --checkpoint "$syn" --data synthetic --bootstrap-seed -1 --out "$out"
expect 2 "unrecognised\|unrecognized" -- eval --checkpoint "$syn" --data synthetic --frobnicate
expect 2 "--device must be cpu or cuda, got 'tpu'" -- eval --checkpoint "$syn" --data synthetic --device tpu --out "$out"
# --device cuda where no GPU is usable (or the build has no CUDA): refused, one line, before the report
# folder exists. Where this binary can use a GPU, the evaluation simply runs (checked in train_device.sh).
checks=$((checks+1))
"$smt" eval --checkpoint "$syn" --data synthetic --device cuda --out "$tmp/cuda-out" >"$tmp/out" 2>"$tmp/err"; rc=$?
if [ "$rc" -eq 0 ]; then
  echo "ok: --device cuda ran (a GPU is usable here): nothing to refuse"
elif [ "$rc" -ne 2 ] || [ "$(wc -l <"$tmp/err")" -ne 1 ] || [ -e "$tmp/cuda-out" ] ||
     ! grep -q "device = cuda, but .*\(built without CUDA\|no CUDA device is usable\)" "$tmp/err"; then
  echo "FAIL: eval --device cuda without a usable GPU -> exit $rc:"; cat "$tmp/err"; fails=$((fails+1))
else
  echo "ok: eval --device cuda -> 2: $(cat "$tmp/err")"
fi
# several MPI ranks would all write the same report: refused
checks=$((checks+1))
OMPI_COMM_WORLD_SIZE=2 "$smt" eval --checkpoint "$syn" --data synthetic --out "$out" >"$tmp/out" 2>"$tmp/err"; rc=$?
if [ "$rc" -ne 2 ] || ! grep -q "runs as one process" "$tmp/err"; then
  echo "FAIL: eval under 2 ranks -> exit $rc:"; cat "$tmp/err"; fails=$((fails+1))
else echo "ok: eval under 2 ranks -> 2: $(cat "$tmp/err")"; fi
[ -e "$out" ] && { echo "FAIL: $out was created by a failed eval"; fails=$((fails+1)); }
ls -d "$tmp"/syn/eval-* "$tmp"/liar6/eval-* 2>/dev/null && { echo "FAIL: a failed eval wrote a folder"; fails=$((fails+1)); }
# the bench compare command refuses bad configs before training anything
expect 2 "patterns must start with dense" -- bench compare --config "$root/configs/compare-tiny.ini" --patterns local,dense --run.dir "$tmp/cmp"
expect 2 "attention" -- bench compare --config "$root/configs/compare-tiny.ini" --patterns dense,starburst --run.dir "$tmp/cmp"
expect 2 "synthetic" -- bench compare --config "$root/configs/compare-tiny.ini" --data.source=liar --data.path="$tmp/liar" --run.dir "$tmp/cmp"
expect 2 "--bootstrap must be between 100 and 1000000, got 0" -- bench compare --config "$root/configs/compare-tiny.ini" --bootstrap 0 --run.dir "$tmp/cmp"
[ -e "$tmp/cmp" ] && { echo "FAIL: a refused bench compare wrote $tmp/cmp"; fails=$((fails+1)); }
echo "$checks bad inputs checked; $fails failures"
[ "$fails" -eq 0 ]
