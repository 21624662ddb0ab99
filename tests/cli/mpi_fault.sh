#!/usr/bin/env bash
# A rank that fails mid-run stops the whole job: when rank 1 of 2 (or of 4) throws or is killed
# at step 3, every rank exits within 30 seconds, the job's exit code is non-zero and the message
# names rank 1. Uses the SMT_TEST_FAULT test hook (src/app/parallel_run.h).
# usage: mpi_fault.sh SMT_BINARY PROJECT_ROOT
set -u
smt=$1; root=$2
command -v mpirun >/dev/null || { echo "SKIP: mpirun not installed"; exit 0; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fails=0
for np in 2 4; do
  for mode in throw kill; do
    start=$(date +%s)
    SMT_TEST_FAULT="1:3:$mode" timeout 60 mpirun --oversubscribe -np $np "$smt" train \
      --config "$root/configs/synthetic-tiny.ini" --train.steps 50 --train.threads 1 --data.synthetic_train 256 \
      --data.synthetic_heldout 32 --run.dir "$tmp/$np-$mode" >"$tmp/out" 2>"$tmp/err"; rc=$?
    took=$(( $(date +%s) - start ))
    if [ $rc -eq 0 ] || [ $rc -eq 124 ] || [ $took -gt 30 ] || ! grep -q "rank 1" "$tmp/err"; then
      echo "FAIL: -np $np, rank 1 $mode at step 3: exit $rc after ${took}s; stderr:"; head -20 "$tmp/err"; fails=$((fails+1))
    else
      echo "ok: -np $np, rank 1 $mode at step 3: job exited $rc after ${took}s: $(grep -m1 "rank 1" "$tmp/err")"
    fi
  done
done
[ $fails -eq 0 ]
