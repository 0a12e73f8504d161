"""Graph pieces shared by the attention lowerings: head layout, masks, fully-masked-row fix-up.

Every lowering builds the same semantics (DESIGN §4); what a fused op cannot express natively
is turned into an explicit boolean "allow" mask [B|1, H|1, Sq, Sk] (True = attend) and, where
rows can be fully masked, a fix-up that writes zeros into those rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Attn:
    """Static facts about one attention layer, read by every lowering."""

    hq: int
    hkv: int
    d: int
    dv: int
    causal: bool
    window: int | tuple[int, int] | None
    scale: float
    softcap: float | None
    mask_kind: str | None  # None, "bool" or "float"
    mask_rank: int
    has_kpm: bool
    kpm_bool: bool
    same_len: bool  # Sq == Sk for certain (self-attention)
    return_weights: bool
    cross: bool
    rope: tuple[int, float, bool] | None = None  # (rotary_dim, base, interleaved)
    mask_shape: tuple[Any, ...] = ()  # the user mask's static shape (ints or symbols)

    @property
    def positional(self) -> bool:
        return self.causal or self.window is not None

    @property
    def can_fully_mask(self) -> bool:
        """Whether some query row may have no key to attend (then it must output zeros)."""
        return self.mask_kind is not None or self.has_kpm or (self.positional and not self.same_len)


def neg_big(b: Any) -> float:
    """The finite 'minus infinity' of the model's float dtype (keeps softmax NaN-free)."""
    return float(np.finfo(b.np_dtype).min)


# -- layout ----------------------------------------------------------------------------------


def to_heads(b: Any, x: str, heads: int, dim: int) -> str:
    """(B, S, H*D) -> (B, H, S, D)."""
    x = b.reshape(x, [0, 0, heads, dim])  # (B, S, H, D)
    return b.transpose(x, [0, 2, 1, 3])  # (B, H, S, D)


def from_heads(b: Any, x: str, heads: int, dim: int) -> str:
    """(B, H, S, D) -> (B, S, H*D)."""
    x = b.transpose(x, [0, 2, 1, 3])  # (B, S, H, D)
    return b.reshape(x, [0, 0, heads * dim])


def repeat_kv(b: Any, x: str, hkv: int, group: int, dim: int) -> str:
    """(B, Hkv, S, D) -> (B, Hkv*G, S, D): kv head h serves query heads h*G .. h*G+G-1."""
    if group == 1:
        return x
    x = b.unsqueeze(x, [2])  # (B, Hkv, 1, S, D)
    x = b.op1("Expand", [x, b.ints([1, 1, group, 1, 1])])  # (B, Hkv, G, S, D)
    return b.reshape(x, [0, hkv * group, -1, dim])  # (B, Hq, S, D)


# -- masks -----------------------------------------------------------------------------------


def query_positions(b: Any, q: str, k: str, seq_axis: int) -> tuple[str, str]:
    """int64 (Sq,) absolute query positions Sk - Sq + i, and the scalar Sk."""
    sq = b.op1("Squeeze", [b.dim(q, seq_axis)])
    sk = b.op1("Squeeze", [b.dim(k, seq_axis)])
    zero, one = b.const(np.array(0), "int64"), b.const(np.array(1), "int64")
    return b.op1("Add", [b.op1("Range", [zero, sq, one]), b.op1("Sub", [sk, sq])]), sk


def relative_distance(b: Any, q: str, k: str, seq_axis: int) -> str:
    """int64 (Sq, Sk): j - p, key position minus the query's absolute position Sk - Sq + i."""
    qpos, sk = query_positions(b, q, k, seq_axis)
    kpos = b.op1("Range", [b.const(np.array(0), "int64"), sk, b.const(np.array(1), "int64")])
    return b.op1("Sub", [b.unsqueeze(kpos, [0]), b.unsqueeze(qpos, [1])])


