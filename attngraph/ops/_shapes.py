"""Shape-rule helpers shared by the op families."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

from .._types import FLOAT_DTYPES, TensorType, broadcast_shapes

Fail = Callable[[str], NoReturn]


def need_float(t: TensorType, what: str, fail: Fail) -> None:
    if t.dtype not in FLOAT_DTYPES:
        fail(f"{what} must be a float tensor, given {t}")


def need_rank(t: TensorType, ranks: tuple[int, ...], what: str, fail: Fail) -> None:
    if t.rank not in ranks:
        expected = " or ".join(str(r) for r in ranks)
        fail(f"{what} must have rank {expected}, given {t}")


def same_type(types: list[Any], fail: Fail) -> list[TensorType]:
    """Elementwise ops: equal dtypes, shapes that broadcast; returns the broadcast type."""
    first = types[0]
    shape = first.shape
    for t in types[1:]:
        if t.dtype != first.dtype:
            fail(f"inputs must share a dtype, given {first} and {t}")
        out = broadcast_shapes(shape, t.shape)
        if out is None:
            fail(f"input shapes do not broadcast: {first} and {t}")
        shape = out
    return [first.with_shape(shape)]


def unary(types: list[Any], attrs: Any, fail: Fail) -> list[TensorType]:
    need_float(types[0], "input", fail)
    return [types[0]]
