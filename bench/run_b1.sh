#!/usr/bin/env bash
# B1 (BENCHMARKS.md) on the GPU machine, both sides in one run on the same GPU: `smt train` on
# configs/bench-b1.ini (device = cuda) and bench/torch_b1.py (PyTorch eager and torch.compile, the
# same architecture), then one table with tokens/s and the ratios.
#   bash bench/run_b1.sh OUT_DIR [STEPS] [extra smt flags, e.g. --train.seq_len=65536 --train.batch_size=1]
# smt's step time is the median of the `step_s` of steps 4..STEPS (steps 1-3 warm up); PyTorch's is
# the median of 10 timed steps after 3 warm-up steps (CUDA events). Needs build/cuda/smt and torch.
set -euo pipefail
out=${1:?usage: bench/run_b1.sh OUT_DIR [STEPS] [smt flags]}; steps=${2:-12}; shift $(( $# >= 2 ? 2 : 1 ))
mkdir -p "$out"
smt=${SMT_BIN:-build/cuda/smt}
here=$(dirname "$0")
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
"$smt" train --config "$here/../configs/bench-b1.ini" --run.dir "$out/smt-run" --overwrite --train.steps="$steps" \
  --train.log_every=1 --train.warmup=2 "$@" 2>&1 | tail -5 | tee "$out/smt.txt"
python3 "$here/torch_b1.py" --impl "${TORCH_IMPL:-eager,compiled}" | tee "$out/torch.txt"
python3 - "$out" <<'PY' | tee "$out/compare.txt"
import json, statistics, sys
d = sys.argv[1]
recs = [json.loads(l) for l in open(d + "/smt-run/metrics.jsonl") if l.strip()]
steps = [r for r in recs if r.get("event") == "step"]
final = [r for r in recs if r.get("event") == "final"][0]
timed = [r["step_s"] for r in steps if r["step"] >= 4] or [r["step_s"] for r in steps]
smt_ms = statistics.median(timed) * 1e3
tokens = final["tokens_seen"] / max(1, final["steps"])
smt_tps = tokens / smt_ms * 1e3
gpu = open(d + "/gpu.txt").read().strip()
print(f"B1 on {gpu}; smt: {final.get('device', '?')}")
print(f"{'implementation':<22} {'step ms':>9} {'tokens/s':>11} {'first loss':>10} {'memory GiB':>11}")
mem = final.get("device_memory_peak_GiB")
print(f"{'smt':<22} {smt_ms:>9.1f} {smt_tps:>11.0f} {steps[0]['loss']:>10.4f} "
      f"{mem if mem is None else round(mem, 2)!s:>11}")
torch = [json.loads(l[3:]) for l in open(d + "/torch.txt") if l.startswith("B1 ")]
for t in torch:
    print(f"{t['impl']:<22} {t['step_ms']:>9.1f} {t['tokens_per_s']:>11.0f} {t['first_loss']:>10.4f} {t['peak_mem_GiB']:>11.2f}")
for t in torch:
    print(f"smt / {t['impl']}: {smt_tps / t['tokens_per_s']:.2f}x tokens/s")
PY
