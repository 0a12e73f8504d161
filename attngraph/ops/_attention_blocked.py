"""Blocked sliding-window attention: O(S·W) work instead of O(S²) (DESIGN §8).

The sequence is cut into blocks of `bs` positions. The queries of block j attend only the keys
of blocks j - nl .. j + nr (nl, nr = how many blocks the window reaches back and ahead), so one
fused attention node sees queries [B·nb, H, bs, D] against keys [B·nb, H, (nl+1+nr)·bs, D].
Which of those keys a query may read is one boolean "allow" tensor [B·nb|1, 1, bs, kb]: the
band of the window (the same for every block), keys that exist (not before the start of the
sequence, not in the padding after its end), the key padding mask and the user's mask, each cut
into blocks the same way as the keys.

Cross-attention (Sq != Sk, bottom-right alignment: query i sits at position Sk - Sq + i) runs on
a common grid of L = max(Sq, Sk) positions: the shorter of queries and keys is padded at the
front so that grid index = position; padded keys are never allowed, padded query rows are
dropped from the output.

The block size is chosen at run time: `bs = block` when L > `threshold`, else `bs = L` (one
block, neighbours dropped), which is exactly the direct form. So one graph serves every length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._attention_graph import Attn, decomposed_attention

_LAST = np.iinfo(np.int64).max


@dataclass(frozen=True)
class Plan:
    """Static facts of one layer's blocked form."""

    block: int  # positions per block when the sequence is long
    lo: int  # the window allows key positions p + lo .. p + hi for a query at position p
    hi: int
    nl: int  # neighbour blocks before
    nr: int  # neighbour blocks after


def reach(a: Attn) -> tuple[int, int] | None:
    """(lo, hi): the window lets a query at position p attend keys p + lo .. p + hi."""
    if isinstance(a.window, int):
        return -(a.window - 1), 0
    if a.window is None:
        return None
    lo, hi = -a.window[0], a.window[1]
    return (lo, min(hi, 0)) if a.causal else (lo, hi)