def positional_allow(b: Any, a: Attn, q: str, k: str, seq_axis: int) -> str:
    """Bool (Sq, Sk): causal / window by absolute position p = Sk - Sq + i (bottom-right)."""
    diff = relative_distance(b, q, k, seq_axis)  # (Sq, Sk): j - p
    allow = None
    if a.causal or isinstance(a.window, int):
        allow = b.op1("LessOrEqual", [diff, b.const(np.array(0), "int64")])
    if isinstance(a.window, int):
        inside = b.op1("Greater", [diff, b.const(np.array(-a.window), "int64")])
        allow = b.op1("And", [allow, inside])
    elif a.window is not None:
        left, right = a.window
        lo = b.op1("GreaterOrEqual", [diff, b.const(np.array(-left), "int64")])
        hi = b.op1("LessOrEqual", [diff, b.const(np.array(right), "int64")])
        both = b.op1("And", [lo, hi])
        allow = both if allow is None else b.op1("And", [allow, both])
    if allow is None:
        raise ValueError("positional_allow needs causal or window")  # callers check a.positional
    return allow


def allow_mask(b: Any, a: Attn, q: str, k: str, mask: str, kpm: str, seq_axis: int, *,
               positional: bool) -> str | None:
    """Bool rank-4 [B|1, H|1, Sq|1, Sk] of the features a lowering asks for; None if none."""
    parts = []
    if positional and a.positional:
        parts.append(b.unsqueeze(positional_allow(b, a, q, k, seq_axis), [0, 1]))
    if a.has_kpm:
        kpm_bool = kpm if a.kpm_bool else b.cast(kpm, "bool")
        parts.append(b.unsqueeze(kpm_bool, [1, 2]))  # (B, 1, 1, Sk)
    if a.mask_kind is not None:
        lead = list(range(4 - a.mask_rank))
        m = b.unsqueeze(mask, lead) if lead else mask
        if a.mask_kind == "bool":
            parts.append(m)
        else:
            ninf = b.const(np.array(-np.inf, np.float32), "float32")
            m32 = m if b.dtype == "float32" else b.cast(m, "float32")
            parts.append(b.op1("Not", [b.op1("Equal", [m32, ninf])]))
    if not parts:
        return None
    allow = parts[0]
    for p in parts[1:]:
        allow = b.op1("And", [allow, p])
    return allow


def expand_rows(b: Any, allow: str, q: str, k: str, seq_axis: int) -> str:
    """Broadcast a mask to [B|1, H|1, Sq, Sk]: onnxruntime's fused ops do not broadcast the
    query and key axes of their masks."""
    full = b.concat([b.ints([1, 1]), b.dim(q, seq_axis), b.dim(k, seq_axis)], 0)
    return b.op1("Expand", [allow, full])


def additive_bias(b: Any, a: Attn, allow: str, mask: str) -> str:
    """Float bias: the user's float mask (or 0) where allowed, the dtype's minimum elsewhere."""
    if a.mask_kind == "float":
        lead = list(range(4 - a.mask_rank))
        keep = b.unsqueeze(mask, lead) if lead else mask
    else:
        keep = b.const(np.array(0.0))
    return b.op1("Where", [allow, keep, b.const(np.array(neg_big(b)))])


def rows_alive(b: Any, allow: str) -> str:
    """Bool [B|1, H|1, Sq|1, 1]: whether each query row has at least one key to attend."""
    count = b.reduce("ReduceMax", b.cast(allow, "int32"), [-1])
    return b.cast(count, "bool")


