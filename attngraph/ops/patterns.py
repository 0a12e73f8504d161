"""Sparse attention patterns as exact boolean masks: strided (Sparse Transformer) and
block-sparse (a static block layout).

Both produce bool[1, 1, Sq, Sk] (True = attend) from the sequence lengths of a query source
and a key source, for the `mask=` input of attention, which every target feeds to its fused
node. Query i sits at absolute position p = Sk - Sq + i (bottom-right, as causal attention).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._registry import register
from .._types import TensorType
from ._attention_graph import query_positions, relative_distance
from ._shapes import Fail, need_rank


def _pattern_infer(types: list[Any], attrs: Any, fail: Fail) -> list[TensorType]:
    q_src, k_src = types
    need_rank(q_src, (2, 3), "query source [batch, q_seq(, dim)]", fail)
    need_rank(k_src, (2, 3), "key source [batch, kv_seq(, dim)]", fail)
    return [TensorType("bool", (1, 1, q_src.shape[1], k_src.shape[1]))]


def _positions(sq: int, sk: int) -> tuple[np.ndarray, np.ndarray]:
    """Absolute query positions p (Sq, 1) and key positions j (1, Sk)."""
    return np.arange(sq)[:, None] + (sk - sq), np.arange(sk)[None, :]


# -- strided (Sparse Transformer, Child et al. 2019) ------------------------------------------


def strided_allow(sq: int, sk: int, stride: int, window: int, causal: bool) -> np.ndarray:
    """Bool (Sq, Sk): j is attended when (p - j) % stride == 0 or j is within the local
    window (p - window < j <= p when causal, |p - j| < window otherwise); causal also
    keeps j <= p for the strided part."""
    p, j = _positions(sq, sk)
    dist = p - j  # (Sq, Sk)
    local = (dist >= 0) & (dist < window) if causal else np.abs(dist) < window
    allow = (dist % stride == 0) | local
    return allow & (dist >= 0) if causal else allow


def _strided_ref(attrs: Any, p: Any, q_src: np.ndarray, k_src: np.ndarray) -> np.ndarray:
    a = attrs
    return strided_allow(q_src.shape[1], k_src.shape[1], a["stride"], a["window"],
                         a["causal"])[None, None]  # (1, 1, Sq, Sk)


def _strided_lower(b: Any, node: Any, ins: list[str]) -> list[str]:
    a = node.attrs
    dist = b.op1("Neg", [relative_distance(b, ins[0], ins[1], 1)])  # (Sq, Sk): p - j
    zero = b.const(np.array(0), "int64")
    window = b.const(np.array(a["window"]), "int64")
    # Mod of int64 with fmod=0 takes the divisor's sign, as numpy's %: exact for p - j < 0.
    rem = b.op1("Mod", [dist, b.const(np.array(a["stride"]), "int64")])
    allow = b.op1("Equal", [rem, zero])
    if a["causal"]:
        local = b.op1("Less", [dist, window])
        allow = b.op1("And", [b.op1("Or", [allow, local]),
                              b.op1("GreaterOrEqual", [dist, zero])])
    else:
        allow = b.op1("Or", [allow, b.op1("Less", [b.op1("Abs", [dist]), window])])
    return [b.unsqueeze(allow, [0, 1])]  # (1, 1, Sq, Sk)


register("strided_pattern", infer=_pattern_infer, reference=_strided_ref,
         decomposed=_strided_lower)

# -- block-sparse (a static layout of blocks) -------------------------------------------------


def block_sparse_allow(sq: int, sk: int, block_size: int, layout: np.ndarray,
                       causal: bool) -> np.ndarray:
    """Bool (Sq, Sk): layout[p // block_size, j // block_size]; positions past the layout
    attend nothing and are attended by nothing; causal also keeps j <= p."""
    p, j = _positions(sq, sk)
    qb, kb = p // block_size, j // block_size  # (Sq, 1), (1, Sk)
    inside = (qb < layout.shape[0]) & (kb < layout.shape[1])
    allow = layout[np.minimum(qb, layout.shape[0] - 1), np.minimum(kb, layout.shape[1] - 1)]
    allow = allow & inside
    return allow & (j <= p) if causal else allow


def _block_ref(attrs: Any, p: Any, q_src: np.ndarray, k_src: np.ndarray) -> np.ndarray:
    layout = np.asarray(attrs["layout"], bool)
    return block_sparse_allow(q_src.shape[1], k_src.shape[1], attrs["block_size"], layout,
                              attrs["causal"])[None, None]  # (1, 1, Sq, Sk)


def _block_lower(b: Any, node: Any, ins: list[str]) -> list[str]:
    a = node.attrs
    layout = np.asarray(a["layout"], bool)
    nq, nk = layout.shape
    qpos, sk = query_positions(b, ins[0], ins[1], 1)  # (Sq,) absolute positions, Sk
    one, zero = b.const(np.array(1), "int64"), b.const(np.array(0), "int64")
    kpos = b.op1("Range", [zero, sk, one])  # (Sk,)
    size = b.const(np.array(a["block_size"]), "int64")
    qb = b.unsqueeze(b.op1("Div", [qpos, size]), [1])  # (Sq, 1) query block
    kb = b.unsqueeze(b.op1("Div", [kpos, size]), [0])  # (1, Sk) key block
    inside = b.op1("And", [b.op1("Less", [qb, b.const(np.array(nq), "int64")]),
                           b.op1("Less", [kb, b.const(np.array(nk), "int64")])])
    flat = b.op1("Add", [b.op1("Mul", [b.op1("Min", [qb, b.const(np.array(nq - 1), "int64")]),
                                       b.const(np.array(nk), "int64")]),
                         b.op1("Min", [kb, b.const(np.array(nk - 1), "int64")])])  # (Sq, Sk)
    table = b.const(layout.reshape(-1), "bool", tag="layout")
    allow = b.op1("And", [b.op1("Gather", [table, flat], axis=0), inside])
    if a["causal"]:
        diff = relative_distance(b, ins[0], ins[1], 1)  # j - p
        allow = b.op1("And", [allow, b.op1("LessOrEqual", [diff, zero])])
    return [b.unsqueeze(allow, [0, 1])]  # (1, 1, Sq, Sk)


register("block_sparse_pattern", infer=_pattern_infer, reference=_block_ref,
         decomposed=_block_lower)
