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
class StreamForms:
    """How an op that looks across positions runs in a streaming step model (`_stream_plan.py`):
    a chunk of frames plus the state carried from earlier chunks."""

    # check(node, last_only) -> None, or why the node cannot stream (it looks ahead). last_only:
    # only the node's output at the last position reaches the model's outputs.
    check: Callable[[Any, bool], str | None]
    # state(node, last_only) -> {part: shape}; "batch" marks the batch dim, a str the length
    # of a growing (or window-bounded) cache, which starts at 0.
    state: Callable[[Any, bool], dict[str, tuple[Any, ...]]] = lambda node, last: {}
    # reference(attrs, params, ctx, node, *inputs) / lower(builder, node, input_names, ctx);
    # None: the op's ordinary forms run on the chunk unchanged.
    reference: ReferenceFn | None = None
    lower: LowerFn | None = None
    # last_query(builder, node, input_names) -> outputs at the last position only, for ordinary
    # exports of a node whose later use is position-wise ops and last_timestep; None if none.
    last_query: LowerFn | None = None


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
    stream: StreamForms | None = None
    # check(attrs, *inputs) -> None, or what is wrong with the arrays a node is about to get
    # (sizes that symbolic dims left open at build time); the interpreter raises a FeedError.
    check: Callable[..., str | None] | None = None

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
    stream: StreamForms | None = None,
    check: Callable[..., str | None] | None = None,
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
    op = OpDef(name, infer, reference, lower, rule, decode, stream, check)
    OPS[name] = op
    return op
