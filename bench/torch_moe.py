#!/usr/bin/env python3
"""The PyTorch side of B2 (BENCHMARKS.md): one top-k MoE layer, forward and forward+backward, bf16,
on one GPU, in three forms:

  eager_loop        router, top-k, sort by expert, one matmul pair per expert in a Python loop
  grouped_mm        the same routing, the experts as two torch._grouped_mm calls
  dense_same_flops  a dense FFN with hidden k*f: the same expert FLOPs without routing (the ceiling)

Sizes and FLOP count are smt bench moe's: T tokens, E experts, top-k, rows (d x f) 1024x4096 and
512x1024 by default; expert FLOPs = 3 * (k*T * 2 * 2*d*f) (forward + backward of the two expert
GEMMs). Times are CUDA-event medians of --repeat after --warmup. One JSON object per line on stdout
(the keys of smt bench moe --json), or an error line per form that could not run.

    python3 bench/torch_moe.py [--tokens 32768] [--d 1024 --f 4096] [--impl grouped_mm,dense_same_flops]
"""
import argparse
import json
import statistics
import sys

import torch
import torch.nn.functional as F


def time_ms(fn, warmup, repeat):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def route(x, wr, k):
    """Softmax router in fp32, top-k renormalised; assignments sorted by expert (stable)."""
    probs = torch.softmax((x @ wr).float(), dim=-1)
    weight, expert = probs.topk(k, dim=-1)
    weight = (weight / weight.sum(dim=-1, keepdim=True)).to(x.dtype)
    flat = expert.reshape(-1)
    order = torch.argsort(flat, stable=True)
    token = order // k
    return flat, order, token, weight.reshape(-1)[order]


def combine(x, token, rows_out, w_sorted):
    return torch.zeros_like(x).index_add(0, token, rows_out * w_sorted[:, None])


def moe_eager_loop(x, wr, w1, w2, k):
    num_experts = w1.shape[0]
    flat, order, token, w_sorted = route(x, wr, k)
    counts = torch.bincount(flat, minlength=num_experts).tolist()  # host sync, as any loop over experts
    rows = x[token]
    outs, start = [], 0
    for e, n in enumerate(counts):
        h = F.gelu(rows[start:start + n] @ w1[e], approximate="tanh")
        outs.append(h @ w2[e])
        start += n
    return combine(x, token, torch.cat(outs), w_sorted)


def moe_grouped_mm(x, wr, w1, w2, k):
    num_experts = w1.shape[0]
    flat, order, token, w_sorted = route(x, wr, k)
    ends = torch.bincount(flat, minlength=num_experts).cumsum(0).to(torch.int32)
    rows = x[token]
    h = F.gelu(torch._grouped_mm(rows, w1, offs=ends), approximate="tanh")
    return combine(x, token, torch._grouped_mm(h, w2, offs=ends), w_sorted)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--d", type=int, default=0, help="with --f; default both B2 rows")
    ap.add_argument("--f", type=int, default=0)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--impl", default="eager_loop,grouped_mm,dense_same_flops")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if (a.d > 0) != (a.f > 0):
        ap.error("--d and --f go together")
    if not torch.cuda.is_available():
        print("torch_moe.py: no CUDA device", file=sys.stderr)
        return 1
    sizes = [(a.d, a.f)] if a.d > 0 else [(1024, 4096), (512, 1024)]
    impls = a.impl.split(",")
    dev, bf16 = "cuda", torch.bfloat16
    gpu = torch.cuda.get_device_name(0)
    torch.manual_seed(a.seed)
    T, E, k = a.tokens, a.experts, a.top_k
    for d, f in sizes:
        x = torch.randn(T, d, device=dev, dtype=bf16, requires_grad=True)
        wr = (torch.randn(d, E, device=dev) * d ** -0.5).to(bf16).requires_grad_()
        w1 = (torch.randn(E, d, f, device=dev) * d ** -0.5).to(bf16).requires_grad_()
        w2 = (torch.randn(E, f, d, device=dev) * f ** -0.5).to(bf16).requires_grad_()
        dy = torch.randn(T, d, device=dev, dtype=bf16)
        flops = 3 * (k * T * 2 * 2 * d * f)
        base = dict(impl=None, device="cuda", gpu=gpu, torch=torch.__version__, precision="bf16", T=T, d=d, f=f,
                    E=E, k=k)
        for impl in impls:
            row = dict(base, impl=impl)
            try:
                if impl == "dense_same_flops":
                    a1 = (torch.randn(d, k * f, device=dev) * d ** -0.5).to(bf16).requires_grad_()
                    a2 = (torch.randn(k * f, d, device=dev) * (k * f) ** -0.5).to(bf16).requires_grad_()
                    fwd = lambda: F.gelu(x @ a1, approximate="tanh") @ a2
                else:
                    layer = {"eager_loop": moe_eager_loop, "grouped_mm": moe_grouped_mm}[impl]
                    fwd = lambda layer=layer: layer(x, wr, w1, w2, k)

                def fwd_only():  # with autograd on: the forward saves what its backward needs, as smt's does
                    fwd()

                def fwd_bwd():
                    fwd().backward(dy)

                row["fwd_ms"] = time_ms(fwd_only, a.warmup, a.repeat)
                row["fwdbwd_ms"] = time_ms(fwd_bwd, a.warmup, a.repeat)
                row["fwdbwd_expert_tflops"] = flops / (row["fwdbwd_ms"] * 1e-3) / 1e12
                row["tokens_per_s"] = T / (row["fwdbwd_ms"] * 1e-3)
            except Exception as ex:  # report and go on with the other forms
                row["error"] = repr(ex)[:300]
            print(json.dumps(row), flush=True)
            x.grad = wr.grad = w1.grad = w2.grad = None
        del x, wr, w1, w2, dy
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
