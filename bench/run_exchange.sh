#!/usr/bin/env bash
# The MoE layer's communication against bare MPI_Alltoallv of the same bytes (issue 5's goal:
# ratio <= 1.2), at 2 and 4 ranks on this node, RUNS times each; prints every run and the median.
#   bash bench/run_exchange.sh [RUNS] [smt bench exchange flags...]
set -euo pipefail
runs=${1:-5}; shift || true
smt=${SMT_BIN:-build/cpu/smt}
[ "$(id -u)" -eq 0 ] && export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
for np in 2 4; do
  for i in $(seq "$runs"); do
    mpirun --oversubscribe --bind-to none -np "$np" "$smt" bench exchange "$@"
  done
done | python3 "$(dirname "$0")/summarize_exchange.py"
