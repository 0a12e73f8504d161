"""Pieces of the blocked sliding-window form (`_attention_blocked.py`): the run-time grid,
neighbour key windows, and the key and user masks cut into blocks as additive biases."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._attention_graph import Attn


def _i(b: Any, op: str, x: str, y: str) -> str:
    """One binary op on (1,) int64 tensors."""
    return b.op1(op, [x, y])


def times(b: Any, n: int, x: str) -> str:
    """n · x for a static n (no Mul by 0 or 1: onnxruntime folds those, and cannot rename the
    folded tensor where the Scan body reads it)."""
    return b.ints([0]) if n == 0 else x if n == 1 else _i(b, "Mul", b.ints([n]), x)


def _clip(b: Any, x: str, lo: str, hi: str) -> str:
    return _i(b, "Min", _i(b, "Max", x, lo), hi)


@dataclass(frozen=True)
class Grid:
    """Run-time facts of one call, each a (1,) int64 tensor."""

    sq: str  # query count
    sk: str  # key count
    length: str  # L: grid length
    fq: str  # front padding of the queries
    fk: str  # front padding of the keys
    bs: str  # block size
    nb: str  # blocks holding the grid, padded up to groups · per
    multi: str  # 1 when there is more than one block (neighbours kept), else 0
    nle: str  # neighbour blocks before a block's own keys: nl · multi
    nre: str  # after: nr · multi
    kb: str  # key slots of a block: bs · (1 + nle + nre)
    lead: str  # nle · bs: key slot c of block j holds grid position j·bs - lead + c
    slots: str  # (kb,) 0 .. kb - 1
    groups: str  # Scan iterations per batch row
    per: str  # blocks per group
    tail: str  # nb · bs - L


def windows(b: Any, nl: int, nr: int, g: Grid, x: str, count: str) -> str:
    """(X, (count + nle + nre)·bs, C) -> (X, count, kb, C): for each of `count` blocks, its
    own keys and its neighbours' (none when there is one block)."""
    x = b.reshape(x, b.concat([b.ints([0, -1]), g.bs, b.dim(x, 2)], 0))  # (X, n, bs, C)
    pieces = []
    for t in range(nl + 1 + nr):
        start = times(b, t, g.multi)  # t, or 0 when there is one block
        end = _i(b, "Add", start, count)
        if t == nl:
            pieces.append(b.op1("Slice", [x, start, end, b.ints([1])]))
        else:  # a neighbour: no slots when there is one block
            ends = b.concat([end, _i(b, "Mul", g.bs, g.multi)], 0)
            pieces.append(b.op1("Slice", [x, b.concat([start, b.ints([0])], 0), ends,
                                          b.ints([1, 2])]))
    return b.concat(pieces, 2) if len(pieces) > 1 else pieces[0]  # (X, count, kb, C)


def allowed_bias(b: Any, allow: str) -> str:
    """Bool -> the model's float dtype: 0 where allowed, -inf elsewhere."""
    return b.op1("Where", [allow, b.const(np.array(0.0)), b.const(np.array(-np.inf))])


def pad_keys(b: Any, g: Grid, x: str, value: str) -> str:
    """(X, Sk, C) -> (X, (nb + nle + nre)·bs, C): keys on the grid with room for the first
    block's neighbours before and the last block's after."""
    z = b.ints([0])
    front = _i(b, "Add", g.fk, g.lead)
    back = _i(b, "Add", g.tail, _i(b, "Mul", g.nre, g.bs))
    return b.op1("Pad", [x, b.concat([z, front, z, z, back, z], 0), value])


def user_bias(b: Any, a: Attn, nl: int, nr: int, g: Grid, mask: str) -> tuple[str, bool]:
    """The user's mask cut into blocks as a float bias (Bm, nb, Hm, bs|1, kb) (bool masks:
    0 / -inf), and whether Bm is the batch (else 1)."""
    lead = list(range(4 - a.mask_rank))
    m = b.unsqueeze(mask, lead) if lead else mask  # (Bm, Hm, mq, mk)
    if a.mask_kind == "bool":
        m = allowed_bias(b, m)
    bm, _, mq, mk = (1,) * len(lead) + tuple(a.mask_shape)
    if mk == 1:
        m = b.op1("Expand", [m, b.concat([b.ints([1, 1, 1]), g.sk], 0)])  # (Bm, Hm, mq, Sk)
    zero = b.const(np.array(0.0))
    if mq == 1:  # the same for every query: cut the key axis like the keys
        x = b.reshape(b.transpose(m, [0, 3, 1, 2]), [0, 0, -1])  # (Bm, Sk, Hm)
        blocks = windows(b, nl, nr, g, pad_keys(b, g, x, zero), g.nb)  # (Bm, nb, kb, Hm)
        blocks = b.unsqueeze(b.transpose(blocks, [0, 1, 3, 2]), [3])  # (Bm, nb, Hm, 1, kb)
    else:
        blocks = _rows_of_full(b, g, m)  # (Bm, nb, Hm, bs, kb)
    return blocks, bm != 1


def _rows_of_full(b: Any, g: Grid, m: str) -> str:
    """(Bm, Hm, Sq, Sk) -> (Bm, nb, Hm, bs, kb): each query block's rows, at its key slots."""
    x = b.transpose(m, [0, 2, 3, 1])  # (Bm, Sq, Sk, Hm): rows on axis 1, like the queries
    z, zero = b.ints([0]), b.const(np.array(0.0))
    x = b.op1("Pad", [x, b.concat([z, g.fq, z, z, z, g.tail, z, z], 0), zero])  # rows on grid
    front = _i(b, "Add", g.fk, g.lead)
    back = _i(b, "Add", g.tail, _i(b, "Mul", g.nre, g.bs))
    x = b.op1("Pad", [x, b.concat([z, z, front, z, z, z, back, z], 0),
                      zero])  # (Bm, nb·bs, Wp, Hm): column = grid position + nle·bs
    x = b.transpose(x, [0, 3, 1, 2])  # (Bm, Hm, nb·bs, Wp)
    x = b.reshape(x, b.concat([b.ints([0, 0]), g.nb, g.bs, b.ints([-1])], 0))
    # key slot c of block j holds grid position (j - nle)·bs + c: column j·bs + c
    base = b.op1("Mul", [_range(b, g.nb), g.bs])  # (nb,)
    idx = b.op1("Add", [b.unsqueeze(base, [1]), b.unsqueeze(g.slots, [0])])  # (nb, kb)
    idx = b.unsqueeze(idx, [0, 1, 3])  # (1, 1, nb, 1, kb)
    full = b.concat([b.op1("Shape", [x], start=0, end=4), g.kb], 0)
    idx = b.op1("Expand", [idx, full])  # (Bm, Hm, nb, bs, kb)
    x = b.op1("GatherElements", [x, idx], axis=4)
    return b.transpose(x, [0, 2, 1, 3, 4])  # (Bm, nb, Hm, bs, kb)


def _range(b: Any, n: str) -> str:
    """int64 (n,): 0 .. n-1 of a 1-element length."""
    end = b.reshape(n, b.ints([], tag="scalar_shape"))
    return b.op1("Range", [b.const(np.array(0)), end, b.const(np.array(1))])
