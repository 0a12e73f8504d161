"""Tensor types: a dtype and a shape whose entries are ints (static) or strings (symbolic)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeGuard, Union

import numpy as np

from ._errors import ShapeError

Dim = Union[int, str, None]  # noqa: UP007 - a runtime alias on Python 3.10; None: unknown size

DTYPES: dict[str, str] = {
    "float32": "f32",
    "float16": "f16",
    "int64": "i64",
    "int32": "i32",
    "bool": "bool",
}
FLOAT_DTYPES = ("float32", "float16")
INT_DTYPES = ("int64", "int32")


def normalize_dtype(dtype: object) -> str | None:
    """Return the canonical dtype name, or None when it is not one attngraph knows."""
    try:
        name = np.dtype(dtype).name  # type: ignore[call-overload]
    except TypeError:
        return None
    return name if name in DTYPES else None


@dataclass(frozen=True)
class TensorType:
    """A tensor's dtype and shape; prints as `f32[batch,seq,512]`."""

    dtype: str
    shape: tuple[Dim, ...]

    def __post_init__(self) -> None:
        # Only the kinds are checked: a foreign model's or array's dtype (float64) may be shown
        if not isinstance(self.dtype, str) or not self.dtype:
            raise ShapeError(f"TensorType: dtype must be a dtype name such as "
                             f"{list(DTYPES)}, given {self.dtype!r}")
        if not _is_shape(self.shape):
            raise ShapeError(f"TensorType: shape must be a tuple of ints, names or None, "
                             f"given {self.shape!r}")

    @property
    def rank(self) -> int:
        """The number of dims."""
        return len(self.shape)

    def __str__(self) -> str:
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{DTYPES.get(self.dtype, self.dtype)}[{dims}]"

    def with_shape(self, shape: tuple[Dim, ...]) -> TensorType:
        """The same dtype with another shape (a tuple of dims: ints, names or None)."""
        dims = tuple(shape) if isinstance(shape, (tuple, list)) else None
        if not _is_shape(dims):
            raise ShapeError(f"TensorType.with_shape: shape must be a tuple of ints, names or "
                             f"None, given {shape!r}")
        return TensorType(self.dtype, dims)

    def with_dtype(self, dtype: str) -> TensorType:
        """The same shape with another dtype ("float32", "int64", ...)."""
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise ShapeError(f"TensorType.with_dtype: dtype must be one of {list(DTYPES)}, "
                             f"given {dtype!r}")
        return TensorType(dtype, self.shape)


def _is_shape(shape: object) -> TypeGuard[tuple[Dim, ...]]:
    """A tuple of dims: ints (not bools), names or None."""
    return isinstance(shape, tuple) and all(
        d is None or isinstance(d, str) or isinstance(d, int) and not isinstance(d, bool)
        for d in shape)


def same_dim(a: Dim, b: Dim) -> bool | None:
    """True when two dims are certainly equal, False when certainly different, None if unknown."""
    if a is None or b is None:
        return None
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    if isinstance(a, str) and isinstance(b, str) and a == b:
        return True
    return None


def broadcast_shapes(a: tuple[Dim, ...], b: tuple[Dim, ...]) -> tuple[Dim, ...] | None:
    """Numpy broadcasting on symbolic shapes; None when the shapes certainly do not broadcast."""
    out: list[Dim] = []
    for i in range(max(len(a), len(b))):
        da = a[len(a) - 1 - i] if i < len(a) else 1
        db = b[len(b) - 1 - i] if i < len(b) else 1
        if da == 1:
            out.append(db)
        elif db == 1:
            out.append(da)
        elif same_dim(da, db) is False:
            return None
        else:
            out.append(da if da is not None else db)
    return tuple(reversed(out))


def add_dims(a: Dim, b: Dim) -> Dim:
    """The size of two dims laid end to end (for concatenation)."""
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    if a is None or b is None:
        return None
    return f"{a}+{b}"


def shape_matches(actual: tuple[int, ...], expected: tuple[Dim, ...]) -> bool:
    """Whether a concrete shape fits a declared one (symbolic dims accept any size)."""
    if len(actual) != len(expected):
        return False
    return all(not isinstance(e, int) or a == e for a, e in zip(actual, expected))
