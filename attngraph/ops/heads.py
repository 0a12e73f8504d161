"""Head layout ops: `split_heads` [B, S, H*D] -> [B, H, S, D] and `merge_heads` back.

Composites that project keys and values from separate inputs (`ag.attention_module`) use them
around the `attention` op; everything else keeps its heads inside one attention node.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._registry import register
from .._types import TensorType
from ._attention_graph import from_heads, to_heads
from ._attention_math import merge_heads, split_heads
from ._shapes import Fail, need_float


def _split_infer(types: list[Any], attrs: Any, fail: Fail) -> list[TensorType]:
    (x,) = types
    need_float(x, "input", fail)
    heads = attrs["heads"]
    if x.rank != 3 or not isinstance(x.shape[2], int) or x.shape[2] % heads:
        fail(f"expected [batch, seq, heads*dim] with a width divisible by {heads}, given {x}")
    return [x.with_shape((x.shape[0], heads, x.shape[1], x.shape[2] // heads))]


def _merge_infer(types: list[Any], attrs: Any, fail: Fail) -> list[TensorType]:
    (x,) = types
    need_float(x, "input", fail)
    if x.rank != 4 or not all(isinstance(d, int) for d in x.shape[1::2]):
        fail(f"expected [batch, heads, seq, dim] with static heads and dim, given {x}")
    return [x.with_shape((x.shape[0], x.shape[2], x.shape[1] * x.shape[3]))]


def _split_ref(attrs: Any, p: Any, x: np.ndarray) -> np.ndarray:
    return split_heads(x, attrs["heads"])  # (B, H, S, D)


def _split_lower(b: Any, node: Any, ins: list[str]) -> list[str]:
    heads = node.attrs["heads"]
    return [to_heads(b, ins[0], heads, node.inputs[0].type.shape[2] // heads)]


def _merge_ref(attrs: Any, p: Any, x: np.ndarray) -> np.ndarray:
    return merge_heads(x)  # (B, S, H*D)


def _merge_lower(b: Any, node: Any, ins: list[str]) -> list[str]:
    _, heads, _, dim = node.inputs[0].type.shape
    return [from_heads(b, ins[0], heads, dim)]


register("split_heads", infer=_split_infer, reference=_split_ref, decomposed=_split_lower,
         per_position=True)
register("merge_heads", infer=_merge_infer, reference=_merge_ref, decomposed=_merge_lower,
         per_position=True)
