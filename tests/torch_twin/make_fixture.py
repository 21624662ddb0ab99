"""Writes the smt parity fixtures (tests/fixtures/parity_*.bin) from the PyTorch twin (twin.py) in float64.

    python3 tests/torch_twin/make_fixture.py        # regenerates every fixture (same bytes every run)

Fixture format (little-endian):
    magic   8 bytes "SMTFIX01"
    then records until EOF, each:
        uint32 name_len, name (utf-8, name_len bytes)
        uint32 dtype            0 = float64, 1 = int64, 2 = utf-8 string
        uint32 ndim, int64 dims[ndim]
        data                    prod(dims) values of dtype (row-major); a string has ndim 1, dims[0] = byte length
    The C++ reader is tests/unit/fixture_io.{h,cpp}.

Records (in this order):
    config                  string: an INI file (top-level `seed = ` = the attention random seed, then [model]
                            and [train] with the keys of src/model/config.h)
    tokens                  [B, N] int64 (BOS first, bytes, EOS, then PAD to the right)
    labels                  [B] int64 (classifier head only)
    param.<name>            every parameter, names and shapes as the table in src/model/README.md
                            (classifier.w/b with either head, [d, num_classes]: the LM head leaves them unused,
                            zero gradient; dense-FFN layers have E = 1 and no router)
    logits                  [B, C] (classifier) or [B, N, V] (lm)
    loss, task_loss, aux_loss, z_loss      [1] each; aux and z summed over the MoE layers (coefficients included)
    grad.<name>             d loss / d param for every parameter (at the initial parameters)
    router_topk_idx.<l>     [T, k] int64, for every MoE layer l (T = B*N, descending probability)
    routed_per_expert.<l>   [E] int64, assignments routed to each expert before capacity dropping
    tokens_per_expert.<l>   [E] int64, assignments kept after capacity dropping
    block_mask.<l>          [nnz, 4] int64 rows (query block, key block, kind 0 = whole / 1 = window, is_full),
                            the attention pattern of layer l as src/kernels/attention_pattern.h lists it
    adamw_loss              [S] total loss at steps 1..S (before each update, same batch), S = train.steps
    adamw_lr                [S] learning rate used at each step
    adamw_grad_norm         [S] global gradient norm before clipping
    adamw_clip_scale        [S] min(1, clip / (norm + 1e-6))
    final_param.<name>      the parameters after the S AdamW updates

Parameters are drawn with torch's generator (seeded per fixture), twin.init_params(test_init=True): matrices
N(0, 0.02) (wo, w2 x 1/sqrt(2L)) except router N(0, 0.3) (decisive top-k) and wq, wk N(0, 0.1) (attention far
from uniform), norms 1 + N(0, 0.1), biases N(0, 0.02). The script asserts properties the fixtures must exercise: capacity
drops in parity_lm, attention rows with no allowed key in parity_lm, clipping active in some fixture, and no
near-ties (top-k logits, clip threshold) that an fp32 implementation could resolve differently.
"""
from __future__ import annotations

import dataclasses
import math
import os
import struct
import sys
from typing import Dict, List, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import twin  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT_DIR = os.path.join(ROOT, "tests", "fixtures")
MAGIC = b"SMTFIX01"
DT_F64, DT_I64, DT_STR = 0, 1, 2

# Margins against decisions an fp32 implementation could take differently from this float64 twin.
MIN_TOPK_LOGIT_GAP = 1e-4    # router logit gap between the k-th and (k+1)-th expert, every token, every step
MIN_CLIP_REL_GAP = 1e-3      # |norm - clip| / clip at every step


@dataclasses.dataclass
class FixtureSpec:
    name: str
    model: twin.ModelConfig
    train: twin.TrainConfig
    attn_seed: int
    torch_seed: int
    row_lengths: List[int]   # tokens before padding, BOS and EOS included (== N: no padding)
    seq_len: int


def train_cfg(clip: float) -> twin.TrainConfig:
    return twin.TrainConfig(lr=1e-2, min_lr_ratio=0.1, warmup=2, steps=5, weight_decay=0.1, clip=clip, beta1=0.9,
                            beta2=0.95, aux_loss_coeff=1e-2, z_loss_coeff=1e-3)


