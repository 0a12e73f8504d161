"""The reference interpreter: evaluates a model node by node with each op's numpy reference."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ._errors import FeedError, layer_message
from ._feeds import check_feeds
from ._params import check_params
from ._registry import OPS

if TYPE_CHECKING:
    from ._decode import Decode
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
    env = run_nodes(model, checked, arrays, observer=observer)
    result = {k: env[(v.node, v.index)] for k, v in model.outputs.items()}
    for i, v in enumerate(extra):
        result[f"extra.{i}"] = env[(v.node, v.index)]
    return result


def run_nodes(model: Model, params: Mapping[str, np.ndarray], inputs: Mapping[str, np.ndarray],
              *, observer: Any = None, decode: Decode | None = None,
              apply: Callable[[Node, Any, dict[str, np.ndarray], list[Any]], Any] | None = None,
              ) -> dict[tuple[Node, int], np.ndarray]:
    """Evaluate every node on checked params and inputs; with `decode`, ops that look across
    positions run their KV-cache forms (the others see only the new tokens). `apply(node, op,
    local_params, args)`, when given, evaluates each node instead (a step model's forms)."""
    env: dict[tuple[Node, int], np.ndarray] = {}
    for node in model.nodes:
        if node.op == "input":
            arr = inputs[node.attrs["name"]]
            env[(node, 0)] = arr.astype(np.float32) if arr.dtype.kind == "f" else arr
            continue
        local = {p.name: params[model.param_key(node, p)] for p in node.params}
        args = [env[(v.node, v.index)] if v is not None else None for v in node.inputs]
        op = OPS[node.op]
        cached = decode is not None and op.decode is not None
        problem = (op.check(node.attrs, *args)
                   if op.check is not None and not cached and apply is None else None)
        try:
            if problem is not None:
                raise FeedError(problem)
            if apply is not None:
                outs = apply(node, op, local, args)
            elif cached:
                assert op.decode is not None
                outs = op.decode.reference(node.attrs, local, decode, node, *args)
            else:
                outs = op.reference(node.attrs, local, *args)
        except FeedError as exc:  # a value the feeds led to: say which layer met it, and where
            message = str(exc).removeprefix(f"{node.op}: ")
            raise FeedError(layer_message(node.op, model.name_of(node), message,
                                          node.location)) from None
        if not isinstance(outs, tuple):
            outs = (outs,)
        for i, out in enumerate(outs):
            env[(node, i)] = out
        if observer is not None:
            observer(node, model.name_of(node))
    return env
