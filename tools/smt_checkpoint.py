#!/usr/bin/env python3
"""Read smt checkpoints (HDF5, see src/io/CHECKPOINT_FORMAT.md) and their safetensors exports.

    import smt_checkpoint as sc                       # tools/ on sys.path
    ck = sc.load("runs/x/checkpoints/step-00000100.h5")
    ck["config"]            # the resolved INI text
    ck["params"]["layers.0.experts.w1"]                # numpy float32 [E, d, f]
    ck["adam_m"], ck["adam_v"], ck["state"]["step"], ck["last_metrics"]
    sc.load("model.safetensors")                      # same keys; params only, state from __metadata__
    sd = sc.to_twin_state_dict(ck)                    # {name: torch.Tensor} for tests/torch_twin/twin.py

Command line:
    python3 tools/smt_checkpoint.py CKPT                      # summary (config, state, tensors with norms)
    python3 tools/smt_checkpoint.py --check-twin CKPT [--tokens FILE.json] [--dtype float64|float32]
        builds the PyTorch twin from the checkpoint's config and parameters and prints one JSON object
        {"tokens", "labels", "logits", "loss", ...} for a sample batch (sample_batch() below, or the rows of
        --tokens: a JSON list of token-id lists, right-padded with PAD = 256, optional {"tokens":..,"labels":..}).

Needs numpy, and h5py for .h5 files (safetensors files are parsed directly); --check-twin needs torch.
Every tensor's crc32 attribute is verified on load (verify=False skips it).
"""
from __future__ import annotations

import argparse
import configparser
import json
import os
import struct
import sys
import zlib
from typing import Dict, List, Optional, Tuple

import numpy as np

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAD, BOS, EOS = 256, 257, 258


class CheckpointError(Exception):
    pass


def _text(v) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, np.ndarray) and v.shape == ():
        return _text(v[()])
    return str(v)


def _crc32(arr: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(arr, dtype="<f4").tobytes()) & 0xFFFFFFFF


def _load_hdf5(path: str, verify: bool) -> dict:
    import h5py  # noqa: WPS433 (only needed for HDF5 files)

    with h5py.File(path, "r") as f:
        if "smt_checkpoint" not in f.attrs:
            raise CheckpointError(f"{path} is an HDF5 file but not an smt checkpoint (no smt_checkpoint attribute)")
        version = int(f.attrs["format_version"])
        if version > 1:
            raise CheckpointError(f"checkpoint {path} has format version {version}, this reader reads up to 1")
        names = [n for n in _text(f.attrs.get("tensor_names", "")).split("\n") if n] or list(f["params"].keys())

        def group(prefix: str) -> Dict[str, np.ndarray]:
            out = {}
            g = f[prefix]
            for n in names + sorted(set(g.keys()) - set(names)):
                if n not in g:
                    raise CheckpointError(f"checkpoint {path}: dataset /{prefix}/{n} is missing")
                ds = g[n]
                arr = ds[()].astype(np.float32, copy=False)
                if verify:
                    if "crc32" not in ds.attrs:
                        raise CheckpointError(f"checkpoint {path}: /{prefix}/{n} has no crc32 attribute")
                    if _crc32(arr) != int(ds.attrs["crc32"]):
                        raise CheckpointError(f"checkpoint {path}: checksum mismatch in /{prefix}/{n}: the file is corrupted")
                out[n] = arr
            return out

        st = f["state"]
        state = {k: int(st.attrs[k]) for k in ("step", "tokens_seen", "loader_epoch", "loader_position", "data_seed")}
        state["rng"] = {n: {k: int(g.attrs[k]) for k in ("seed", "stream", "position")}
                        for n, g in st["rng"].items()} if "rng" in st else {}
        ck = {
            "format": "hdf5",
            "path": path,
            "format_version": version,
            "created_by": _text(f.attrs.get("created_by", "")),
            "config": _text(f.attrs["config"]),
            "last_metrics": _text(f.attrs.get("last_metrics", "")),
            "state": state,
            "params": group("params"),
            "adam_m": group("optimizer/adam_m"),
            "adam_v": group("optimizer/adam_v"),
        }
        if "master" in f:  # GPU builds, only where masters differ from params
            ck["master"] = {n: f["master"][n][()] for n in f["master"].keys()}
    return ck


