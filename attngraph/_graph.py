"""Graph values and nodes: immutable, created by builders, typed when they are made."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NoReturn

from ._errors import ShapeError, layer_message
from ._registry import OPS
from ._types import TensorType

_SEQ = itertools.count()


@dataclass(frozen=True)
class ParamSpec:
    """A parameter a node owns: local name (e.g. 'kernel'), concrete shape, initialiser.

    init is one of 'glorot' (Xavier/Glorot uniform over the last two dims), 'zeros', 'ones',
    'normal' (std 0.02, for embeddings).
    """

    name: str
    shape: tuple[int, ...]
    init: str
    # Set when the parameter belongs to another node (tied weights): it is read from there.
    owner: Node | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, eq=False)
class Node:
    """One op application. Identity is the object: two equal-looking nodes are distinct."""

    op: str
    inputs: tuple[Value | None, ...]
    attrs: Mapping[str, Any]
    params: tuple[ParamSpec, ...]
    out_types: tuple[TensorType, ...]
    name: str | None
    location: str
    seq: int

    def __repr__(self) -> str:
        return f"<{self.op} {self.name or '(unnamed)'} at {self.location}>"


@dataclass(frozen=True, eq=False)
class Value:
    """A handle on one output of a node; what every builder takes and returns."""

    node: Node
    index: int = 0

    @property
    def type(self) -> TensorType:
        """The value's TensorType (dtype and shape), inferred when its layer was built."""
        return self.node.out_types[self.index]

    @property
    def shape(self) -> tuple[Any, ...]:
        """The value's dims: ints (static), strings (symbolic, e.g. "batch") or None."""
        return self.type.shape

    @property
    def dtype(self) -> str:
        """The value's dtype name ("float32", "int64", "bool", ...)."""
        return self.type.dtype

    def __repr__(self) -> str:
        return f"<Value {self.type} from {self.node.op} {self.node.name or '(unnamed)'}>"


def make_node(
    op: str,
    inputs: tuple[Value | None, ...] | list[Value | None],
    attrs: Mapping[str, Any],
    *,
    name: str | None,
    location: str,
    params: tuple[ParamSpec, ...] = (),
) -> Node:
    """Create a node, inferring its output types now so shape errors point at the user's line."""

    def fail(message: str) -> NoReturn:
        raise ShapeError(layer_message(op, name, message, location))

    in_types = [v.type if v is not None else None for v in inputs]
    out_types = OPS[op].infer(in_types, attrs, fail)
    return Node(
        op=op,
        inputs=tuple(inputs),
        attrs=MappingProxyType(dict(attrs)),
        params=tuple(params),
        out_types=tuple(out_types),
        name=name,
        location=location,
        seq=next(_SEQ),
    )