SPECS = [
    FixtureSpec("parity_classifier",
                twin.ModelConfig(d_model=32, layers=2, heads=2, experts=8, top_k=2, expert_hidden=48,
                                 capacity_factor=0.0, moe_every=1, head="classifier", num_classes=2,
                                 attention="bigbird", causal=False, block_size=8, window=8, random_blocks=1,
                                 stride_blocks=4, global_blocks=1),
                train_cfg(clip=1.0), attn_seed=11, torch_seed=1001, row_lengths=[37, 26, 13], seq_len=37),
    FixtureSpec("parity_lm",
                twin.ModelConfig(d_model=32, layers=2, heads=4, experts=8, top_k=2, expert_hidden=32,
                                 capacity_factor=1.0, moe_every=1, head="lm", num_classes=2,
                                 attention="local", causal=True, block_size=8, window=10, random_blocks=2,
                                 stride_blocks=4, global_blocks=1),
                train_cfg(clip=0.5), attn_seed=0, torch_seed=1002, row_lengths=[40, 17], seq_len=40),
    FixtureSpec("parity_sparse",
                twin.ModelConfig(d_model=16, layers=2, heads=2, experts=4, top_k=2, expert_hidden=16,
                                 capacity_factor=0.0, moe_every=2, head="classifier", num_classes=3,
                                 attention="block_sparse", causal=True, block_size=4, window=8, random_blocks=2,
                                 stride_blocks=2, global_blocks=1),
                train_cfg(clip=5.0), attn_seed=0, torch_seed=1003, row_lengths=[30, 19], seq_len=30),
    FixtureSpec("parity_random",
                twin.ModelConfig(d_model=16, layers=2, heads=2, experts=4, top_k=1, expert_hidden=16,
                                 capacity_factor=1.5, moe_every=1, head="classifier", num_classes=2,
                                 attention="random", causal=False, block_size=4, window=8, random_blocks=2,
                                 stride_blocks=4, global_blocks=1),
                train_cfg(clip=1.0), attn_seed=7, torch_seed=1004, row_lengths=[32, 22], seq_len=32),
]


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def config_ini(spec: FixtureSpec, batch: int) -> str:
    m, t = spec.model, spec.train
    model_keys = ["d_model", "layers", "heads", "experts", "top_k", "expert_hidden", "capacity_factor", "moe_every",
                  "head", "num_classes", "attention", "causal", "block_size", "window", "random_blocks",
                  "stride_blocks", "global_blocks"]
    train_keys = ["lr", "min_lr_ratio", "warmup", "steps", "weight_decay", "clip", "beta1", "beta2",
                  "aux_loss_coeff", "z_loss_coeff"]
    lines = [f"seed = {spec.attn_seed}", "", "[model]"]
    lines += [f"{k} = {_fmt(getattr(m, k))}" for k in model_keys]
    lines += ["", "[train]"]
    lines += [f"{k} = {_fmt(getattr(t, k))}" for k in train_keys]
    lines += [f"batch_size = {batch}", f"seq_len = {spec.seq_len}"]
    return "\n".join(lines) + "\n"


class Writer:
    def __init__(self):
        self.chunks: List[bytes] = [MAGIC]
        self.names: set = set()

    def _head(self, name: str, dtype: int, dims: Tuple[int, ...]) -> None:
        assert name not in self.names, name
        self.names.add(name)
        nb = name.encode("utf-8")
        self.chunks.append(struct.pack("<I", len(nb)) + nb + struct.pack("<II", dtype, len(dims)))
        self.chunks.append(struct.pack(f"<{len(dims)}q", *dims))

    def f64(self, name: str, t: torch.Tensor) -> None:
        t = t.detach().to(torch.float64).contiguous()
        dims = tuple(t.shape) if t.dim() > 0 else (1,)
        self._head(name, DT_F64, dims)
        self.chunks.append(struct.pack(f"<{t.numel()}d", *t.reshape(-1).tolist()))

    def i64(self, name: str, t: torch.Tensor) -> None:
        t = t.detach().to(torch.int64).contiguous()
        dims = tuple(t.shape) if t.dim() > 0 else (1,)
        self._head(name, DT_I64, dims)
        self.chunks.append(struct.pack(f"<{t.numel()}q", *t.reshape(-1).tolist()))

    def string(self, name: str, s: str) -> None:
        b = s.encode("utf-8")
        self._head(name, DT_STR, (len(b),))
        self.chunks.append(b)

    def data(self) -> bytes:
        return b"".join(self.chunks)