def block_size(window: int | tuple[int, int], causal: bool = False) -> int:
    """The block size of the blocked form for a window: the farthest the window reaches,
    rounded up to a multiple of 8 (so each block only needs its direct neighbours)."""
    if isinstance(window, int):
        far = window - 1
    else:
        far = max(window[0], 0 if causal else window[1])
    return max(8, -(-far // 8) * 8)


def plan(a: Attn) -> Plan | None:
    r = reach(a)
    if r is None:
        return None
    lo, hi = r
    size = block_size(a.window, a.causal)  # type: ignore[arg-type]
    return Plan(size, lo, hi, _ceil_div(-lo, size), _ceil_div(max(hi, 0), size))


def _ceil_div(x: int, y: int) -> int:
    return -(-x // y)


# -- small int64 helpers (1-element tensors) ---------------------------------------------------


def _i(b: Any, op: str, x: str, y: str) -> str:
    return b.op1(op, [x, y])


def _int(b: Any, flag: str) -> str:
    return b.cast(flag, "int64")


# -- blocking -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Grid:
    sq: str  # (1,) query count
    length: str  # (1,) L: grid length
    fq: str  # (1,) front padding of the queries
    fk: str  # (1,) front padding of the keys
    bs: str  # (1,) block size
    nb: str  # (1,) number of blocks
    multi: str  # (1,) 1 when nb > 1 (neighbours kept), else 0
    tail: str  # (1,) nb * bs - L


def _grid(b: Any, a: Attn, p: Plan, q: str, k: str, threshold: int) -> _Grid:
    """q, k seq-major (B, S, H, D)."""
    sq, sk = b.dim(q, 1), b.dim(k, 1)
    zero = b.ints([0])
    if a.same_len:
        length, fq, fk = sq, zero, zero
    else:
        length = _i(b, "Max", sq, sk)
        fq, fk = _i(b, "Sub", length, sq), _i(b, "Sub", length, sk)
    long = b.op1("Greater", [length, b.ints([threshold])])
    bs = b.op1("Where", [long, b.ints([p.block]), length])
    bs = _i(b, "Max", bs, b.ints([1]))  # an empty sequence still gets a (padded) block
    nb = _i(b, "Div", _i(b, "Add", length, _i(b, "Sub", bs, b.ints([1]))), bs)
    nb = _i(b, "Max", nb, b.ints([1]))
    multi = _int(b, b.op1("Greater", [nb, b.ints([1])]))
    tail = _i(b, "Sub", _i(b, "Mul", nb, bs), length)
    return _Grid(sq, length, fq, fk, bs, nb, multi, tail)


def _pad_seq(b: Any, x: str, front: str, back: str, value: Any = None) -> str:
    """Pad axis 1 of a rank-4 tensor."""
    z = b.ints([0])
    pads = b.concat([z, front, z, z, z, back, z, z], 0)
    ins = [x, pads] if value is None else [x, pads, value]
    return b.op1("Pad", ins)


def _block_queries(b: Any, g: _Grid, x: str, heads: int, dim: int) -> str:
    """(B, Sq, H, D) -> (B·nb, H, bs, D)."""
    x = _pad_seq(b, x, g.fq, g.tail)  # (B, nb·bs, H, D)
    x = b.reshape(x, b.concat([b.ints([0]), g.nb, g.bs, b.ints([heads, dim])], 0))
    x = b.transpose(x, [0, 1, 3, 2, 4])  # (B, nb, H, bs, D)
    return b.reshape(x, b.concat([b.ints([-1, heads]), g.bs, b.ints([dim])], 0))


def _block_keys(b: Any, p: Plan, g: _Grid, x: str, heads: int, dim: int,
                value: Any = None) -> str:
    """(B, Sk, H, D) -> (B, nb, H, kb, D): for each query block, the keys of its own block and
    its neighbours (only its own block when there is one block)."""
    bs = g.bs
    front = _i(b, "Add", g.fk, _i(b, "Mul", bs, b.ints([p.nl])))
    back = _i(b, "Add", g.tail, _i(b, "Mul", bs, b.ints([p.nr])))
    x = _pad_seq(b, x, front, back, value)  # (B, (nb+nl+nr)·bs, H, D)
    x = b.reshape(x, b.concat([b.ints([0, -1]), bs, b.ints([heads, dim])], 0))
    pieces = []
    for t in range(p.nl + 1 + p.nr):
        end = _i(b, "Add", b.ints([t]), g.nb)
        if t == p.nl:
            pieces.append(b.op1("Slice", [x, b.ints([t]), end, b.ints([1])]))
        else:  # a neighbour: no slots when there is one block
            ends = b.concat([end, _i(b, "Mul", bs, g.multi)], 0)
            pieces.append(b.op1("Slice", [x, b.ints([t, 0]), ends, b.ints([1, 2])]))
    x = b.concat(pieces, 2) if len(pieces) > 1 else pieces[0]  # (B, nb, kb, H, D)
    return b.transpose(x, [0, 1, 3, 2, 4])  # (B, nb, H, kb, D)


def _flat(b: Any, x: str, g: _Grid, heads: int, dim: int) -> str:
    """(B, nb, H, kb, D) -> (B·nb, H, kb, D)."""
    return b.reshape(x, b.concat([b.ints([-1, heads]), b.dim(x, 3), b.ints([dim])], 0))


def _band(b: Any, p: Plan, g: _Grid) -> str:
    """Bool (bs, kb): key slot c of a block's keys holds position j·bs + c - nl_eff·bs for the
    query in row r at position j·bs + r; allowed when lo <= c - nl_eff·bs - r <= hi."""
    rows = _range(b, g.bs)
    cols = b.op1("Sub", [_range(b, _slots(b, p, g)), _i(b, "Mul", _nl_eff(b, p, g), g.bs)])
    diff = b.op1("Sub", [b.unsqueeze(cols, [0]), b.unsqueeze(rows, [1])])  # (bs, kb)
    lo = b.op1("GreaterOrEqual", [diff, b.const(np.array(p.lo))])
    hi = b.op1("LessOrEqual", [diff, b.const(np.array(p.hi))])
    return b.op1("And", [lo, hi])


def _range(b: Any, n: str) -> str:
    """int64 (n,): 0 .. n-1 of a 1-element length."""
    end = b.reshape(n, b.ints([], tag="scalar_shape"))
    return b.op1("Range", [b.const(np.array(0)), end, b.const(np.array(1))])


def _nl_eff(b: Any, p: Plan, g: _Grid) -> str:
    """(1,): neighbour blocks before a block's own keys (none when there is one block)."""
    return _i(b, "Mul", b.ints([p.nl]), g.multi)


def _slots(b: Any, p: Plan, g: _Grid) -> str:
    """(1,): kb, the key slots of one block."""
    return _i(b, "Mul", g.bs, _i(b, "Add", b.ints([1]),
                                 _i(b, "Mul", b.ints([p.nl + p.nr]), g.multi)))


def _key_valid(b: Any, a: Attn, p: Plan, g: _Grid, k: str, kpm: str) -> str:
    """Bool (B·nb, 1, 1, kb): the key slot holds a real key (and the padding mask allows it)."""
    if a.has_kpm:
        valid = b.cast(kpm, "int32")  # (B, Sk)
    else:
        shape = b.op1("Shape", [k], start=0, end=2)
        valid = b.op1("Expand", [b.const(np.array(1, np.int32), "int32"), shape])  # (B, Sk)
    valid = b.unsqueeze(valid, [2, 3])  # (B, Sk, 1, 1)
    blocks = _block_keys(b, p, g, valid, 1, 1)  # (B, nb, 1, kb, 1)
    blocks = b.reshape(blocks, b.concat([b.ints([-1, 1, 1]), b.dim(blocks, 3)], 0))
    return b.cast(blocks, "bool")  # (B·nb, 1, 1, kb)


def _user_mask(b: Any, a: Attn, p: Plan, g: _Grid, mask: str, batch: str) -> str:
    """The user's mask cut into blocks: (B·nb|1..., H|1, bs|1, kb), bool or float."""
    lead = list(range(4 - a.mask_rank))
    m = b.unsqueeze(mask, lead) if lead else mask  # (Bm, Hm, mq, mk)
    shape = (1,) * len(lead) + tuple(a.mask_shape)
    bm, hm, mq, mk = shape
    is_bool = a.mask_kind == "bool"
    if is_bool:
        m = b.cast(m, "int32")  # Pad and GatherElements on numbers
    if mk == 1:
        full_k = b.concat([b.ints([1, 1, 1]), _i(b, "Sub", g.length, g.fk)], 0)
        m = b.op1("Expand", [m, full_k])  # (Bm, Hm, mq, Sk)
    heads = hm if isinstance(hm, int) else a.hq
    if mq == 1:  # the same for every query: cut the key axis like the keys
        x = b.transpose(m, [0, 3, 1, 2])  # (Bm, Sk, Hm, 1)
        blocks = _block_keys(b, p, g, x, heads, 1, zero_of(b, a))  # (Bm, nb, Hm, kb, 1)
        blocks = b.transpose(blocks, [0, 1, 2, 4, 3])  # (Bm, nb, Hm, 1, kb)
    else:
        blocks = _band_of_full(b, a, p, g, m)  # (Bm, nb, Hm, bs, kb)
    if bm == 1:
        full_b = b.concat([batch, b.ints([1, 1, 1, 1])], 0)
        blocks = b.op1("Expand", [blocks, full_b])
    blocks = b.reshape(blocks, b.concat([b.ints([-1, heads]), b.dim(blocks, 3),
                                         b.dim(blocks, 4)], 0))
    return b.cast(blocks, "bool") if is_bool else blocks


def _band_of_full(b: Any, a: Attn, p: Plan, g: _Grid, m: str) -> str:
    """(Bm, Hm, Sq, Sk) -> (Bm, nb, Hm, bs, kb): each query block's rows, at its key slots."""
    x = b.transpose(m, [0, 2, 3, 1])  # (Bm, Sq, Sk, Hm): rows on axis 1, like the queries
    x = _pad_seq(b, x, g.fq, g.tail, zero_of(b, a))
    front = _i(b, "Add", g.fk, _i(b, "Mul", g.bs, b.ints([p.nl])))
    back = _i(b, "Add", g.tail, _i(b, "Mul", g.bs, b.ints([p.nr])))
    z = b.ints([0])
    x = b.op1("Pad", [x, b.concat([z, z, front, z, z, z, back, z], 0),
                      zero_of(b, a)])  # (Bm, nb·bs, Wp, Hm)
    x = b.transpose(x, [0, 3, 1, 2])  # (Bm, Hm, nb·bs, Wp)
    x = b.reshape(x, b.concat([b.ints([0, 0]), g.nb, g.bs, b.ints([-1])], 0))
    # column of key slot c for block j: (j + nl·(1 - multi))·bs + c
    kb = _slots(b, p, g)
    blocks, slots = _range(b, g.nb), _range(b, kb)
    shift = _i(b, "Sub", b.ints([p.nl]), _nl_eff(b, p, g))
    base = b.op1("Mul", [b.op1("Add", [blocks, shift]), g.bs])  # (nb,)
    idx = b.op1("Add", [b.unsqueeze(base, [1]), b.unsqueeze(slots, [0])])  # (nb, kb)
    idx = b.unsqueeze(idx, [0, 1, 3])  # (1, 1, nb, 1, kb)
    full = b.concat([b.op1("Shape", [x], start=0, end=4), kb], 0)
    idx = b.op1("Expand", [idx, full])  # (Bm, Hm, nb, bs, kb)
    x = b.op1("GatherElements", [x, idx], axis=4)
    return b.transpose(x, [0, 2, 1, 3, 4])  # (Bm, nb, Hm, bs, kb)


def zero_of(b: Any, a: Attn) -> str:
    """The padding value of a mask being cut: int32 0 for bool masks, else the float dtype's 0."""
    return b.const(np.array(0, np.int32), "int32") if a.mask_kind == "bool" else b.const(
        np.array(0.0))


def threshold(b: Any, a: Attn) -> int | None:
    """Sequence length above which a windowed layer runs blocked; None = the direct form.

    `window_impl="direct"` keeps the direct form, "blocked" blocks at every length (0). "auto"
    blocks above AUTO_BLOCKS_ABOVE · block: up to there the same graph takes one block of the
    whole sequence, which is the direct computation (see `_grid`)."""
    impl = getattr(b, "window_impl", "auto")
    if a.window is None or a.return_weights or impl == "direct":
        return None
    if impl == "blocked":
        return 0
    return AUTO_BLOCKS_ABOVE * block_size(a.window, a.causal)


# Why "auto" chooses at run time inside one graph rather than with an ONNX `If`: an `If` would
# hold two fused attention nodes per layer (one per branch), and the graph above already runs
# the direct computation when the sequence is short. Measured on the benchmark layer (embed
# 512, 8 heads, W = 256, block 256, one thread, CPU ms of the process; bench/window.py):
#   S = 512 (2 blocks): ort direct (GroupQueryAttention) 22-26, one-block auto 23-28,
#   forced blocked 22; S = 1,024: direct 94, blocked 58-62; S = 16,384: direct 5,369, blocked
#   738-980. Blocked and direct cost the same at 2 blocks, and blocked wins from there on, so
#   "auto" blocks above 2 blocks and keeps the padding-free single block below. What the
#   single block still costs over the direct form is the fixed price of its ~60 small shape
#   and layout nodes (about 1 ms): visible only at S well under W.
AUTO_BLOCKS_ABOVE = 2


def blocked_attention(b: Any, a: Attn, q: str, k: str, v: str, mask: str, kpm: str,
                      layout: str, threshold: int) -> str:
    """The blocked form on any target; q, k, v in `layout` ("3d" (B, S, H·D) or "4d"
    (B, H, S, D)); output in the same layout."""
    p = plan(a)
    assert p is not None
    if layout == "3d":
        q = b.reshape(q, [0, 0, a.hq, a.d])  # (B, Sq, Hq, D)
        k = b.reshape(k, [0, 0, a.hkv, a.d])  # (B, Sk, Hkv, D)
        v = b.reshape(v, [0, 0, a.hkv, a.dv])
    else:
        q, k, v = (b.transpose(t, [0, 2, 1, 3]) for t in (q, k, v))  # (B, S, H, D)
    g = _grid(b, a, p, q, k, threshold)
    batch = b.dim(q, 0)
    qb = _block_queries(b, g, q, a.hq, a.d)  # (B·nb, Hq, bs, D)
    kb = _flat(b, _block_keys(b, p, g, k, a.hkv, a.d), g, a.hkv, a.d)  # (B·nb, Hkv, kb, D)
    vb = _flat(b, _block_keys(b, p, g, v, a.hkv, a.dv), g, a.hkv, a.dv)
    allow = b.op1("And", [b.unsqueeze(_band(b, p, g), [0, 1]),
                          _key_valid(b, a, p, g, k, kpm)])  # (B·nb, 1, bs, kb)
    user = None
    if a.mask_kind is not None:
        user = _user_mask(b, a, p, g, mask, batch)
        if a.mask_kind == "bool":
            allow = b.op1("And", [allow, user])
    if a.mask_kind == "float":
        ninf = b.const(np.array(-np.inf))
        allow = b.op1("And", [allow, b.op1("Not", [b.op1("Equal", [user, ninf])])])
        attn_mask, kind = b.op1("Where", [allow, user, ninf]), "float"
    else:
        attn_mask, kind = allow, "bool"
    out = _attend(b, a, qb, kb, vb, attn_mask, kind)  # (B·nb, Hq, bs, Dv)
    out = b.reshape(out, b.concat([b.ints([-1]), g.nb, b.ints([a.hq]), g.bs,
                                   b.ints([a.dv])], 0))  # (B, nb, Hq, bs, Dv)
    out = b.transpose(out, [0, 1, 3, 2, 4])  # (B, nb, bs, Hq, Dv)
    out = b.reshape(out, [0, -1, a.hq, a.dv])  # (B, nb·bs, Hq, Dv)
    out = b.op1("Slice", [out, g.fq, _i(b, "Add", g.fq, g.sq), b.ints([1])])  # (B, Sq, Hq, Dv)
    if layout == "3d":
        return b.reshape(out, [0, 0, a.hq * a.dv])  # (B, Sq, Hq·Dv)
    return b.transpose(out, [0, 2, 1, 3])  # (B, Hq, Sq, Dv)


def _attend(b: Any, a: Attn, q: str, k: str, v: str, attn_mask: str, kind: str) -> str:
    """Plain attention of blocked tensors under an explicit mask (no positions left)."""
    if b.target == "decomposed":
        from dataclasses import replace

        plain = replace(a, causal=False, window=None, mask_kind=kind, mask_rank=4,
                        has_kpm=False, same_len=False, cross=True, return_weights=False,
                        rope=None)
        out, _ = decomposed_attention(b, plain, q, k, v, attn_mask, "", "4d")
        return out
    b.require_opset(23, "the standard Attention op")
    # The standard op: fully masked rows (bool False or -inf everywhere) give zeros.
    return b.op1("Attention", [q, k, v, attn_mask], tag="Attention", scale=a.scale,
                 softcap=a.softcap)


__all__ = ["Plan", "block_size", "blocked_attention", "plan", "reach", "threshold"]
