#!/usr/bin/env bash
# Several nodes with Open MPI and a hostfile (see hostfile.example): one rank per GPU (or per
# CPU socket). Every node needs the same smt binary, config and data at the same paths (a shared
# file system), and password-less ssh between the nodes.
#   launch/run_multinode.sh HOSTFILE NP CONFIG [--section.key=value ...]
# e.g. launch/run_multinode.sh launch/hostfile.example 16 configs/bench-b1.ini --run.dir /shared/runs/b1
set -euo pipefail
[ $# -ge 3 ] || { echo "usage: $0 HOSTFILE NP CONFIG [--section.key=value ...]" >&2; exit 2; }
hostfile=$1; np=$2; config=$3; shift 3
[ -f "$hostfile" ] || { echo "$0: no hostfile $hostfile" >&2; exit 2; }
here=$(cd "$(dirname "$0")/.." && pwd)
smt=${SMT_BIN:-$here/build/cpu/smt}
# --map-by ppr:N:node places N ranks per node (N = slots in the hostfile); ranks of a node are
# consecutive, so an expert-parallel group (P consecutive ranks) stays inside a node when P <= N.
exec mpirun --hostfile "$hostfile" -np "$np" --map-by slot --bind-to none \
  -x OMP_NUM_THREADS -x LD_LIBRARY_PATH -x PATH "$smt" train --config "$config" "$@"
