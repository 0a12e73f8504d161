"""Blocked sliding-window attention: O(S·W) work and bounded memory (DESIGN §8).

The sequence is cut into blocks of `bs` positions. The queries of block j attend only the keys
of blocks j - nl .. j + nr (nl, nr = how many blocks the window reaches back and ahead). The
blocks are processed in groups of `per` blocks by one ONNX `Scan` over (batch row, group): each
iteration cuts its queries [per, bs, Hq·D] and their neighbour key windows [per, kb, Hkv·D]
(kb = (nl+1+nr)·bs) out of the projected tensors and runs the layer's one fused attention node
under an additive mask [per, 1|Hm, bs, kb]: 0 where allowed, -inf elsewhere. That mask is the
sum of the window's band (the same for every block), whether each key slot holds a key (not
before the start of the sequence, not in the padding after its end, allowed by the key padding
mask) and the user's mask, the last two cut into blocks like the keys. So only one group's
scores, key windows and mask are alive at a time, however long the sequence.

Cross-attention (Sq != Sk, bottom-right alignment: query i sits at position Sk - Sq + i) runs on
a common grid of L = max(Sq, Sk) positions: the shorter of queries and keys is padded at the
front so that grid index = position; padded keys are never allowed, padded query rows are
dropped from the output.

The block size is chosen at run time: `bs = block` when L > `threshold`, else `bs = L` (one
block, no neighbours), which is exactly the direct form. So one graph serves every length.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ._attention_blocked_parts import (
    Grid,
    _i,
    _range,
    allowed_bias,
    times,
    user_bias,
)
from ._attention_graph import Attn, decomposed_attention, from_heads, to_heads

# Query positions per Scan iteration: the scores alive at once are GROUP_POSITIONS·Hq·kb
# floats (1,024 · 8 heads · 320 slots · 4 bytes = 10 MiB for the benchmark layer at W = 256).
# On the benchmark layer at S = 16,384 (median of 10 interleaved runs), groups of 512 and
# 1,024 positions ran alike and groups of 2,048 .. 16,384 7-11% slower (the group's working set
# leaves the caches). Tests lower it to run several groups at small sizes.
GROUP_POSITIONS = 1024


@dataclass(frozen=True)
class Plan:
    """Static facts of one layer's blocked form."""

    block: int  # positions per block when the sequence is long
    lo: int  # the window allows key positions p + lo .. p + hi for a query at position p
    hi: int
    nl: int  # neighbour blocks before
    nr: int  # neighbour blocks after
    group: int  # at most this many blocks per Scan iteration


def reach(a: Attn) -> tuple[int, int] | None:
    """(lo, hi): the window lets a query at position p attend keys p + lo .. p + hi."""
    if isinstance(a.window, int):
        return -(a.window - 1), 0
    if a.window is None:
        return None
    lo, hi = -a.window[0], a.window[1]
    return (lo, min(hi, 0)) if a.causal else (lo, hi)


