"""Limits a model puts on its feeds beyond their types: token ids inside each embedding's
vocabulary, sequence lengths within each learned position table. Checked before onnxruntime
runs a model built from an `ag.Model`, so a bad feed gets the reference's message (naming the
layer) rather than onnxruntime's, and negative ids, which onnxruntime's Gather would silently
wrap around, are refused."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ._errors import FeedError

if TYPE_CHECKING:
    from ._model import Model


@dataclass(frozen=True)
class Limit:
    """`ids`: the input `name` holds ids of a table with `size` rows; `length`: the symbolic
    dim `name` may be at most `size` (a learned position table)."""

    kind: str
    name: str
    size: int
    op: str
    layer: str
    node: Any = None  # `masks`: an attention node whose mask sizes the feeds decide


def feed_limits(model: Model) -> list[Limit]:
    """The limits of `model`'s embeddings that read an input directly and of its learned
    positional encodings whose sequence dim is symbolic."""
    keys = {v.node: k for k, v in model.inputs.items()}
    out = []
    for node in model.nodes:
        src = node.inputs[0] if node.inputs else None
        if node.op == "embedding" and src is not None and src.node in keys:
            out.append(Limit("ids", keys[src.node], int(node.attrs["vocab_size"]), node.op,
                             model.name_of(node)))
        if node.op == "positional_encoding" and node.attrs.get("kind") == "learned" \
                and src is not None and isinstance(src.type.shape[1], str):
            out.append(Limit("length", src.type.shape[1], int(node.attrs["max_len"]), node.op,
                             model.name_of(node)))
        if node.op in ("multi_head_attention", "attention") and any(
                v is not None for v in node.inputs[-2:]):
            out.append(Limit("masks", "", 0, node.op, model.name_of(node), node))
    return out


def check_limits(limits: list[Limit], types: Mapping[str, tuple[object, ...]],
                 arrays: Mapping[str, np.ndarray], where: str) -> None:
    """Raise a FeedError for the first limit the (already type-checked) feeds break."""
    bound: dict[str, int] = {}
    for name, shape in types.items():
        for dim, size in zip(shape, arrays[name].shape):
            if isinstance(dim, str):
                bound.setdefault(dim, int(size))
    for limit in limits:
        if limit.kind == "ids":
            ids = arrays[limit.name]
            if ids.size and (ids.min() < 0 or ids.max() >= limit.size):
                raise FeedError(f"{where}: {limit.op} '{limit.layer}': ids must lie in "
                                f"[0, {limit.size}), given values in [{ids.min()}, "
                                f"{ids.max()}] (input {limit.name!r})")
        elif limit.kind == "length" and bound.get(limit.name, 0) > limit.size:
            raise FeedError(f"{where}: {limit.op} '{limit.layer}': sequence length "
                            f"{bound[limit.name]} exceeds max_len={limit.size}")
        elif limit.kind == "masks":
            problem = _mask_sizes(limit.node, bound)
            if problem is not None:
                raise FeedError(f"{where}: {limit.op} '{limit.layer}': {problem}")


def _mask_sizes(node: Any, bound: Mapping[str, int]) -> str | None:
    """The attention op's own run-time mask check, on sizes the feeds bind (None when a size
    is still open: onnxruntime's error is translated then)."""
    from .ops.attention import masks_problem

    def size(dim: Any) -> int | None:
        return dim if isinstance(dim, int) else bound.get(dim) if isinstance(dim, str) else None

    def shape(value: Any) -> tuple[int, ...] | None:
        if value is None:
            return None
        dims = tuple(size(d) for d in value.type.shape)
        return None if any(d is None for d in dims) else dims  # type: ignore[return-value]

    if node.op == "attention":
        q, k = node.inputs[0].type.shape, node.inputs[1].type.shape
        batch, heads, sq, sk = size(q[0]), size(q[1]), size(q[2]), size(k[2])
    else:
        x = node.inputs[0].type.shape
        src = (node.inputs[1] or node.inputs[0]).type.shape
        batch, heads, sq, sk = size(x[0]), node.attrs["num_heads"], size(x[1]), size(src[1])
    kpm, mask = (shape(v) for v in node.inputs[-2:])
    if None in (batch, heads, sq, sk) or (node.inputs[-2] is not None and kpm is None) \
            or (node.inputs[-1] is not None and mask is None):
        return None
    return masks_problem(batch, heads, sq, sk, kpm, mask)  # type: ignore[arg-type]
