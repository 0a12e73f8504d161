"""The op registry: each op's shape rule, numpy reference and ONNX lowerings, side by side.

The interpreter and the exporter are generic loops over a graph that look each node's op up
here. Op families live in `attngraph/ops/<family>.py` and register themselves on import.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._types import TensorType

# infer(input_types, attrs, fail) -> output types; `fail(message)` raises the layer's ShapeError.
InferFn = Callable[..., Sequence[TensorType]]
# reference(attrs, params, *inputs) -> tuple of numpy arrays.
ReferenceFn = Callable[..., Any]
# lower(builder, node, input_names) -> list of output names.
LowerFn = Callable[..., "list[str]"]

TARGETS = ("ort", "onnx", "decomposed")


@dataclass(frozen=True)
class DecodeForms:
    """How an op that looks across positions runs one KV-cache decoding step."""

    # reference(attrs, params, ctx, node, *inputs) -> outputs for the new tokens
    reference: ReferenceFn
    # lower(builder, node, input_names, ctx) -> output names
    lower: LowerFn
    # check(node) -> None, or why this node cannot decode with a cache
    check: Callable[[Any], str | None] = lambda node: None
    # cache(node) -> (kv_heads, head_dim, window) for ops that keep a key/value cache
    cache: Callable[[Any], tuple[int, int, int | None]] | None = None


@dataclass(frozen=True)
class OpDef:
    """Everything attngraph knows about one op."""

    name: str
    infer: InferFn
    reference: ReferenceFn
    # Lowerings by target; "decomposed" is required and is the fallback for the other targets.
    lower: dict[str, LowerFn] = field(default_factory=dict)
    # KV-cache decoding (`_decode.py`): an op either treats every sequence position on its
    # own (`per_position(attrs)` is True, so it runs unchanged on the new tokens only), or it
    # has decode forms that read positions, padding and the cache from a `Decode` context.
    per_position: Callable[[Any], bool] | None = None
    decode: DecodeForms | None = None

    def lowering(self, target: str) -> LowerFn:
        return self.lower.get(target) or self.lower["decomposed"]


OPS: dict[str, OpDef] = {}


def register(
    name: str,
    *,
    infer: InferFn,
    reference: ReferenceFn,
    decomposed: LowerFn,
    ort: LowerFn | None = None,
    onnx: LowerFn | None = None,
    per_position: bool | Callable[[Any], bool] = False,
    decode: DecodeForms | None = None,
) -> OpDef:
    """Add an op to the registry; each op name is registered exactly once."""
    if name in OPS:
        raise RuntimeError(f"op {name!r} registered twice")
    lower = {"decomposed": decomposed}
    if ort is not None:
        lower["ort"] = ort
    if onnx is not None:
        lower["onnx"] = onnx
    rule = (lambda attrs: True) if per_position is True else (per_position or None)
    op = OpDef(name, infer, reference, lower, rule, decode)
    OPS[name] = op
    return op