def block_size(window: int | tuple[int, int], causal: bool = False) -> int:
    """The block size of the blocked form for a window that reaches `far` positions: `far`
    up to MIN_BLOCK, else an eighth of it but at least MIN_BLOCK (a multiple of 8 either way).

    Smaller blocks waste fewer scores: a block of b reads b·(1 + ceil(far / b)) key slots per
    b queries, where far + 1 would do. Below 64 positions, per-block overheads win. Measured on
    the benchmark layer (W = 256, S = 16,384, onnxruntime, 2 threads, one process, runs
    interleaved): blocks of 64 run the layer in 0.92x the time of blocks of 128, 0.8x of 256,
    and 0.95x of 32; at W = 1,024, blocks of 128 beat 64 and 256 by 5-10%."""
    if isinstance(window, int):
        far = window - 1
    else:
        far = max(window[0], 0 if causal else window[1])
    size = far if far <= MIN_BLOCK else max(MIN_BLOCK, -(-far // 8))
    return max(8, -(-size // 8) * 8)


MIN_BLOCK = 64


def plan(a: Attn) -> Plan | None:
    r = reach(a)
    if r is None:
        return None
    lo, hi = r
    size = block_size(a.window, a.causal)  # type: ignore[arg-type]
    return Plan(size, lo, hi, _ceil_div(-lo, size), _ceil_div(max(hi, 0), size),
                max(1, GROUP_POSITIONS // size))


def _ceil_div(x: int, y: int) -> int:
    return -(-x // y)


def grid(b: Any, a: Attn, p: Plan, q: str, k: str, threshold: int) -> Grid:
    """q, k seq-major (B, S, C)."""
    sq, sk = b.dim(q, 1), b.dim(k, 1)
    zero, one = b.ints([0]), b.ints([1])
    if a.same_len:
        length, fq, fk = sq, zero, zero
    else:
        length = _i(b, "Max", sq, sk)
        fq, fk = _i(b, "Sub", length, sq), _i(b, "Sub", length, sk)
    long = b.op1("Greater", [length, b.ints([threshold])])
    bs = b.op1("Where", [long, b.ints([p.block]), length])
    bs = _i(b, "Max", bs, one)  # an empty sequence still gets a (padded) block
    blocks = _i(b, "Max", _ceil(b, length, bs), one)
    multi = b.cast(b.op1("Greater", [blocks, one]), "int64")
    groups = _ceil(b, blocks, b.ints([p.group]))
    per = _ceil(b, blocks, groups)  # the groups share the blocks evenly (< groups padded)
    nb = _i(b, "Mul", groups, per)
    nle, nre = times(b, p.nl, multi), times(b, p.nr, multi)
    kb = _i(b, "Mul", bs, _i(b, "Add", one, _i(b, "Add", nle, nre)))
    tail = _i(b, "Sub", _i(b, "Mul", nb, bs), length)
    return Grid(sq, sk, length, fq, fk, bs, nb, multi, nle, nre, kb, _i(b, "Mul", nle, bs),
                _range(b, kb), groups, per, tail)


def _ceil(b: Any, x: str, y: str) -> str:
    return _i(b, "Div", _i(b, "Add", x, _i(b, "Sub", y, b.ints([1]))), y)


def band(b: Any, p: Plan, g: Grid) -> str:
    """Float (bs, kb), 0 or -inf: key slot c of a block's keys holds position
    j·bs + c - lead for the query in row r at position j·bs + r; allowed when
    lo <= c - lead - r <= hi."""
    rows = _range(b, g.bs)
    cols = b.op1("Sub", [g.slots, g.lead])
    diff = b.op1("Sub", [b.unsqueeze(cols, [0]), b.unsqueeze(rows, [1])])  # (bs, kb)
    lo = b.op1("GreaterOrEqual", [diff, b.const(np.array(p.lo))])
    hi = b.op1("LessOrEqual", [diff, b.const(np.array(p.hi))])
    return allowed_bias(b, b.op1("And", [lo, hi]))


# -- one iteration -----------------------------------------------------------------------------


def at_rows(b: Any, offsets: str, start: str, row: str, n: str,
            last: str) -> tuple[str, str, str]:
    """Row indices into a (B·n, C) tensor for sequence positions start + offsets of batch row
    `row`, clamped to 0 .. last (= n - 1); also the clamped positions and the raw ones."""
    pos = b.op1("Add", [offsets, start])
    at = b.op1("Min", [b.op1("Max", [pos, b.ints([0])]), last])
    return b.op1("Add", [at, _i(b, "Mul", row, n)]), at, pos


def group_slice(b: Any, x: str, row: str, first: str, per: str, batched: bool) -> str:
    """(B|1, nb, ...) -> (per, ...): blocks first .. first + per - 1 of batch row `row`
    (row 0 when the tensor has one batch row)."""
    r = row if batched else b.ints([0])
    y = b.op1("Slice", [x, b.concat([r, first], 0),
                        b.concat([_i(b, "Add", r, b.ints([1])), _i(b, "Add", first, per)], 0),
                        b.ints([0, 1])])
    return b.op1("Squeeze", [y, b.ints([0])])


def blocked_attention(b: Any, a: Attn, q: str, k: str, v: str, mask: str, kpm: str,
                      layout: str, threshold: int) -> str:
    """The blocked form on any target; q, k, v in `layout` ("3d" (B, S, H·D) or "4d"
    (B, H, S, D)); output in the same layout."""
    p = plan(a)
    assert p is not None
    if layout == "4d":
        q, k, v = (from_heads(b, t, h, d) for t, h, d in
                   ((q, a.hq, a.d), (k, a.hkv, a.d), (v, a.hkv, a.dv)))  # (B, S, H·D)
    g = grid(b, a, p, q, k, threshold)
    bias = band(b, p, g)  # (bs, kb)
    if a.has_kpm:  # (B·Sk,): 0 where the key padding mask allows a key, -inf elsewhere
        padding = b.reshape(allowed_bias(b, kpm if a.kpm_bool else b.cast(kpm, "bool")), [-1])
    user = user_bias(b, a, p.nl, p.nr, g, mask) if a.mask_kind is not None else None
    batch = b.dim(q, 0)
    some = _i(b, "Min", g.sq if a.same_len else _i(b, "Mul", g.sq, g.sk),
              b.ints([1]))  # no rows to read: no trips
    trips = b.reshape(_i(b, "Mul", _i(b, "Mul", batch, g.groups), some),
                      b.ints([], tag="scalar_shape"))
    span = _i(b, "Mul", g.per, g.bs)  # query positions per group
    # Each iteration gathers its rows of q, k and v (B·S, C) by index: row i of batch row r is
    # r·S + i. Grid positions outside the sequence read its nearest row instead of padding:
    # the key bias never lets a query see them, and query rows there are dropped.
    qoff = _range(b, span)  # (per·bs,): query grid positions from the group's start
    koff = b.op1("Add", [b.unsqueeze(b.op1("Mul", [_range(b, g.per), g.bs]), [1]),
                         b.unsqueeze(b.op1("Sub", [g.slots, g.lead]), [0])])  # (per, kb)
    qlast, klast = _i(b, "Sub", g.sq, b.ints([1])), _i(b, "Sub", g.sk, b.ints([1]))
    qf, kf, vf = (b.reshape(t, [-1, c]) for t, c in
                  ((q, a.hq * a.d), (k, a.hkv * a.d), (v, a.hkv * a.dv)))  # (B·S, C)

    def body(it: str) -> list[str]:
        it = b.reshape(it, b.ints([1]))
        row, group = _i(b, "Div", it, g.groups), _i(b, "Mod", it, g.groups)
        first = _i(b, "Mul", group, g.per)  # the group's first block
        start = _i(b, "Mul", first, g.bs)  # and its first grid position
        qstart, kstart = (start, start) if a.same_len else \
            (_i(b, "Sub", start, g.fq), _i(b, "Sub", start, g.fk))
        qi, _, _ = at_rows(b, qoff, qstart, row, g.sq, qlast)
        qg = b.reshape(b.op1("Gather", [qf, qi], axis=0),
                       b.concat([g.per, g.bs, b.ints([a.hq * a.d])], 0))  # (per, bs, Hq·D)
        ki, kat, kpos = at_rows(b, koff, kstart, row, g.sk, klast)  # (per, kb)
        # key slots outside the sequence (where clamping moved them) and padded keys: -inf
        keys = allowed_bias(b, b.op1("Equal", [kat, kpos]))
        if a.has_kpm:
            keys = b.op1("Add", [keys, b.op1("Gather", [padding, ki], axis=0)])
        keys = b.unsqueeze(keys, [1, 2])  # (per, 1, 1, kb)
        kg, vg = (b.op1("Gather", [t, ki], axis=0) for t in (kf, vf))  # (per, kb, C)
        m = b.op1("Add", [bias, keys])
        if user is not None:  # (per, 1|Hm, bs, kb)
            m = b.op1("Add", [m, group_slice(b, user[0], row, first, g.per, user[1])])
        # the body's output as the op makes it: a Reshape here would copy it into the Scan's
        return [_attend(b, a, qg, kg, vg, m)]  # (per, bs, Hq·Dv)

    (out,) = b.scan(trips, body, [b.dtype], tag="blocks")  # (B·groups, per, bs, Hq·Dv)
    out = b.reshape(out, b.concat([batch, b.ints([-1, a.hq * a.dv])], 0))  # (B, nb·bs, Hq·Dv)
    end = g.sq if a.same_len else _i(b, "Add", g.fq, g.sq)
    out = b.op1("Slice", [out, g.fq, end, b.ints([1])])  # (B, Sq, Hq·Dv)
    return out if layout == "3d" else to_heads(b, out, a.hq, a.dv)  # (B, Hq, Sq, Dv)


def _attend(b: Any, a: Attn, q: str, k: str, v: str, bias: str) -> str:
    """Plain attention of blocked 3-D tensors under an additive mask (no positions left)."""
    if b.target == "decomposed":
        plain = replace(a, causal=False, window=None, mask_kind="float", mask_rank=4,
                        has_kpm=False, same_len=False, cross=True, return_weights=False,
                        rope=None)
        out, _ = decomposed_attention(b, plain, q, k, v, bias, "", "3d")
        return out
    b.require_opset(23, "the standard Attention op")
    # The standard op: fully masked rows (-inf everywhere) give zeros.
    return b.op1("Attention", [q, k, v, bias], tag="Attention", scale=a.scale,
                 softcap=a.softcap, q_num_heads=a.hq, kv_num_heads=a.hkv)


def threshold(b: Any, a: Attn) -> int | None:
    """Sequence length above which a windowed layer runs blocked; None = the direct form.

    `window_impl="direct"` keeps the direct form, "blocked" blocks at every length (0). "auto"
    keeps the direct form on "ort" below opset 23 (the blocked form needs the standard
    Attention op there) and otherwise blocks above AUTO_SLOTS · kb (kb: the key slots one block reads): up to there the same graph
    takes one block of the whole sequence, which is the direct computation (see `grid`)."""
    impl = getattr(b, "window_impl", "auto")
    if a.window is None or a.return_weights or impl == "direct":
        return None
    if impl == "blocked":
        return 0
    if b.target != "decomposed" and b.opset < 23:  # no standard Attention op to block with
        return None
    p = plan(a)
    assert p is not None
    return int(AUTO_SLOTS * p.block * (1 + p.nl + p.nr))


# How "auto" chooses. One block of L positions computes L² scores; blocks compute L·kb plus a
# per-block price, so blocks win once L is a small multiple of kb. Measured on the benchmark
# layer (one process, runs interleaved, median ms; bench/window.py's shape):
#   W = 256 (blocks of 64, kb = 320): S = 256: one block 7.6, blocks 11.0; S = 384: 19.1 and
#   20.0; S = 512: 30.4 and 25.9.  W = 60 (blocks of 64, kb = 128): S = 192: 4.9 and 4.1;
#   S = 256: 14.0 and 6.9.
# So "auto" blocks above 1.5·kb (480 and 192 positions). At or below it the one-block graph
# costs what the direct form (onnxruntime's GroupQueryAttention, local_window_size) costs:
# within 5% at S = 64 .. 256, and faster from 384 on.
# It chooses at run time inside one graph rather than with an ONNX `If` because an `If` would
# hold two fused attention nodes per layer (one per branch).
AUTO_SLOTS = 1.5


__all__ = ["GROUP_POSITIONS", "Grid", "Plan", "block_size", "blocked_attention", "plan",
           "reach", "threshold"]
