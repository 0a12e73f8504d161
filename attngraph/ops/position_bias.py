"""Additive attention biases from positions: T5 relative-position buckets and ALiBi.

Both produce f32[1, H, Sq, Sk] and are meant for the `mask=` (additive float) input of
`multi_head_attention`, which every target feeds to its fused attention node. Query i sits at
absolute position p = Sk - Sq + i (bottom-right, as causal attention).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._registry import register
from .._types import TensorType
from ._attention_graph import relative_distance
from ._shapes import Fail, need_rank


def _bias_infer(types: list[Any], attrs: Any, fail: Fail) -> list[TensorType]:
    q_src, k_src = types
    need_rank(q_src, (2, 3), "query source [batch, q_seq(, dim)]", fail)
    need_rank(k_src, (2, 3), "key source [batch, kv_seq(, dim)]", fail)
    return [TensorType("float32", (1, attrs["num_heads"], q_src.shape[1], k_src.shape[1]))]


# -- T5 relative-position buckets ------------------------------------------------------------


def relative_buckets(rel: np.ndarray, bidirectional: bool, num_buckets: int,
                     max_distance: int) -> np.ndarray:
    """T5's bucket of each relative position rel = j - p: exact buckets for small distances,
    logarithmic ones up to max_distance, one side per half of the buckets if bidirectional."""
    buckets = np.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        buckets += (rel > 0) * num_buckets
        dist = np.abs(rel)
    else:
        dist = -np.minimum(rel, 0)
    max_exact = num_buckets // 2
    with np.errstate(divide="ignore"):
        large = max_exact + (np.log(np.maximum(dist, 1).astype(np.float32) / max_exact)
                             / math.log(max_distance / max_exact)
                             * (num_buckets - max_exact)).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    return buckets + np.where(dist < max_exact, dist, large)


def _rel_ref(attrs: Any, p: dict[str, np.ndarray], q_src: np.ndarray,
             k_src: np.ndarray) -> np.ndarray:
    sq, sk = q_src.shape[1], k_src.shape[1]
    rel = np.arange(sk)[None, :] - (np.arange(sq)[:, None] + sk - sq)  # (Sq, Sk): j - p
    buckets = relative_buckets(rel, attrs["bidirectional"], attrs["num_buckets"],
                               attrs["max_distance"])
    return p["embeddings"][buckets].transpose(2, 0, 1)[None]  # (1, H, Sq, Sk)


def _rel_lower(b: Any, node: Any, ins: list[str]) -> list[str]:
    a = node.attrs
    rel = relative_distance(b, ins[0], ins[1], 1)
    num_buckets = a["num_buckets"]
    zero = b.const(np.array(0), "int64")
    if a["bidirectional"]:
        num_buckets //= 2
        side = b.op1("Mul", [b.cast(b.op1("Greater", [rel, zero]), "int64"),
                             b.const(np.array(num_buckets), "int64")])
        dist = b.op1("Abs", [rel])
    else:
        side = None
        dist = b.op1("Neg", [b.op1("Min", [rel, zero])])
    max_exact = num_buckets // 2
    ratio = b.op1("Div", [b.cast(b.op1("Max", [dist, b.const(np.array(1), "int64")]), "float32"),
                          b.const(np.array(max_exact, np.float32), "float32")])
    scaled = b.op1("Mul", [b.op1("Log", [ratio]), b.const(np.array(
        (num_buckets - max_exact) / math.log(a["max_distance"] / max_exact), np.float32),
        "float32")])
    large = b.op1("Add", [b.cast(scaled, "int64"), b.const(np.array(max_exact), "int64")])
    large = b.op1("Min", [large, b.const(np.array(num_buckets - 1), "int64")])
    small = b.op1("Less", [dist, b.const(np.array(max_exact), "int64")])
    buckets = b.op1("Where", [small, dist, large])
    if side is not None:
        buckets = b.op1("Add", [buckets, side])
    bias = b.op1("Gather", [b.param("embeddings"), buckets], axis=0)  # (Sq, Sk, H)
    return [b.unsqueeze(b.transpose(bias, [2, 0, 1]), [0])]  # (1, H, Sq, Sk)


register("relative_position_bias", infer=_bias_infer, reference=_rel_ref, decomposed=_rel_lower)

# -- ALiBi -----------------------------------------------------------------------------------


def alibi_slopes(num_heads: int) -> np.ndarray:
    """Head slopes of ALiBi (Press et al. 2022): 2^(-8h/n) for n a power of two; otherwise
    those of the closest lower power of two, then every other slope of the next one."""
    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(num_heads).is_integer():
        slopes = power_of_two(num_heads)
    else:
        closest = 2 ** math.floor(math.log2(num_heads))
        slopes = power_of_two(closest) + power_of_two(2 * closest)[0::2][: num_heads - closest]
    return np.asarray(slopes, np.float32)


def _alibi_ref(attrs: Any, p: Any, q_src: np.ndarray, k_src: np.ndarray) -> np.ndarray:
    sq, sk = q_src.shape[1], k_src.shape[1]
    rel = np.arange(sk)[None, :] - (np.arange(sq)[:, None] + sk - sq)  # (Sq, Sk): j - p
    slopes = alibi_slopes(attrs["num_heads"])[:, None, None]  # (H, 1, 1)
    return (-slopes * np.abs(rel)[None]).astype(np.float32)[None]  # (1, H, Sq, Sk)


def _alibi_lower(b: Any, node: Any, ins: list[str]) -> list[str]:
    dist = b.cast(b.op1("Abs", [relative_distance(b, ins[0], ins[1], 1)]), b.dtype)  # (Sq, Sk)
    slopes = -alibi_slopes(node.attrs["num_heads"])[None, :, None, None]  # (1, H, 1, 1)
    return [b.op1("Mul", [b.unsqueeze(dist, [0, 1]), b.const(slopes)])]


register("alibi_bias", infer=_bias_infer, reference=_alibi_ref, decomposed=_alibi_lower)
