"""B1 of BENCHMARKS.md on the PyTorch side, built as smt builds the model (src/model/README.md):
byte embedding tied to the LM head, pre-norm blocks with RMSNorm (eps 1e-6), separate q/k/v/o
projections without bias, rotary embedding ("rotate half", theta 10000), causal local attention
(key k allowed for query q when 0 <= q - k <= window, FlexAttention block mask, block 128), an MoE
feed-forward of E experts (Linear(d,f)+bias -> GELU(tanh) -> Linear(f,d)+bias) with a bias-free
router, softmax in fp32, top-k renormalised, dropless, experts through torch._grouped_mm, the
Switch load-balance loss (coeff 1e-2) and the router z-loss (coeff 1e-3); AdamW (fused), bf16
autocast. One JSON line per implementation on stdout ("B1 {...}"): step ms (median of timed steps
after warm-up, CUDA events), tokens/s, peak memory, first-step seconds (includes compilation).

  python3 bench/torch_b1.py [--impl eager,compiled] [--steps 10] [--seq 4096 --batch 8 ...]
"""
import argparse, json, math, time
import torch
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("--impl", default="eager,compiled")
p.add_argument("--vocab", type=int, default=260); p.add_argument("--d", type=int, default=512)
p.add_argument("--layers", type=int, default=8); p.add_argument("--heads", type=int, default=8)
p.add_argument("--experts", type=int, default=8); p.add_argument("--top-k", type=int, default=2)
p.add_argument("--hidden", type=int, default=1024); p.add_argument("--seq", type=int, default=4096)
p.add_argument("--batch", type=int, default=8); p.add_argument("--window", type=int, default=512)
p.add_argument("--block", type=int, default=128)
p.add_argument("--device", default="cuda", help="cpu: a smoke test of this script (no timing value)")
p.add_argument("--warmup", type=int, default=3); p.add_argument("--steps", type=int, default=10)
a = p.parse_args()
dev = a.device
bf = torch.bfloat16
V, d, L, H, E, f, k, N, B, W = a.vocab, a.d, a.layers, a.heads, a.experts, a.hidden, a.top_k, a.seq, a.batch, a.window
D = d // H


class RMSNorm(torch.nn.Module):
    def __init__(s):
        super().__init__(); s.w = torch.nn.Parameter(torch.ones(d))
    def forward(s, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype) * s.w


def rope(x, cos, sin):  # x [B, H, N, D], rotate half
    x1, x2 = x[..., : D // 2], x[..., D // 2 :]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), -1)


def moe(h, blk):
    """h [T, d] -> (y [T, d], aux, z)"""
    T = h.shape[0]
    logits = (h @ blk.router.t()).float()
    probs = torch.softmax(logits, -1)
    topv, topi = probs.topk(k, -1)
    topv = topv / topv.sum(-1, keepdim=True)
    flat = topi.flatten()
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=E)
    offs = torch.cumsum(counts, 0).to(torch.int32)
    tok = order // k
    expert_of_row = flat[order]
    xs = h[tok].to(bf)
    hid = torch._grouped_mm(xs, blk.w1.to(bf), offs=offs) + blk.b1.to(bf)[expert_of_row]
    hid = F.gelu(hid, approximate="tanh")
    ys = torch._grouped_mm(hid, blk.w2.to(bf), offs=offs) + blk.b2.to(bf)[expert_of_row]
    ys = ys * topv.flatten()[order, None].to(bf)
    y = torch.zeros_like(h).index_add(0, tok, ys.to(h.dtype))
    aux = 1e-2 * E / (k * T * T) * (counts.float() * probs.sum(0)).sum()
    z = 1e-3 * torch.logsumexp(logits, -1).pow(2).mean()
    return y, aux, z


class Block(torch.nn.Module):
    def __init__(s):
        super().__init__()
        s.n1, s.n2 = RMSNorm(), RMSNorm()
        std, out_std = 0.02, 0.02 / math.sqrt(2 * L)
        s.wq, s.wk, s.wv = (torch.nn.Parameter(torch.randn(d, d) * std) for _ in range(3))
        s.wo = torch.nn.Parameter(torch.randn(d, d) * out_std)
        s.router = torch.nn.Parameter(torch.randn(E, d) * std)
        s.w1 = torch.nn.Parameter(torch.randn(E, d, f) * std); s.b1 = torch.nn.Parameter(torch.zeros(E, f))
        s.w2 = torch.nn.Parameter(torch.randn(E, f, d) * out_std); s.b2 = torch.nn.Parameter(torch.zeros(E, d))
    def forward(s, x, attn, cos, sin):
        Bb, Nn, _ = x.shape
        a_ = s.n1(x)
        q, kk, v = ((a_ @ w.t()).view(Bb, Nn, H, D).transpose(1, 2) for w in (s.wq, s.wk, s.wv))
        q, kk = rope(q, cos, sin), rope(kk, cos, sin)
        x = x + attn(q, kk, v).transpose(1, 2).reshape(Bb, Nn, d) @ s.wo.t()
        y, aux, z = moe(s.n2(x).view(Bb * Nn, d), s)
        return x + y.view(Bb, Nn, d), aux, z