def make_batch(spec: FixtureSpec, gen: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    B, N = len(spec.row_lengths), spec.seq_len
    tokens = torch.randint(0, 256, (B, N), generator=gen, dtype=torch.int64)
    for b, n in enumerate(spec.row_lengths):
        assert 2 <= n <= N
        tokens[b, 0] = twin.BOS
        tokens[b, n - 1] = twin.EOS
        tokens[b, n:] = twin.PAD
    labels = torch.randint(0, spec.model.num_classes, (B,), generator=gen, dtype=torch.int64)
    return tokens, labels


def min_topk_gap(routing, k: int) -> float:
    gap = math.inf
    for info in routing:
        s = info["topk_logits"]
        if s.shape[1] > k:
            gap = min(gap, float((s[:, k - 1] - s[:, k]).min()))
    return gap


def count_empty_rows(masks: List[torch.Tensor], tokens: torch.Tensor) -> int:
    valid = tokens != twin.PAD
    return sum(int((~(m[None] & valid[:, None, :]).any(-1)).sum()) for m in masks)


def build(spec: FixtureSpec) -> Tuple[bytes, Dict[str, object]]:
    cfg, tc = spec.model, spec.train
    gen = torch.Generator().manual_seed(spec.torch_seed)
    params = twin.init_params(cfg, gen, torch.float64, test_init=True)
    tokens, labels = make_batch(spec, gen)
    is_cls = cfg.head == "classifier"
    lab = labels if is_cls else None
    bmasks = [twin.build_block_mask(cfg.pattern(spec.attn_seed), spec.seq_len, l) for l in range(cfg.layers)]
    masks = [bm.element_mask() for bm in bmasks]

    out, grads = twin.loss_and_grads(params, tokens, lab, cfg, tc, masks)
    stats = dict(dropped=sum(info["dropped"] for info in out["routing"]), empty_rows=count_empty_rows(masks, tokens),
                 gap=min_topk_gap(out["routing"], cfg.top_k))

    w = Writer()
    w.string("config", config_ini(spec, tokens.shape[0]))
    w.i64("tokens", tokens)
    if is_cls:
        w.i64("labels", labels)
    for name, _ in twin.param_shapes(cfg):
        w.f64("param." + name, params[name])
    w.f64("logits", out["logits"])
    for key in ("loss", "task_loss", "aux_loss", "z_loss"):
        w.f64(key, out[key].reshape(1))
    for name, _ in twin.param_shapes(cfg):
        w.f64("grad." + name, grads[name])
    for info in out["routing"]:
        l = info["layer"]
        w.i64(f"router_topk_idx.{l}", info["topk_idx"])
        w.i64(f"routed_per_expert.{l}", info["routed"])
        w.i64(f"tokens_per_expert.{l}", info["kept"])
    for l, bm in enumerate(bmasks):
        w.i64(f"block_mask.{l}", torch.tensor([[qb, kb, kind, int(full)] for qb, kb, kind, full in bm.entries()],
                                               dtype=torch.int64).reshape(-1, 4))

    # AdamW: S steps on the same batch, loss recorded before each update
    cur = {n: p.clone() for n, p in params.items()}
    opt = twin.AdamW(cur, tc)
    losses, lrs, norms, scales = [], [], [], []
    for step in range(1, tc.steps + 1):
        o, g = twin.loss_and_grads(cur, tokens, lab, cfg, tc, masks)
        stats["gap"] = min(stats["gap"], min_topk_gap(o["routing"], cfg.top_k))
        losses.append(float(o["loss"].detach()))
        r = opt.step(g)
        lrs.append(r["lr"])
        norms.append(r["grad_norm"])
        scales.append(r["clip_scale"])
    w.f64("adamw_loss", torch.tensor(losses, dtype=torch.float64))
    w.f64("adamw_lr", torch.tensor(lrs, dtype=torch.float64))
    w.f64("adamw_grad_norm", torch.tensor(norms, dtype=torch.float64))
    w.f64("adamw_clip_scale", torch.tensor(scales, dtype=torch.float64))
    for name, _ in twin.param_shapes(cfg):
        w.f64("final_param." + name, cur[name])

    stats.update(loss=float(out["loss"].detach()), losses=losses, norms=norms, clipped=sum(s < 1.0 for s in scales),
                 clip_gap=min(abs(n - tc.clip) / tc.clip for n in norms))
    return w.data(), stats


def main() -> int:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    twin.check_philox_port()  # the Philox port must match the C++ reference values
    os.makedirs(OUT_DIR, exist_ok=True)
    any_clipped = False
    for spec in SPECS:
        data, st = build(spec)
        path = os.path.join(OUT_DIR, spec.name + ".bin")
        with open(path, "wb") as fh:
            fh.write(data)
        print(f"{spec.name}.bin: {len(data)} bytes, loss {st['loss']:.6f}, adamw losses "
              + " ".join(f"{x:.4f}" for x in st["losses"])
              + f", grad norms {' '.join(f'{x:.3f}' for x in st['norms'])}, clipped steps {st['clipped']}, "
              f"dropped {st['dropped']}, empty attention rows {st['empty_rows']}, min top-k logit gap {st['gap']:.2e}")
        assert st["gap"] > MIN_TOPK_LOGIT_GAP, (spec.name, st["gap"])
        assert st["clip_gap"] > MIN_CLIP_REL_GAP, (spec.name, st["clip_gap"])
        assert st["losses"][-1] < st["losses"][0], (spec.name, st["losses"])
        any_clipped |= st["clipped"] > 0
        if spec.name == "parity_lm":
            assert st["dropped"] > 0, "parity_lm must drop some assignments (capacity)"
            assert st["empty_rows"] > 0, "parity_lm must have attention rows with no allowed key"
    assert any_clipped, "global-norm clipping must be active in at least one fixture"
    return 0


if __name__ == "__main__":
    sys.exit(main())
