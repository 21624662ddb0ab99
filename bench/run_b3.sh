#!/usr/bin/env bash
# B3 on the GPU machine, both sides in one run on the same GPU: smt's attention kernels and
# PyTorch's SDPA / FlexAttention on exactly the same masks, then one comparison table.
#   bash bench/run_b3.sh OUT_DIR [extra smt bench attention flags, e.g. --seq 4096,16384]
# Needs build/cuda/smt (cuda preset) and python3 with torch >= 2.5 (FlexAttention).
# smt runs its bf16 flash kernels (SMT_B3_KERNEL=reference times the fp32 reference kernels instead;
# SMT_B3_DQ=deterministic the deterministic dq pass).
set -euo pipefail
out=${1:?usage: bench/run_b3.sh OUT_DIR [smt bench attention flags]}; shift
mkdir -p "$out"
smt=${SMT_BIN:-build/cuda/smt}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
"$smt" bench attention --device cuda --kernel "${SMT_B3_KERNEL:-flash}" --dq "${SMT_B3_DQ:-atomic}" --json "$out/smt.jsonl" --dump-masks "$out/masks.jsonl" "$@" | tee "$out/smt.txt"
python3 "$(dirname "$0")/torch_attention.py" "$out/masks.jsonl" --json "$out/torch.jsonl" | tee "$out/torch.txt"
python3 - "$out" <<'PY' | tee "$out/compare.txt"
import json, sys
d = sys.argv[1]
smt = {(r["pattern"], r["seq_len"], r["head_dim"]): r for r in map(json.loads, open(d + "/smt.jsonl"))}
torch = {}
for r in map(json.loads, open(d + "/torch.jsonl")):
    torch[(r["impl"], r["pattern"], r["seq_len"], r["head_dim"])] = r
print(f"{'pattern':<13} {'N':>6} {'hd':>4} {'smt fwd/total ms':>18} {'flex fwd/total ms':>19} {'sdpa fwd/total':>16} {'flex/smt':>9}")
for key, s in smt.items():
    f = torch.get(("flex",) + key); p = torch.get(("sdpa",) + key)
    fs = f"{f['fwd_ms']:.3f}/{f['total_ms']:.3f}" if f else "-"
    ps = f"{p['fwd_ms']:.3f}/{p['total_ms']:.3f}" if p else "-"
    ratio = f"{f['total_ms'] / s['total_ms']:.2f}x" if f else "-"
    print(f"{key[0]:<13} {key[1]:>6} {key[2]:>4} {s['fwd_ms']:>8.3f}/{s['total_ms']:<9.3f} {fs:>19} {ps:>16} {ratio:>9}")
PY
