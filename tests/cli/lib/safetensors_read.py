"""Reads a safetensors file (as `smt export --format safetensors` writes it) for the CLI tests.

tensors(path) -> {name: raw little-endian bytes};  floats(path) -> {name: tuple of fp32 values}.
Usage from a test's inline Python: sys.path.insert(0, LIB_DIR); from safetensors_read import tensors, floats
"""
import json
import struct


def tensors(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    data = raw[8 + n:]
    return {k: data[v["data_offsets"][0]:v["data_offsets"][1]] for k, v in header.items()}


def floats(path):
    return {k: struct.unpack(f"<{len(b) // 4}f", b) for k, b in tensors(path).items()}
