"""Limits a model puts on its feeds beyond their types: token ids inside each embedding's
vocabulary, sequence lengths within each learned position table. Checked before onnxruntime
runs a model built from an `ag.Model`, so a bad feed gets the reference's message (naming the
layer) rather than onnxruntime's, and negative ids, which onnxruntime's Gather would silently
wrap around, are refused."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

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
        elif bound.get(limit.name, 0) > limit.size:
            raise FeedError(f"{where}: {limit.op} '{limit.layer}': sequence length "
                            f"{bound[limit.name]} exceeds max_len={limit.size}")
