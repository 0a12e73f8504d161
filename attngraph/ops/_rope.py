"""Rotary position embedding (RoPE): numpy reference and graph forms.

For a rotated slice of `r` dims (rotary_dim) and position p, pair k (k < r/2) turns by the
angle p * base^(-2k/r). "half-split" (GPT-NeoX / Llama) pairs x[k] with x[k + r/2];
"interleaved" (GPT-J, the RoFormer paper) pairs x[2k] with x[2k+1]:
    (a, b) -> (a cos - b sin, b cos + a sin).
Dims past `r` pass through unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def inv_freq(rotary_dim: int, base: float) -> np.ndarray:
    return 1.0 / base ** (np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim)


def rope_reference(x: np.ndarray, rotary_dim: int, base: float, interleaved: bool,
                   positions: np.ndarray | None = None) -> np.ndarray:
    """x (B, H, S, D) at positions 0 .. S-1, or at `positions` (B, S) -> rotated x."""
    pos = np.arange(x.shape[2]) if positions is None else positions[:, None, :]  # (B, 1, S)
    angles = pos.astype(np.float64)[..., None] * inv_freq(rotary_dim, base)  # (.., S, r/2)
    cos, sin = np.cos(angles), np.sin(angles)
    rot, rest = x[..., :rotary_dim].astype(np.float64), x[..., rotary_dim:]
    if interleaved:
        a, b = rot[..., 0::2], rot[..., 1::2]
        out = np.empty_like(rot)
        out[..., 0::2] = a * cos - b * sin
        out[..., 1::2] = b * cos + a * sin
    else:
        half = rotary_dim // 2
        a, b = rot[..., :half], rot[..., half:]
        out = np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)
    return np.concatenate([out.astype(x.dtype), rest], axis=-1)


def rope_cache(b: Any, x: str, rotary_dim: int, base: float,
               offset: str | None = None) -> tuple[str, str]:
    """cos and sin tables (S, r/2) in the model's dtype for positions 0 .. S-1, S = x's axis 1
    (offset .. offset+S-1 with `offset`, a (1,) int64 tensor: streaming, where no table may
    grow with the frames seen)."""
    seq = b.cast(b.op1("Squeeze", [b.dim(x, 1)]), "float32")
    pos = b.op1("Range", [b.const(np.array(0.0, np.float32), "float32"), seq,
                          b.const(np.array(1.0, np.float32), "float32")])  # (S,)
    if offset is not None:
        pos = b.op1("Add", [pos, b.cast(offset, "float32")])
    freqs = b.const(inv_freq(rotary_dim, base).astype(np.float32)[None, :], "float32")
    angles = b.op1("Mul", [b.unsqueeze(pos, [1]), freqs])  # (S, r/2)
    cos, sin = b.op1("Cos", [angles]), b.op1("Sin", [angles])
    if b.dtype != "float32":
        cos, sin = b.cast(cos, b.dtype), b.cast(sin, b.dtype)
    return cos, sin


def rope_graph(b: Any, x: str, heads: int, head_dim: int, rotary_dim: int, base: float,
               interleaved: bool, positions: tuple[str, str] | None = None,
               offset: str | None = None) -> str:
    """Rotate x (B, S, H*D) at positions 0 .. S-1, or at `positions` = (ids (B, S) int64, a
    tensor whose axis 1 counts the positions to tabulate), or at offset .. offset+S-1 (`offset`
    a (1,) int64 tensor); the standard RotaryEmbedding op (opset 23) when the target allows
    it, else MatMul-free primitives."""
    cos, sin = rope_cache(b, x if positions is None else positions[1], rotary_dim, base,
                          offset if positions is None else None)
    if b.target != "decomposed" and b.opset >= 23:
        if positions is None:
            pos = b.op1("Expand", [b.unsqueeze(b.op1("Range", [
                b.const(np.array(0), "int64"), b.op1("Squeeze", [b.dim(x, 1)]),
                b.const(np.array(1), "int64")]), [0]), b.concat([b.dim(x, 0), b.dim(x, 1)], 0)])
        else:
            pos = positions[0]
        return b.op1("RotaryEmbedding", [x, cos, sin, pos], tag="RotaryEmbedding",
                     interleaved=int(interleaved), num_heads=heads,
                     rotary_embedding_dim=rotary_dim)
    x4 = b.reshape(x, [0, 0, heads, head_dim])  # (B, S, H, D)
    if positions is None:
        cos4, sin4 = b.unsqueeze(cos, [1]), b.unsqueeze(sin, [1])  # (S, 1, r/2)
    else:  # (B, S, 1, r/2)
        cos4 = b.unsqueeze(b.op1("Gather", [cos, positions[0]], axis=0), [2])
        sin4 = b.unsqueeze(b.op1("Gather", [sin, positions[0]], axis=0), [2])
    half = rotary_dim // 2

    def cut(t: str, start: int, end: int) -> str:
        return b.op1("Slice", [t, b.ints([start]), b.ints([end]), b.ints([-1])])

    rot = cut(x4, 0, rotary_dim)  # (B, S, H, r)
    if interleaved:
        pairs = b.reshape(rot, [0, 0, heads, half, 2])  # (B, S, H, r/2, 2)
        a = b.op1("Squeeze", [cut(pairs, 0, 1), b.ints([-1])])
        c = b.op1("Squeeze", [cut(pairs, 1, 2), b.ints([-1])])
    else:
        a, c = cut(rot, 0, half), cut(rot, half, rotary_dim)  # (B, S, H, r/2) each
    first = b.op1("Sub", [b.op1("Mul", [a, cos4]), b.op1("Mul", [c, sin4])])
    second = b.op1("Add", [b.op1("Mul", [c, cos4]), b.op1("Mul", [a, sin4])])
    if interleaved:
        out = b.reshape(b.concat([b.unsqueeze(first, [-1]), b.unsqueeze(second, [-1])], -1),
                        [0, 0, heads, rotary_dim])
    else:
        out = b.concat([first, second], -1)
    if rotary_dim < head_dim:
        out = b.concat([out, cut(x4, rotary_dim, head_dim)], -1)
    return b.reshape(out, [0, 0, heads * head_dim])  # (B, S, H*D)
