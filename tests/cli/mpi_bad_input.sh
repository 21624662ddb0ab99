#!/usr/bin/env bash
# Multi-rank bad input: experts not divisible by the expert-parallel size, fewer batch rows than
# ranks, ranks started with different configs, a rank that fails alone, a folder holding an earlier run. Each: one message naming the
# problem (from rank 0 for a config error), a non-zero exit of the job, within the timeout.
# usage: mpi_bad_input.sh SMT_BINARY PROJECT_ROOT
set -u
smt=$1; root=$2
command -v mpirun >/dev/null || { echo "SKIP: mpirun not installed"; exit 0; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cfg=$root/configs/synthetic-tiny.ini
small=(--train.steps 2 --data.synthetic_train 64 --data.synthetic_heldout 32 --train.threads 1)
fails=0; checks=0
check() {  # check NAME PATTERN MAX_MATCHES -- mpirun args...
  local name=$1 pattern=$2 max=$3; shift 4
  checks=$((checks+1))
  timeout 120 mpirun --oversubscribe "$@" >"$tmp/out" 2>"$tmp/err"; local rc=$?
  local n; n=$(grep -c -- "$pattern" "$tmp/err")
  if [ "$rc" -eq 0 ] || [ "$rc" -eq 124 ] || [ "$n" -lt 1 ] || [ "$n" -gt "$max" ]; then
    echo "FAIL: $name -> exit $rc, '$pattern' printed $n times (1..$max wanted):"; cat "$tmp/err"; fails=$((fails+1))
  else
    echo "ok: $name -> exit $rc: $(grep -m1 -- "$pattern" "$tmp/err")"
  fi
}
# 3 ranks: P = min(3, 8) = 3 does not divide 8 experts.
check "3 ranks, 8 experts" "does not divide model.experts" 1 -- -np 3 "$smt" train --config "$cfg" "${small[@]}" --run.dir "$tmp/a"
check "P=4 on 2 ranks" "does not divide the number of ranks" 1 -- -np 2 "$smt" train --config "$cfg" "${small[@]}" \
  --parallel.expert_parallel 4 --run.dir "$tmp/b"
check "batch 2 rows, 4 ranks" "cannot feed 4 ranks" 1 -- -np 4 "$smt" train --config "$cfg" "${small[@]}" \
  --train.batch_size 2 --run.dir "$tmp/c"
check "different configs" "different configurations: rank(s) 1" 1 -- -np 1 "$smt" train --config "$cfg" "${small[@]}" \
  --run.dir "$tmp/d" : -np 1 "$smt" train --config "$cfg" "${small[@]}" --train.lr 0.5 --run.dir "$tmp/d"
# Rank 0 alone cannot find the checkpoint to resume from: the others must not hang in a collective.
check "resume without checkpoint" "no complete checkpoint" 1 -- -np 2 "$smt" train --config "$cfg" "${small[@]}" \
  --run.dir "$tmp/e" --resume
# A fresh 2-rank run into a folder holding an earlier run: every rank refuses, one message, the run as it was.
mkdir -p "$tmp/f" && echo '{"step": 1}' >"$tmp/f/metrics.jsonl"
check "earlier run in the folder" "an earlier run is there" 1 -- -np 2 "$smt" train --config "$cfg" "${small[@]}" \
  --run.dir "$tmp/f"
[ "$(cat "$tmp/f/metrics.jsonl")" = '{"step": 1}' ] || { echo "FAIL: the refused run changed metrics.jsonl"; fails=$((fails+1)); }
for r in a b c d e; do [ -e "$tmp/$r/metrics.jsonl" ] && { echo "FAIL: rejected run $r wrote metrics"; fails=$((fails+1)); }; done
echo "$checks checks, $fails failures"
[ "$fails" -eq 0 ]
