#!/usr/bin/env python3
"""The PyTorch side of B3 (BENCHMARKS.md): times SDPA (dense and causal rows) and
FlexAttention on exactly the masks smt benchmarks, read from `smt bench attention --dump-masks`.
Same shapes, forward and forward+backward separately, median of --repeat after --warmup.

    build/cuda/smt bench attention --device cuda --json smt.jsonl --dump-masks masks.jsonl
    python3 bench/torch_attention.py masks.jsonl --json torch.jsonl

Element rule (src/kernels/attention_pattern.h): a key block listed for a query block is in whole
(kind 0) or only through the window |q - k| <= window (kind 1); causal: k <= q.
"""
import argparse, json, statistics, sys, time

import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention


def block_tables(case, device):
    nb = len(case["q_row_ptr"]) - 1
    listed = torch.zeros(nb, nb, dtype=torch.bool)
    whole = torch.zeros(nb, nb, dtype=torch.bool)
    ptr, col, kind = case["q_row_ptr"], case["q_col_idx"], case["q_kind"]
    for qb in range(nb):
        for i in range(ptr[qb], ptr[qb + 1]):
            listed[qb, col[i]] = True
            whole[qb, col[i]] = kind[i] == 0
    return listed.to(device), whole.to(device)


def make_flex_mask(case, device):
    b, n, causal, window = case["block"], case["seq_len"], case["causal"], case["window"]
    listed, whole = block_tables(case, device)

    def mask_mod(bi, hi, q, k):
        ok = listed[q // b, k // b] & (whole[q // b, k // b] | ((q - k).abs() <= window))
        if causal:
            ok = ok & (k <= q)
        return ok

    if n <= 8192:  # the rule must reproduce smt's exact element density (cheap check below 8k)
        qi = torch.arange(n, device=device).view(-1, 1)
        ki = torch.arange(n, device=device).view(1, -1)
        density = mask_mod(0, 0, qi, ki).double().mean().item()
        if abs(density - case["element_density"]) > 1e-9:
            raise SystemExit(f"{case['pattern']} N={n}: mask density {density} != smt's {case['element_density']}")
    return create_block_mask(mask_mod, None, None, n, n, device=device, BLOCK_SIZE=b)


def timed(fn, warmup, repeat, device):
    out = []
    for i in range(warmup + repeat):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            out.append(time.perf_counter() - t)
    return 1e3 * statistics.median(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("masks", help="JSONL from smt bench attention --dump-masks")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--no-compile", action="store_true", help="eager flex_attention (slow; for CPU smoke tests)")
    ap.add_argument("--json", help="write one JSON object per row")
    a = ap.parse_args()
    dtype = getattr(torch, a.dtype)
    flex = flex_attention if a.no_compile else torch.compile(flex_attention, dynamic=False)
    out = open(a.json, "w") if a.json else None
    name = torch.cuda.get_device_name() if a.device == "cuda" else "cpu"
    print(f"PyTorch {torch.__version__} on {name}, {a.dtype}, median of {a.repeat} after {a.warmup} warm-up")
    print(f"{'impl':<6} {'pattern':<13} {'N':>6} {'B':>3} {'hd':>4} {'elem_den':>8} {'fwd_ms':>9} {'total_ms':>9} {'TFLOP/s':>8}")
    for line in open(a.masks):
        case = json.loads(line)
        B, H, N, hd = case["batch"], case["heads"], case["seq_len"], case["head_dim"]
        g = torch.Generator(device="cpu").manual_seed(1)
        q, k, v, do = (torch.randn(B, H, N, hd, generator=g).to(a.device, dtype) for _ in range(4))
        for t in (q, k, v):
            t.requires_grad_(True)
        impls = []
        if case["pattern"] in ("dense", "causal"):
            causal = case["causal"]
            impls.append(("sdpa", lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)))
        bm = make_flex_mask(case, a.device)
        if a.device == "cpu":  # FlexAttention on the CPU: forward only, inputs without grad
            qd, kd, vd = (t.detach() for t in (q, k, v))
            impls.append(("flex", lambda: flex(qd, kd, vd, block_mask=bm)))
        else:
            impls.append(("flex", lambda: flex(q, k, v, block_mask=bm)))
        for impl, fwd in impls:
            def step():
                o = fwd()
                o.backward(do)
            with torch.no_grad():
                f_ms = timed(fwd, a.warmup, a.repeat, a.device)
            if impl == "flex" and a.device == "cpu":  # FlexAttention has no CPU backward
                t_ms = float("nan")
            else:
                t_ms = timed(step, a.warmup, a.repeat, a.device)
            flops = 3.5 * 4.0 * case["element_density"] * N * N * hd * B * H
            tflops = flops / (t_ms * 1e-3) / 1e12 if t_ms == t_ms else float("nan")
            print(f"{impl:<6} {case['pattern']:<13} {N:>6} {B:>3} {hd:>4} {case['element_density']:>8.3f} "
                  f"{f_ms:>9.3f} {t_ms:>9.3f} {tflops:>8.1f}", flush=True)
            if out:
                out.write(json.dumps({"impl": impl, "pattern": case["pattern"], "seq_len": N, "batch": B, "heads": H,
                                      "head_dim": hd, "causal": case["causal"], "element_density": case["element_density"],
                                      "fwd_ms": f_ms, "total_ms": t_ms, "useful_tflops": tflops, "device": name,
                                      "dtype": a.dtype, "torch": torch.__version__}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