class Model(torch.nn.Module):
    def __init__(s):
        super().__init__()
        s.emb = torch.nn.Parameter(torch.randn(V, d) * 0.02)
        s.blocks = torch.nn.ModuleList([Block() for _ in range(L)])
        s.nf = RMSNorm()
    def forward(s, tokens, attn, cos, sin):
        with torch.autocast(dev, dtype=bf):
            x = F.embedding(tokens[:, :-1], s.emb)
            aux_total = z_total = 0
            for b in s.blocks:
                x, aux, z = b(x, attn, cos, sin)
                aux_total = aux_total + aux; z_total = z_total + z
            logits = s.nf(x) @ s.emb.t()
            ce = F.cross_entropy(logits.float().view(-1, V), tokens[:, 1:].reshape(-1))
        return ce + aux_total + z_total


def timed(fn, warm, rep):
    gpu = dev == "cuda"
    for _ in range(warm):
        fn()
    if gpu:
        torch.cuda.synchronize()
    ts = []
    for _ in range(rep):
        if gpu:
            s_, e_ = torch.cuda.Event(True), torch.cuda.Event(True)
            s_.record(); fn(); e_.record(); torch.cuda.synchronize()
            ts.append(s_.elapsed_time(e_))
        else:
            t0 = time.perf_counter(); fn(); ts.append((time.perf_counter() - t0) * 1e3)
    ts.sort()
    return ts[len(ts) // 2]


def main():
    from torch.nn.attention.flex_attention import flex_attention, create_block_mask
    inv = 1.0 / (10000 ** (torch.arange(0, D, 2, device=dev).float() / D))
    ang = torch.arange(N, device=dev).float()[:, None] * inv[None]
    cos, sin = ang.cos().to(bf), ang.sin().to(bf)
    bm = create_block_mask(lambda b, h, qq, kk: (qq >= kk) & (qq - kk <= W), None, None, N, N, device=dev,
                           BLOCK_SIZE=a.block)
    flex = torch.compile(flex_attention, dynamic=False)
    print("torch", torch.__version__, torch.cuda.get_device_name() if dev == "cuda" else "cpu", flush=True)
    for impl in a.impl.split(","):
        torch.manual_seed(0)
        m = Model().to(dev)
        opt = torch.optim.AdamW(m.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
        tokens = torch.randint(0, 256, (B, N + 1), device=dev)
        if dev == "cpu":  # FlexAttention has no CPU backward: the same mask through masked SDPA
            qi = torch.arange(N)[:, None]; ki = torch.arange(N)[None]
            dm = (qi >= ki) & (qi - ki <= W)
            fwd = lambda: m(tokens, lambda q, kk, v: F.scaled_dot_product_attention(q, kk, v, attn_mask=dm), cos, sin)
        elif impl == "eager":
            fwd = lambda: m(tokens, lambda q, kk, v: flex(q, kk, v, block_mask=bm), cos, sin)
        elif impl == "compiled":
            cm = torch.compile(m)
            fwd = lambda: cm(tokens, lambda q, kk, v: flex_attention(q, kk, v, block_mask=bm), cos, sin)
        else:
            raise SystemExit(f"unknown --impl {impl}")
        def step():
            loss = fwd(); loss.backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
            opt.step(); opt.zero_grad(set_to_none=True)
            return loss
        if dev == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.time(); first_loss = step().item(); first_s = time.time() - t0
        ms = timed(step, a.warmup, a.steps)
        rec = dict(impl="torch_" + impl, V=V, d=d, L=L, H=H, E=E, f=f, k=k, N=N, B=B, window=W,
                   params_M=sum(q.numel() for q in m.parameters()) / 1e6, step_ms=ms, tokens_per_s=B * N / ms * 1e3,
                   first_step_s=first_s, first_loss=first_loss, peak_mem_GiB=torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else None)
        print("B1 " + json.dumps(rec), flush=True)
        del m, opt
        if dev == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
