"""`Model`: a graph with named inputs and outputs, its parameters, reference evaluation, summary."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import networkx as nx
import numpy as np

from ._errors import ConfigError, GraphError, caller_location
from ._graph import Node, ParamSpec, Value
from ._types import TensorType


def _as_named(values: Any, what: str, default: str) -> dict[str, Value]:
    if isinstance(values, Value):
        values = [values] if what == "inputs" else values
    if isinstance(values, Value):
        return {default: values}
    if isinstance(values, Mapping):
        out = dict(values)
    elif isinstance(values, (list, tuple)):
        if what == "inputs":
            out = {}
            for v in values:
                if not isinstance(v, Value) or v.node.op != "input":
                    raise GraphError(f"Model: every input must come from ag.input(), given {v!r}")
                out[v.node.attrs["name"]] = v
        else:
            out = {f"{default}_{i}": v for i, v in enumerate(values)}
    else:
        raise GraphError(
            f"Model: {what} must be a value, a list or a dict of values, given {type(values).__name__}"
        )
    for key, v in out.items():
        if not isinstance(key, str) or not key:
            raise GraphError(f"Model: {what} names must be non-empty strings, given {key!r}")
        if not isinstance(v, Value):
            raise GraphError(f"Model: {what} entry {key!r} is not a graph value (given {v!r})")
    if not out:
        raise GraphError(f"Model: {what} is empty")
    return out


class Model:
    """A graph from named inputs to named outputs.

    Args:
        inputs: an `ag.input` value, a list of them, or a dict name -> value.
        outputs: a value (named "output"), a list (named "output_0", ...) or a dict name -> value.

    Raises:
        GraphError: an input is used but not listed, a listed input is unused, two layers
            share a name, or an output name is used twice.
    """

    def __init__(self, inputs: Any, outputs: Any, *, name: str = "model") -> None:
        self.location = caller_location()
        if not isinstance(name, str) or not name:
            raise GraphError(f"Model: name must be a non-empty string, given {name!r} "
                             f"(at {self.location})")
        self.name = name
        self.inputs: dict[str, Value] = _as_named(inputs, "inputs", "input")
        for key, v in self.inputs.items():
            if v.node.op != "input":
                raise GraphError(
                    f"Model: input {key!r} must come from ag.input(), given {v.type} from "
                    f"{v.node.op} (defined at {v.node.location})"
                )
        self.outputs: dict[str, Value] = _as_named(outputs, "outputs", "output")
        self.graph = self._build_graph()
        self.nodes: list[Node] = list(
            nx.lexicographical_topological_sort(self.graph, key=lambda n: n.seq)
        )
        self.node_names: dict[Node, str] = self._assign_names()
        self._check_inputs()
        self.param_specs: dict[str, tuple[Node, ParamSpec]] = {
            self.param_key(n, p): (n, p) for n in self.nodes for p in n.params if p.owner is None
        }
        for node in self.nodes:
            for p in node.params:
                if p.owner is not None and p.owner not in self.graph:
                    raise GraphError(
                        f"Model: {node.op} (defined at {node.location}) shares parameter "
                        f"{p.name!r} of a {p.owner.op} layer (defined at {p.owner.location}) "
                        "that is not part of this model"
                    )

    # -- structure -------------------------------------------------------------------------
    def _build_graph(self) -> nx.DiGraph:
        graph = nx.DiGraph()
        stack = [v.node for v in self.outputs.values()]
        while stack:
            node = stack.pop()
            if node in graph and graph.nodes[node].get("seen"):
                continue
            graph.add_node(node, seen=True)
            for v in node.inputs:
                if v is None:
                    continue
                graph.add_edge(v.node, node)
                stack.append(v.node)
        if not nx.is_directed_acyclic_graph(graph):
            raise GraphError("Model: the graph has a cycle")
        return graph

    def _assign_names(self) -> dict[Node, str]:
        names: dict[Node, str] = {}
        taken: dict[str, Node] = {}
        for node in self.nodes:
            if node.name is None:
                continue
            if node.name in taken:
                other = taken[node.name]
                raise GraphError(
                    f"Model: layer name {node.name!r} is used twice: {other.op} (defined at "
                    f"{other.location}) and {node.op} (defined at {node.location}); "
                    "give each layer its own name"
                )
            taken[node.name] = node
            names[node] = node.name
        counters: dict[str, int] = {}
        for node in self.nodes:
            if node.name is not None:
                continue
            n = counters.get(node.op, 0)
            while f"{node.op}_{n}" in taken:
                n += 1
            counters[node.op] = n + 1
            names[node] = f"{node.op}_{n}"
            taken[names[node]] = node
        return names

    def _check_inputs(self) -> None:
        listed = {v.node for v in self.inputs.values()}
        for node in self.nodes:
            if node.op == "input" and node not in listed:
                raise GraphError(
                    f"Model: input {node.attrs['name']!r} (defined at {node.location}) is used by "
                    "the outputs but is not listed in Model(inputs=...)"
                )
        for key, v in self.inputs.items():
            if v.node not in self.graph:
                raise GraphError(
                    f"Model: input {key!r} (defined at {v.node.location}) does not reach any output"
                )

    # -- public helpers --------------------------------------------------------------------
    def param_key(self, node: Node, spec: ParamSpec) -> str:
        """The full name `<layer>.<param>` of a node's parameter (its owner's, when tied)."""
        return f"{self.node_names[spec.owner or node]}.{spec.name}"

    def name_of(self, node: Node) -> str:
        """The layer name of a node of this model (explicit, or auto-named `<op>_<n>`)."""
        try:
            return self.node_names[node]
        except (KeyError, TypeError):
            what = repr(node) if isinstance(node, Node) else type(node).__name__
            loc = caller_location()
            raise GraphError(f"Model.name_of: node must be a node of this model, given {what}"
                             + (f" (at {loc})" if loc else "")) from None

    @property
    def input_types(self) -> dict[str, TensorType]:
        """Input name -> its declared TensorType."""
        return {k: v.type for k, v in self.inputs.items()}

    @property
    def output_types(self) -> dict[str, TensorType]:
        """Output name -> its inferred TensorType."""
        return {k: v.type for k, v in self.outputs.items()}

    @property
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Parameter name (`<layer>.<param>`) -> its shape, as `init` and `load_params` expect."""
        return {k: spec.shape for k, (_, spec) in self.param_specs.items()}

    def init(self, seed: int = 0) -> dict[str, np.ndarray]:
        """Deterministic parameters: Glorot uniform kernels, zero biases, unit norm scales."""
        from ._params import init_params

        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigError(f"Model.init: seed must be an int >= 0, given {seed!r} "
                              f"(at {caller_location()})")
        return init_params(self.param_specs, int(seed))

    def predict(self, params: Mapping[str, np.ndarray], feeds: Mapping[str, Any],
                *, check_finite: bool = False, attention: str = "standard",
                chunk_size: int = 64, kv_cache: bool = False) -> dict[str, np.ndarray]:
        """Evaluate the model with the numpy reference interpreter.

        attention: "standard" (full score matrices), "chunked" (query chunks of chunk_size)
        or "memory_efficient" (key/value chunks with an online softmax, never an [Sq, Sk]
        array); all three give the same outputs. Attention weights asked for with
        return_weights are always computed in full.

        kv_cache: run one step of the cached decoder instead (the reference of
        `ag.export(..., kv_cache=True)`): feeds `input_ids`, `attention_mask` and
        `past_key_values.{i}.key|value`; returns `logits` and `present.{i}.key|value`.
        """
        from ._checks import Checker
        from ._interpreter import evaluate
        from .ops._attention_modes import MODES, attention_mode

        c = Checker("predict", None, caller_location())
        c.choice(attention, "attention", MODES)
        c.flag(check_finite, "check_finite")
        c.flag(kv_cache, "kv_cache")
        c.pos_int(chunk_size, "chunk_size")
        with attention_mode(attention, chunk_size):
            if kv_cache:
                from ._decode import evaluate_cached

                return evaluate_cached(self, params, feeds, check_finite=check_finite)
            return evaluate(self, params, feeds, check_finite=check_finite)

    def summary(self, *, context: int | None = None, dtype: str | None = None) -> str:
        """A table of layers: name, op, output type, parameter count (like Axon.Display) and,
        for attention layers, key/value-cache bytes per token in the layer's dtype (or
        `dtype`). context: also print the cache total for that many tokens per sequence."""
        from ._checks import Checker
        from ._summary import summary_table
        from .cost import attention_cost

        c = Checker("summary", None, caller_location())
        c.pos_int(context, "context", optional=True)
        if dtype is not None:
            attention_cost(self, dtype=dtype)  # validates dtype with the standard message
        return summary_table(self, context, dtype)

    def config(self) -> dict[str, Any]:
        """A JSON-friendly description of inputs, outputs and layers (recorded in exports)."""
        return {
            "name": self.name,
            "inputs": {k: str(t) for k, t in self.input_types.items()},
            "outputs": {k: str(t) for k, t in self.output_types.items()},
            "layers": [
                {"name": self.node_names[n], "op": n.op,
                 **{k: _jsonable(v) for k, v in sorted(n.attrs.items())}}
                for n in self.nodes
            ],
        }

    def __repr__(self) -> str:
        ins = ", ".join(f"{k}: {t}" for k, t in self.input_types.items())
        outs = ", ".join(f"{k}: {t}" for k, t in self.output_types.items())
        return f"<Model {self.name} ({ins}) -> ({outs}), {len(self.nodes)} layers>"


def _jsonable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return f"array{list(value.shape)}"
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
