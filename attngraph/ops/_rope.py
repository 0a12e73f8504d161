"""Rotary position embedding (RoPE): numpy reference and graph forms.

For a rotated slice of `r` dims (rotary_dim) and position p, pair k (k < r/2) turns by the
angle p * base^(-2k/r). "half-split" (GPT-NeoX / Llama) pairs x[k] with x[k + r/2];
"interleaved" (GPT-J, the RoFormer paper) pairs x[2k] with x[2k+1]:
    (a, b) -> (a cos - b sin, b cos + a sin).
Dims past `r` pass through unchanged.

Scaling (Hugging Face's `rope_scaling` / `rope_parameters`) only changes the frequencies:
    ("linear", f):  every frequency divided by f (positions p / f);
    ("llama3", f, low, high, L): wavelengths 2 pi / freq longer than L / low are divided by f,
        shorter than L / high kept, and those between interpolated with
        s = (L / wavelength - low) / (high - low): freq ((1 - s) / f + s).
A layer's rope spec is (rotary_dim, base, interleaved) or (rotary_dim, base, interleaved,
scaling) with scaling one of those tuples.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SCALING_KINDS = {"linear": ("factor",),
                 "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                            "original_max_position_embeddings")}
Scaling = tuple[Any, ...]


def scaling_spec(value: Any) -> tuple[Scaling | None, list[str]]:
    """A rope-scaling dict ({"rope_type": "linear", "factor": 2.0}, or "llama3" with
    low_freq_factor, high_freq_factor, original_max_position_embeddings) -> (spec, problems).
    None or rope_type "default" mean no scaling."""
    if value is None:
        return None, []
    if not isinstance(value, dict):
        return None, [f"expected a dict with 'rope_type', given {value!r}"]
    kind = value.get("rope_type", value.get("type", "default"))
    if kind == "default":
        return None, []
    if kind not in SCALING_KINDS:
        return None, [(f"rope_type {kind!r} is not implemented (supported: 'default', "
                      f"{', '.join(map(repr, SCALING_KINDS))})")]
    problems, numbers = [], []
    for key in SCALING_KINDS[kind]:
        v = value.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            problems.append(f"rope_type {kind!r} needs a positive number {key!r}, given {v!r}")
        else:
            numbers.append(float(v))
    if not problems and kind == "llama3" and not numbers[2] > numbers[1]:
        problems.append(f"llama3 needs high_freq_factor > low_freq_factor, given "
                        f"{numbers[2]} and {numbers[1]}")
    return (None if problems else (kind, *numbers)), problems


def rope_parts(spec: tuple[Any, ...]) -> tuple[int, float, bool, Scaling | None]:
    """(rotary_dim, base, interleaved, scaling) of a layer's rope spec."""
    return spec[0], spec[1], spec[2], spec[3] if len(spec) > 3 else None


def inv_freq(rotary_dim: int, base: float, scaling: Scaling | None = None) -> np.ndarray:
    """The r/2 rotation frequencies base^(-2k/r), scaled as the module docstring says."""
    freq = 1.0 / base ** (np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim)
    if scaling is None:
        return freq
    factor = scaling[1]
    if scaling[0] == "linear":
        return freq / factor
    low, high, old_len = scaling[2:]
    wavelen = 2 * np.pi / freq
    smooth = (old_len / wavelen - low) / (high - low)
    mid = (1 - smooth) * freq / factor + smooth * freq
    return np.where(wavelen > old_len / low, freq / factor,
                    np.where(wavelen < old_len / high, freq, mid))


def rope_reference(x: np.ndarray, rotary_dim: int, base: float, interleaved: bool,
                   positions: np.ndarray | None = None, scaling: Scaling | None = None
                   ) -> np.ndarray:
    """x (B, H, S, D) at positions 0 .. S-1, or at `positions` (B, S) -> rotated x."""
    pos = np.arange(x.shape[2]) if positions is None else positions[:, None, :]  # (B, 1, S)
    angles = pos.astype(np.float64)[..., None] * inv_freq(rotary_dim, base, scaling)  # (.., S, r/2)
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


def rope_cache(b: Any, x: str, rotary_dim: int, base: float, scaling: Scaling | None = None,
               offset: str | None = None) -> tuple[str, str]:
    """cos and sin tables (S, r/2) in the model's dtype for positions 0 .. S-1, S = x's axis 1
    (offset .. offset+S-1 with `offset`, a (1,) int64 tensor: streaming, where no table may
    grow with the frames seen)."""
    seq = b.cast(b.op1("Squeeze", [b.dim(x, 1)]), "float32")
    pos = b.op1("Range", [b.const(np.array(0.0, np.float32), "float32"), seq,
                          b.const(np.array(1.0, np.float32), "float32")])  # (S,)
    if offset is not None:
        pos = b.op1("Add", [pos, b.cast(offset, "float32")])
    freqs = b.const(inv_freq(rotary_dim, base, scaling).astype(np.float32)[None, :], "float32")
    angles = b.op1("Mul", [b.unsqueeze(pos, [1]), freqs])  # (S, r/2)
    cos, sin = b.op1("Cos", [angles]), b.op1("Sin", [angles])
    if b.dtype != "float32":
        cos, sin = b.cast(cos, b.dtype), b.cast(sin, b.dtype)
    return cos, sin


def rope_graph(b: Any, x: str, heads: int, head_dim: int, rotary_dim: int, base: float,
               interleaved: bool, positions: tuple[str, str] | None = None,
               scaling: Scaling | None = None, offset: str | None = None) -> str:
    """Rotate x (B, S, H*D) at positions 0 .. S-1, or at `positions` = (ids (B, S) int64, a
    tensor whose axis 1 counts the positions to tabulate), or at offset .. offset+S-1 (`offset`
    a (1,) int64 tensor); the standard RotaryEmbedding op (opset 23) when the target allows
    it, else MatMul-free primitives."""
    cos, sin = rope_cache(b, x if positions is None else positions[1], rotary_dim, base,
                          scaling, offset if positions is None else None)
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
