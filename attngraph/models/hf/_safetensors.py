"""safetensors files as read-only memory maps: no copy, no torch.

The format: an 8-byte little-endian header length N, N bytes of JSON {name: {"dtype", "shape",
"data_offsets": [begin, end]}, "__metadata__": {...}}, then the raw little-endian tensor bytes
(offsets count from the end of the header). The header is parsed here and every tensor is a
view of one `np.memmap` of the file, so reading a checkpoint costs page faults, not copies.
`safetensors.numpy` is not used for reading: it copies each tensor into memory, and numpy has
no bfloat16, so it cannot read bf16 checkpoints at all. A BF16 tensor is returned as its raw
uint16 bits; `bf16_to_f32` widens it (a 16-bit shift, exact).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

# safetensors dtype -> numpy dtype of the stored bytes (BF16: the raw bits)
DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4",
          "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}
MAX_HEADER = 100_000_000  # the limit the reference implementation applies


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32: the same bits in the upper half."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def read_safetensors(path: str) -> tuple[dict[str, tuple[str, np.ndarray]], list[str]]:
    """{name: (stored dtype, read-only array)} and a list of problems (empty when the file is
    sound). A tensor whose header entry is broken is left out and named in the problems."""
    name = os.path.basename(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n < 0 or n > min(size - 8, MAX_HEADER):
                return {}, [(f"{name}: not a safetensors file (header length "
                            f"{'missing' if n < 0 else n} in a {size}-byte file)")]
            raw = f.read(n)
    except OSError as exc:
        return {}, [f"{name}: cannot read: {exc.strerror or exc}"]
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return {}, [f"{name}: corrupt safetensors header ({exc})"]
    if not isinstance(header, dict):
        return {}, [f"{name}: corrupt safetensors header (not a JSON object)"]
    header.pop("__metadata__", None)
    start, data_size = 8 + n, size - 8 - n
    problems: list[str] = []
    entries = {}
    for key, entry in header.items():
        problem = _check_entry(entry, data_size)
        if problem:
            problems.append(f"{name}: tensor {key!r}: {problem}")
        else:
            entries[key] = entry
    mm = np.memmap(path, dtype=np.uint8, mode="r") if size > start else None
    out: dict[str, tuple[str, np.ndarray]] = {}
    for key, entry in entries.items():
        begin, end = entry["data_offsets"]
        dtype = np.dtype(DTYPES[entry["dtype"]])
        if begin == end or mm is None:
            array = np.zeros(entry["shape"], dtype)
            array.setflags(write=False)
        else:
            array = mm[start + begin:start + end].view(dtype).reshape(entry["shape"])
        out[key] = (entry["dtype"], array)
    return out, problems


def _check_entry(entry: Any, data_size: int) -> str | None:
    if not isinstance(entry, dict):
        return "header entry is not an object"
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPES:
        return f"dtype {dtype!r} is not supported (supported: {', '.join(DTYPES)})"
    if not isinstance(shape, list) or any(isinstance(d, bool) or not isinstance(d, int) or d < 0
                                          for d in shape):
        return f"shape {shape!r} is not a list of sizes"
    if not (isinstance(offsets, list) and len(offsets) == 2 and
            all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
        return f"data_offsets {offsets!r} is not [begin, end]"
    begin, end = offsets
    if not 0 <= begin <= end <= data_size:
        return (f"data_offsets {offsets} lie outside the {data_size} data bytes "
                f"(truncated file?)")
    expected = math.prod(shape) * np.dtype(DTYPES[dtype]).itemsize
    if end - begin != expected:
        return f"holds {end - begin} bytes, but {dtype}{shape} needs {expected}"
    return None
