#!/usr/bin/env bash
# B2 on the GPU machine, both sides in one run on the same GPU: smt's MoE layer (smt bench moe, bf16
# operands, fp32 accumulation) and PyTorch's eager loop, torch._grouped_mm and the dense FFN of equal
# FLOPs (bench/torch_moe.py), then one comparison table with the GPU name.
#   bash bench/run_b2.sh OUT_DIR [extra smt bench moe flags, e.g. --tokens 16384 --precision fp32]
# Needs build/cuda/smt (cuda preset) and python3 with a torch that has torch._grouped_mm (>= 2.8).
# Ratios are PyTorch ms / smt ms: above 1 means smt is faster.
set -euo pipefail
out=${1:?usage: bench/run_b2.sh OUT_DIR [smt bench moe flags]}; shift
mkdir -p "$out"
smt=${SMT_BIN:-build/cuda/smt}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
"$smt" bench moe --device cuda --json "$@" | tee "$out/smt.jsonl"
# The shape flags go to both sides (same T, d, f, E, k); --precision and the like to smt only.
torch_flags=()
while [ $# -gt 0 ]; do
  case $1 in
    --tokens|--d|--f|--experts|--top-k|--warmup|--repeat) torch_flags+=("$1" "$2"); shift 2 ;;
    *) shift ;;
  esac
done
python3 "$(dirname "$0")/torch_moe.py" "${torch_flags[@]}" | tee "$out/torch.jsonl"
python3 - "$out" <<'PY' | tee "$out/compare.txt"
import json, sys
d = sys.argv[1]
smt = [json.loads(l) for l in open(d + "/smt.jsonl") if l.startswith("{")]
torch = {}
for r in (json.loads(l) for l in open(d + "/torch.jsonl") if l.startswith("{")):
    torch[(r["impl"], r["T"], r["d"], r["f"])] = r  # dense_same_flops: f is the MoE's f (its hidden is k*f)
gpu = open(d + "/gpu.txt").read().strip().split(",")[0]
print(f"B2 on {gpu} (smt reports: {smt[0]['gpu'] if smt else '-'}), forward+backward ms (expert TFLOP/s)")
print(f"{'T':>6} {'d':>5} {'f':>5} {'smt':>16} {'eager_loop':>16} {'grouped_mm':>16} {'dense ceiling':>16}"
      f" {'grouped/smt':>12} {'dense/smt':>10}  smt backend")
def cell(r):
    if r is None: return "-"
    if "error" in r: return "error"
    return f"{r['fwdbwd_ms']:.3f} ({r['fwdbwd_expert_tflops']:.0f})"
def ratio(r, s):
    return f"{r['fwdbwd_ms'] / s['fwdbwd_ms']:.2f}x" if r is not None and "error" not in r else "-"
for s in smt:
    key = (s["T"], s["d"], s["f"])
    eager, grouped, dense = (torch.get((impl,) + key) for impl in ("eager_loop", "grouped_mm", "dense_same_flops"))
    print(f"{s['T']:>6} {s['d']:>5} {s['f']:>5} {cell(s):>16} {cell(eager):>16} {cell(grouped):>16} {cell(dense):>16}"
          f" {ratio(grouped, s):>12} {ratio(dense, s):>10}  {s['precision']} {s['gemm_backend']}")
for r in torch.values():
    if "error" in r: print(f"torch {r['impl']} d={r['d']}: {r['error']}")
PY