def alive_from_padding(b: Any, a: Attn, padding: str, q: str, k: str) -> str:
    """Bool (B, 1, Sq, 1): whether query row i (position p = Sk - Sq + i) has a valid key in its
    causal / sliding-window range, from a running sum over the padding mask (B, 1, 1, Sk)."""
    valid = b.cast(b.op1("Squeeze", [padding, b.ints([1, 2])]), "int64")  # (B, Sk)
    running = b.op1("CumSum", [valid, b.const(np.array(1), "int64")])  # keys <= j
    prefix = b.concat([b.op1("Mul", [b.op1("Slice", [valid, b.ints([0]), b.ints([1]),
                                                       b.ints([1])]), b.ints([0])]),
                       running], 1)  # (B, Sk + 1): valid keys among j < t
    pos, _ = query_positions(b, q, k, 1)  # (Sq,): p
    hi = b.op1("Add", [pos, b.const(np.array(1), "int64")])  # count keys j <= p
    if isinstance(a.window, int):
        lo = b.op1("Max", [b.op1("Sub", [hi, b.const(np.array(a.window), "int64")]),
                           b.const(np.array(0), "int64")])  # keys j > p - K
    else:
        lo = b.op1("Mul", [pos, b.const(np.array(0), "int64")])
    count = b.op1("Sub", [b.op1("Gather", [prefix, hi], axis=1),
                          b.op1("Gather", [prefix, lo], axis=1)])  # (B, Sq)
    alive = b.op1("Greater", [count, b.const(np.array(0), "int64")])
    return b.unsqueeze(alive, [1, 3])  # (B, 1, Sq, 1)


def zero_dead_rows(b: Any, a: Attn, alive: str, out: str, layout: str) -> str:
    """Write zeros into fully masked query rows of an attention output."""
    zero = b.const(np.array(0.0))
    if layout == "4d":  # out (B, H, Sq, Dv)
        return b.op1("Where", [alive, out, zero])
    out4 = b.reshape(out, [0, 0, a.hq, a.dv])  # (B, Sq, H, Dv)
    alive_t = b.transpose(alive, [0, 2, 1, 3])  # (B|1, Sq|1, H|1, 1)
    fixed = b.op1("Where", [alive_t, out4, zero])
    return b.reshape(fixed, [0, 0, a.hq * a.dv])


# -- the portable form -----------------------------------------------------------------------


def decomposed_attention(b: Any, a: Attn, q: str, k: str, v: str, mask: str, kpm: str,
                         layout: str) -> tuple[str, str]:
    """MatMul / Softmax form of DESIGN §4; returns (output in `layout`, weights (B,H,Sq,Sk))."""
    if layout == "3d":
        q = to_heads(b, q, a.hq, a.d)  # (B, Hq, Sq, D)
        k = to_heads(b, k, a.hkv, a.d)  # (B, Hkv, Sk, D)
        v = to_heads(b, v, a.hkv, a.dv)  # (B, Hkv, Sk, Dv)
    group = a.hq // a.hkv
    k = repeat_kv(b, k, a.hkv, group, a.d)  # (B, Hq, Sk, D)
    v = repeat_kv(b, v, a.hkv, group, a.dv)  # (B, Hq, Sk, Dv)
    q = b.op1("Mul", [q, b.const(np.array(a.scale))])
    scores = b.op1("MatMul", [q, b.transpose(k, [0, 1, 3, 2])])  # (B, Hq, Sq, Sk)
    if a.softcap is not None:
        c = b.const(np.array(a.softcap))
        scores = b.op1("Mul", [b.op1("Tanh", [b.op1("Div", [scores, c])]), c])
    allow = allow_mask(b, a, q, k, mask, kpm, 2, positional=True)
    if a.mask_kind == "float":
        lead = list(range(4 - a.mask_rank))
        scores = b.op1("Add", [scores, b.unsqueeze(mask, lead) if lead else mask])
    if allow is not None:
        scores = b.op1("Where", [allow, scores, b.const(np.array(neg_big(b)))])
    weights = b.op1("Softmax", [scores], axis=-1)
    if allow is not None and a.can_fully_mask:
        weights = b.op1("Where", [rows_alive(b, allow), weights, b.const(np.array(0.0))])
    out = b.op1("MatMul", [weights, v])  # (B, Hq, Sq, Dv)
    if layout == "3d":
        out = from_heads(b, out, a.hq, a.dv)  # (B, Sq, Hq*Dv)
    return out, weights
