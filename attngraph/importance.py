"""Head importance by ablation: how much the outputs (or a loss) change when one head is
masked. No gradients are needed: each head is switched off in turn and the model re-run with
the reference interpreter.

Masking head h zeroes rows h*Dv .. (h+1)*Dv - 1 of the layer's output projection kernel, so
the head adds nothing to the layer's output (Michel et al. 2019 mask head outputs the same
way).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._checks import Checker, name_list, require_model
from ._errors import caller_location
from ._params import check_params
from .ops.attention import value_dim

METRICS = ("l2", "max_abs")


@dataclass(frozen=True)
class HeadImportance:
    """One head's importance score (higher = the model relies on it more)."""

    layer: str
    head: int
    score: float


def head_importance(model: Any, params: Mapping[str, np.ndarray], feeds: Mapping[str, Any], *,
                    metric: str | Callable[[dict[str, np.ndarray]], float] = "l2",
                    layers: Sequence[str] | None = None) -> list[HeadImportance]:
    """Rank attention heads by ablation, most important first.

    metric:
        "l2": sum over float outputs of ||y_masked - y||^2 / ||y||^2 (relative change);
        "max_abs": the largest absolute change of any output element;
        a callable loss(outputs) -> float: loss(masked) - loss(unmasked), e.g. a
        cross-entropy against targets (a head whose removal raises the loss matters).
    layers: names of attention layers to score (default: all of them; one name alone is a
        one-item list): every
        `multi_head_attention`, and `attention` nodes whose heads are merged into a dense
        projection (`ag.attention_module` with separate key and value inputs).

    Returns a list of HeadImportance(layer, head, score), sorted by score, highest first.
    Raises ConfigError for a model that is not an ag.Model, an unknown metric or layer, a
    metric callable that returns no single number, or a model with no such layer.
    """
    where = caller_location()
    c = Checker("head_importance", None, where)
    require_model(model, "head_importance", where)
    if not callable(metric):
        c.choice(metric, "metric", METRICS)
    chosen = name_list(layers, "head_importance", "layers", where)
    candidates = ablatable_heads(model)
    if not candidates:
        c.fail("the model has no attention layer with an output projection to ablate")
    names = list(candidates) if chosen is None else chosen
    unknown = [n for n in names if n not in candidates]
    if unknown or not names:
        c.fail(f"layers must name attention layers with an output projection "
               f"{list(candidates)}, given {unknown or names!r}")
    base_params = check_params(model.param_specs, params)
    base = model.predict(base_params, feeds)
    scores = []
    for name in names:
        key, heads, dv = candidates[name]
        for h in range(heads):
            kernel = base_params[key].copy()
            kernel[h * dv:(h + 1) * dv] = 0.0  # head h's share of the output projection
            masked = model.predict({**base_params, key: kernel}, feeds)
            scores.append(HeadImportance(name, h, _change(metric, base, masked, c)))
    return sorted(scores, key=lambda s: -s.score)


def ablatable_heads(model: Any) -> dict[str, tuple[str, int, int]]:
    """Layer name -> (output kernel's parameter name, heads, Dv) for every attention layer
    whose heads meet in an output projection: `multi_head_attention`, and the `attention` op
    followed by merge_heads and a dense layer (as `ag.attention_module` builds it)."""
    found = {}
    for node in model.nodes:
        if node.op == "multi_head_attention":
            spec = next(p for p in node.params if p.name == "output.kernel")
            found[model.name_of(node)] = (model.param_key(node, spec), node.attrs["num_heads"],
                                          value_dim(node.attrs))
        elif node.op == "attention":
            merge = _only_consumer(model, node, "merge_heads")
            dense = merge and _only_consumer(model, merge, "dense")
            if dense:
                _, heads, _, dv = node.out_types[0].shape
                spec = next(p for p in dense.params if p.name == "kernel")
                found[model.name_of(node)] = (model.param_key(dense, spec), heads, dv)
    return found


def _only_consumer(model: Any, node: Any, op: str) -> Any:
    """The single node reading `node`'s first output, if it is an `op`; else None."""
    readers = list(model.graph.successors(node))
    if len(readers) == 1 and readers[0].op == op and readers[0].inputs[0].node is node \
            and readers[0].inputs[0].index == 0:
        return readers[0]
    return None


def _change(metric: Any, base: dict[str, np.ndarray], masked: dict[str, np.ndarray],
            c: Checker) -> float:
    if callable(metric):
        return _loss(metric, masked, c) - _loss(metric, base, c)
    floats = [k for k, v in base.items() if v.dtype.kind == "f"]
    if metric == "max_abs":
        return max(float(np.abs(masked[k] - base[k]).max(initial=0.0)) for k in floats)
    total = 0.0
    for k in floats:
        ref = base[k].astype(np.float64)
        total += float(((masked[k] - ref) ** 2).sum() / max(float((ref**2).sum()), 1e-30))
    return total


def _loss(metric: Callable[[dict[str, np.ndarray]], Any], outputs: dict[str, np.ndarray],
          c: Checker) -> float:
    """The metric callable's value as a float: a number or a one-element array (a 0-d loss)."""
    value = metric(outputs)
    arr = np.asarray(value) if isinstance(value, (int, float, np.number, np.ndarray)) else None
    if isinstance(value, bool) or arr is None or arr.size != 1 or arr.dtype.kind not in "iuf":
        given = (f"an array of shape {list(arr.shape)}" if arr is not None and arr.size != 1
                 else f"{type(value).__name__} {value!r}"[:80])
        c.fail(f"metric must return one number (a loss), given {given}")
    return float(arr.reshape(()))