def _load_safetensors(path: str) -> dict:
    with open(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 8:
        raise CheckpointError(f"{path} is too short for a safetensors file")
    (hlen,) = struct.unpack("<Q", raw[:8])
    if 8 + hlen > len(raw):
        raise CheckpointError(f"{path}: safetensors header length {hlen} exceeds the file size")
    header = json.loads(raw[8:8 + hlen].decode("utf-8"))
    meta = header.pop("__metadata__", {}) or {}
    data = memoryview(raw)[8 + hlen:]
    params = {}
    for name, info in header.items():
        if info["dtype"] != "F32":
            raise CheckpointError(f"{path}: tensor {name} has dtype {info['dtype']}, expected F32")
        b, e = info["data_offsets"]
        params[name] = np.frombuffer(data[b:e], dtype="<f4").reshape(info["shape"]).copy()
    return {
        "format": "safetensors",
        "path": path,
        "format_version": int(meta.get("format_version", 1)),
        "created_by": meta.get("source", ""),
        "config": meta.get("config", ""),
        "last_metrics": "",
        "state": {"step": int(meta.get("step", 0)), "tokens_seen": int(meta.get("tokens_seen", 0))},
        "params": params,
    }


def load(path: str, verify: bool = True) -> dict:
    """The checkpoint (or safetensors export) at `path` as a dict: config (INI text), params / adam_m /
    adam_v ({name: float32 array}, layout order), state, format_version, created_by, last_metrics."""
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head == HDF5_SIGNATURE:
        return _load_hdf5(path, verify)
    return _load_safetensors(path)


def parse_config(text: str) -> Dict[str, str]:
    """INI text -> {"seed": "1234", "model.d_model": "128", ...} (top-level keys without a section)."""
    cp = configparser.ConfigParser(interpolation=None)
    cp.optionxform = str
    cp.read_string("[__top__]\n" + text)
    out = {}
    for sec in cp.sections():
        for k, v in cp.items(sec):
            out[k if sec == "__top__" else f"{sec}.{k}"] = v
    return out


def _convert(value: str, typ: str):
    if typ == "bool":
        return value.strip().lower() in ("1", "true", "yes", "on")
    if typ == "int":
        return int(value)
    if typ == "float":
        return float(value)
    return value


def _twin():
    sys.path.insert(0, os.path.join(ROOT, "tests", "torch_twin"))
    import twin  # noqa: E402

    return twin


def twin_configs(config_text: str):
    """(twin.ModelConfig, twin.TrainConfig, seed, seq_len) from a checkpoint's INI text."""
    import dataclasses

    twin = _twin()
    kv = parse_config(config_text)

    def build(cls, section):
        args = {}
        for field in dataclasses.fields(cls):
            key = f"{section}.{field.name}"
            if key in kv:
                args[field.name] = _convert(kv[key], field.type if isinstance(field.type, str) else field.type.__name__)
        return cls(**args)

    return build(twin.ModelConfig, "model"), build(twin.TrainConfig, "train"), int(kv.get("seed", 0)), int(
        kv.get("train.seq_len", 256))


def to_twin_state_dict(ck: dict, dtype=None) -> dict:
    """{name: torch.Tensor} with the names and shapes of twin.param_shapes (checked), default float64."""
    import torch

    twin = _twin()
    cfg, _, _, _ = twin_configs(ck["config"])
    dtype = dtype or torch.float64
    out = {}
    for name, shape in twin.param_shapes(cfg):
        if name not in ck["params"]:
            raise CheckpointError(f"{ck['path']}: parameter {name} is missing")
        arr = ck["params"][name]
        if tuple(arr.shape) != tuple(shape):
            raise CheckpointError(f"{ck['path']}: {name}: file {list(arr.shape)}, twin {list(shape)}")
        out[name] = torch.from_numpy(np.array(arr, dtype=np.float32)).to(dtype)
    return out


def sample_batch(seq_len: int, num_classes: int) -> Tuple[List[List[int]], List[int]]:
    """Two rows: a full one (BOS, bytes (7i+3)%256, EOS) and a half one (BOS, bytes (11i+5)%256, EOS, PAD...);
    labels [0, 1 % num_classes]."""
    n = seq_len
    row0 = [BOS] + [(7 * i + 3) % 256 for i in range(n - 2)] + [EOS]
    half = max(n // 2, 3)
    row1 = [BOS] + [(11 * i + 5) % 256 for i in range(half - 2)] + [EOS]
    row1 += [PAD] * (n - len(row1))
    return [row0, row1], [0, 1 % max(num_classes, 1)]


def check_twin(path: str, tokens_file: Optional[str], dtype_name: str) -> dict:
    import torch

    twin = _twin()
    ck = load(path)
    cfg, tc, seed, seq_len = twin_configs(ck["config"])
    if tokens_file:
        with open(tokens_file) as fh:
            spec = json.load(fh)
        rows = spec["tokens"] if isinstance(spec, dict) else spec
        labels = spec.get("labels") if isinstance(spec, dict) else None
        labels = labels if labels is not None else [i % max(cfg.num_classes, 1) for i in range(len(rows))]
    else:
        rows, labels = sample_batch(seq_len, cfg.num_classes)
    dtype = {"float64": torch.float64, "float32": torch.float32}[dtype_name]
    params = to_twin_state_dict(ck, dtype)
    tokens = torch.tensor(rows, dtype=torch.int64)
    lab = torch.tensor(labels, dtype=torch.int64)
    masks = twin.build_masks(cfg, tokens.shape[1], seed)
    with torch.no_grad():
        out = twin.forward(params, tokens, lab if cfg.head == "classifier" else None, cfg, tc, masks)
    return {
        "checkpoint": path,
        "step": ck["state"]["step"],
        "head": cfg.head,
        "attention_seed": seed,
        "tokens": rows,
        "labels": labels,
        "logits": out["logits"].to(torch.float64).tolist(),
        "loss": float(out["loss"]),
        "task_loss": float(out["task_loss"]),
    }


def summary(ck: dict) -> str:
    lines = [f"{ck['path']} ({ck['format']}, format version {ck['format_version']}, {ck['created_by']})",
             "state: " + ", ".join(f"{k} {v}" for k, v in ck["state"].items()), "config:"]
    lines += ["  " + ln for ln in ck["config"].splitlines() if ln.strip()]
    for group in ("params", "adam_m", "adam_v", "master"):
        for name, arr in ck.get(group, {}).items():
            lines.append(f"  {group}/{name:32s} {str(list(arr.shape)):16s} {arr.dtype}  norm "
                         f"{float(np.linalg.norm(arr.astype(np.float64))):.6g}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", nargs="?")
    ap.add_argument("--check-twin", metavar="CKPT", help="print the twin's logits on a sample batch as JSON")
    ap.add_argument("--tokens", help="JSON token rows for --check-twin (default: sample_batch)")
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    ap.add_argument("--no-verify", action="store_true", help="skip the crc32 checks")
    args = ap.parse_args(argv)
    try:
        if args.check_twin:
            print(json.dumps(check_twin(args.check_twin, args.tokens, args.dtype)))
            return 0
        if not args.checkpoint:
            ap.print_help()
            return 2
        print(summary(load(args.checkpoint, verify=not args.no_verify)))
        return 0
    except (CheckpointError, OSError, KeyError, ValueError) as e:
        print(f"smt_checkpoint: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
