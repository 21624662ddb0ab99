#!/usr/bin/env bash
# Bad usage and bad configs: one clear line on stderr, exit code 2, nothing written.
# usage: usage_errors.sh SMT_BINARY PROJECT_ROOT
set -u
smt=$1; root=$2
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
. "$root/tests/cli/lib/expect.bash"  # expect CODE PATTERN -- args...
cfg=$root/configs/synthetic-tiny.ini
printf '[model]\nd_modle = 64\n' >"$tmp/unknown.ini"
expect 2 "d_modle" -- train --config "$tmp/unknown.ini" --run.dir "$tmp/r1"
expect 2 "model.d_model" -- train --config "$cfg" --model.d_model=wide --run.dir "$tmp/r2"
expect 2 "does not divide" -- train --config "$cfg" --model.heads=3 --run.dir "$tmp/r3"
expect 2 "top_k" -- train --config "$cfg" --model.top_k=9 --run.dir "$tmp/r4"
expect 2 "window" -- train --config "$cfg" --model.window=4096 --run.dir "$tmp/r5"
expect 2 "LIAR file not found" -- train --config "$cfg" --data.source=liar --data.path="$tmp/nowhere" --run.dir "$tmp/r6"
expect 2 "cannot read config file" -- train --config "$tmp/missing.ini"
expect 2 "unrecognised\|unrecognized" -- train --config "$cfg" --no.such=1
expect 2 "unknown command" -- frobnicate
expect 2 "attention" -- train --config "$cfg" --model.attention=starburst --run.dir "$tmp/r7"
expect 2 "precision must be auto, fp32 or bf16" -- train --config "$cfg" --precision=fp16 --run.dir "$tmp/r8"
expect 2 "precision = bf16 needs device = cuda" -- train --config "$cfg" --precision=bf16 --run.dir "$tmp/r9"
expect 2 "data.pack = true needs model.head = lm" -- train --config "$cfg" --data.pack=true --run.dir "$tmp/r10"
expect 2 "train.profile .* needs device = cuda" -- train --config "$cfg" --train.profile=true --run.dir "$tmp/r11"
expect 2 "flash_dq must be deterministic or atomic" -- train --config "$cfg" --flash_dq=fast --run.dir "$tmp/r12"
for r in r1 r2 r3 r4 r5 r6 r7 r8 r9 r10 r11 r12; do
  [ -e "$tmp/$r" ] && { echo "FAIL: run folder $r was created by a rejected run"; fails=$((fails+1)); }
done
# --help lists every option with its default.
"$smt" train --help >"$tmp/help" 2>&1 || { echo "FAIL: train --help exit $?"; fails=$((fails+1)); }
for key in model.d_model model.capacity_factor model.attention train.steps train.seq_len data.source run.dir seed device precision flash_dq; do
  grep -q -- "--$key" "$tmp/help" || { echo "FAIL: --help does not list --$key"; fails=$((fails+1)); }
done
grep -q "(=1234)" "$tmp/help" || { echo "FAIL: --help does not show the seed default"; fails=$((fails+1)); }
echo "$checks rejected invocations checked; $fails failures"
[ "$fails" -eq 0 ]
