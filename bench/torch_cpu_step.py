"""Benchmark C1 (shared/BENCHMARKS.md) on the CPU with the PyTorch twin (tests/torch_twin/twin.py) in float32.

Config C1: vocab 260, d 256, 4 layers, 4 heads (dim 64), 8 experts top-2, expert hidden 512, causal local
window 128 (the twin's block mask as a dense boolean mask for F.scaled_dot_product_attention), sequence 512,
batch 8 (4,096 tokens/step), LM head, AdamW (torch.optim.AdamW, decay as twin.decays: rank >= 2, not biases, global-norm clip 1.0).
One step = forward + backward + clip + AdamW. Prints one JSON line (timings in seconds, median over --steps):
    {"impl": "pytorch-eager", "torch": ..., "threads": N, "step_s": ..., "tokens_per_s": ...}

    python3 bench/torch_cpu_step.py --threads 1 --steps 5 --warmup 1
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "torch_twin"))
import twin  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="C1 CPU training step with the PyTorch twin (float32)")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    ap.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = twin.ModelConfig(d_model=256, layers=4, heads=4, experts=8, top_k=2, expert_hidden=512,
                           capacity_factor=0.0, moe_every=1, head="lm", attention="local", causal=True,
                           block_size=64, window=128)
    tc = twin.TrainConfig(lr=1e-3, weight_decay=0.1, clip=1.0)
    gen = torch.Generator().manual_seed(args.seed)
    params = {n: p.requires_grad_(True) for n, p in twin.init_params(cfg, gen, torch.float32).items()}
    num_params = sum(p.numel() for p in params.values())
    masks = twin.build_masks(cfg, args.seq, seed=0)
    tokens = torch.randint(0, 256, (args.batch, args.seq), generator=gen)
    tokens[:, 0] = twin.BOS
    decay = [p for n, p in params.items() if twin.decays(n, p)]
    no_decay = [p for n, p in params.items() if not twin.decays(n, p)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=tc.lr, betas=(tc.beta1, tc.beta2), eps=tc.eps)
    plist = list(params.values())

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        out = twin.forward(params, tokens, None, cfg, tc, masks, attn_impl="sdpa", use_key_padding=False)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(plist, tc.clip)
        opt.step()
        return float(out["loss"].detach())

    times, losses = [], []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        losses.append(step())
        dt = time.perf_counter() - t0
        if i >= args.warmup:
            times.append(dt)
    med = statistics.median(times)
    print(f"# params {num_params}, tokens/step {args.batch * args.seq}, step times {[round(t, 3) for t in times]}, "
          f"loss {losses[0]:.4f} -> {losses[-1]:.4f}", file=sys.stderr)
    print(json.dumps({"impl": "pytorch-eager", "torch": torch.__version__, "threads": args.threads,
                      "step_s": round(med, 4), "tokens_per_s": round(args.batch * args.seq / med, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
