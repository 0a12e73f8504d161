"""The reference interpreter: evaluates a model node by node with each op's numpy reference."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ._feeds import check_feeds
from ._params import check_params
from ._registry import OPS

if TYPE_CHECKING:
    from ._graph import Node, Value
    from ._model import Model


def evaluate(
    model: Model, params: Mapping[str, Any], feeds: Mapping[str, Any], *, check_finite: bool = False,
    extra: tuple[Value, ...] = (), observer: Any = None,
) -> dict[str, np.ndarray]:
    """Run the model in numpy (float32 throughout). `extra` values are returned under keys
    `"extra.<i>"` (used by analysis to read intermediate results)."""
    checked = check_params(model.param_specs, params)
    arrays = check_feeds(model.input_types, feeds, check_finite=check_finite)
    env: dict[tuple[Node, int], np.ndarray] = {}
    for node in model.nodes:
        if node.op == "input":
            arr = arrays[node.attrs["name"]]
            env[(node, 0)] = arr.astype(np.float32) if arr.dtype.kind == "f" else arr
            continue
        local = {p.name: checked[model.param_key(node, p)] for p in node.params}
        args = [env[(v.node, v.index)] if v is not None else None for v in node.inputs]
        outs = OPS[node.op].reference(node.attrs, local, *args)
        if not isinstance(outs, tuple):
            outs = (outs,)
        for i, out in enumerate(outs):
            env[(node, i)] = out
        if observer is not None:
            observer(node, model.name_of(node))
    result = {k: env[(v.node, v.index)] for k, v in model.outputs.items()}
    for i, v in enumerate(extra):
        result[f"extra.{i}"] = env[(v.node, v.index)]
    return result
