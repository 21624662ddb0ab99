#!/usr/bin/env bash
# Benchmark C1 (BENCHMARKS.md): one CPU training step of the 9.5 M-parameter model, smt against
# the PyTorch twin (tests/torch_twin) on the same machine, same thread counts, in one run.
# usage: bench/run_c1.sh [THREADS...]   (default: 1 2); needs build/cpu/smt and python3 with torch.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=("${@:-1 2}")
[ $# -eq 0 ] && threads=(1 2)
echo "machine: $(lscpu | sed -n 's/^Model name: *//p') ($(nproc) cores)"
for t in "${threads[@]}"; do
  smt_json=$(OMP_NUM_THREADS=$t ${SMT:-./build/cpu/smt} bench step --config configs/bench-c1.ini --train.threads="$t" --warmup 1 --repeat 5)
  torch_json=$(OMP_NUM_THREADS=$t python3 bench/torch_cpu_step.py --threads "$t" --warmup 1 --steps 5)
  python3 - "$smt_json" "$torch_json" <<'PY'
import json, sys
s, t = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"threads {s['threads']}: smt {s['step_s']:.3f} s/step {s['tokens_per_s']:.0f} tok/s | "
      f"pytorch {t.get('torch','?')} {t['step_s']:.3f} s/step {t['tokens_per_s']:.0f} tok/s | "
      f"ratio smt/pytorch {s['tokens_per_s']/t['tokens_per_s']:.2f}x")
PY
done
