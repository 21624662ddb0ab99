#!/usr/bin/env bash
# One node, NP ranks: experts spread over the ranks, the global batch split between them.
#   launch/run_local.sh NP CONFIG [--section.key=value ...]
# e.g. launch/run_local.sh 4 configs/synthetic-tiny.ini --run.dir runs/tiny-np4
# Threads per rank default to (cores / NP); set --train.threads to override. SMT_BIN picks the
# binary (default build/cpu/smt). Runs as root too (sets Open MPI's allow-root variables).
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 NP CONFIG [--section.key=value ...]" >&2; exit 2; }
np=$1; config=$2; shift 2
[[ "$np" =~ ^[1-9][0-9]*$ ]] || { echo "$0: NP must be a positive integer, got '$np'" >&2; exit 2; }
[ -f "$config" ] || { echo "$0: no config file $config" >&2; exit 2; }
here=$(cd "$(dirname "$0")/.." && pwd)
smt=${SMT_BIN:-$here/build/cpu/smt}
[ -x "$smt" ] || { echo "$0: no smt binary at $smt (build with: cmake --preset cpu && cmake --build --preset cpu)" >&2; exit 2; }
command -v mpirun >/dev/null || { echo "$0: mpirun not found (apt-get install openmpi-bin)" >&2; exit 2; }
extra=()
if [ "$(id -u)" -eq 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
# More ranks than cores: allow it, and let idle ranks yield the CPU.
[ "$np" -gt "$(nproc)" ] && extra+=(--oversubscribe)
exec mpirun "${extra[@]}" --bind-to none -np "$np" "$smt" train --config "$config" "$@"
