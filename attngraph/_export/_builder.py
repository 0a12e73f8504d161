"""The graph builder lowerings write into. This package is the only one that imports onnx."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import numpy as np
import onnx
from onnx import TensorProto, helper

from .._errors import UnsupportedError, layer_message
from .._graph import Node
from ._weights import ParamReader, Weight

ONNX_DTYPES = {
    "float32": TensorProto.FLOAT,
    "float16": TensorProto.FLOAT16,
    "int64": TensorProto.INT64,
    "int32": TensorProto.INT32,
    "bool": TensorProto.BOOL,
}


def all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of a graph, those of its subgraphs (Loop, If and Scan bodies) included."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else attr.graphs:
                yield from all_nodes(sub)


class Builder:
    """Collects ONNX nodes and initialisers, named after the layer being lowered.

    Initialisers are `Weight`s: a parameter is only named here, and read when the model is
    written (`_weights.py`). Graph input and output names are reserved before lowering
    (`used_names`), so no node output or initialiser takes a name the user gave."""

    def __init__(self, *, target: str, opset: int, dtype: str,
                 params: ParamReader, param_key: Any, window_impl: str = "auto") -> None:
        self.target = target
        self.window_impl = window_impl  # sliding windows: "auto", "blocked" or "direct"
        self.opset = opset
        self.dtype = dtype  # float dtype of the exported model
        self.np_dtype = np.dtype(dtype).newbyteorder("<")
        self.params = params
        self.param_key = param_key  # (node, ParamSpec) -> full parameter name
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, Weight] = {}
        self.domains: set[str] = set()
        self.used_names: set[str] = set()
        self._param_names: dict[str, str] = {}  # full parameter name -> initialiser name
        self._const_cache: dict[tuple[str, tuple[int, ...], bytes], str] = {}
        self.layer = ""
        self.node: Node | None = None

    # -- context ---------------------------------------------------------------------------
    def begin(self, layer: str, node: Node) -> None:
        self.layer = layer
        self.node = node

    def unsupported(self, feature: str, hint: str = "") -> NoReturn:
        """Raise the standard error for a feature this target cannot express."""
        assert self.node is not None
        msg = f"target {self.target!r} cannot express {feature}"
        if hint:
            msg += f"; {hint}"
        raise UnsupportedError(layer_message(self.node.op, self.layer, msg, self.node.location))

    def _unique(self, base: str) -> str:
        name, k = base, 1
        while name in self.used_names:
            name = f"{base}_{k}"
            k += 1
        self.used_names.add(name)
        return name

    # -- nodes -----------------------------------------------------------------------------
    def op(self, op_type: str, inputs: list[str], *, outputs: int = 1, domain: str = "",
           tag: str | None = None, **attrs: Any) -> list[str]:
        """Add a node; returns its output names. Names read `<layer>/<tag or OpType>`."""
        inputs = list(inputs)
        while inputs and inputs[-1] == "":  # trailing optional inputs are simply left out
            inputs.pop()
        name = self._unique(f"{self.layer}/{tag or op_type}")
        outs = [name if outputs == 1 else f"{name}:{i}" for i in range(outputs)]
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(
            helper.make_node(op_type, inputs, outs, name=name, domain=domain or None, **attrs)
        )
        if domain:
            self.domains.add(domain)
        return outs

    def op1(self, op_type: str, inputs: list[str], **kwargs: Any) -> str:
        return self.op(op_type, inputs, **kwargs)[0]

    def scan(self, count: str, body: Callable[[str], list[str]], dtypes: list[str],
             tag: str = "Scan") -> list[str]:
        """A `Scan` over i = 0 .. count - 1 (count: an int64 scalar) without carried state.
        `body(i)` adds the nodes of one iteration (i: the iteration number, an int64 scalar;
        tensors of the enclosing graph are read by name) and returns its outputs, of
        `dtypes`; the Scan returns them stacked on a new first axis. (onnxruntime writes each
        iteration's outputs straight into the stacked result; a `Loop` keeps them all and
        copies them at the end: twice the memory.)"""
        name = self._unique(f"{self.layer}/{tag}")
        it = self._unique(f"{name}/i")
        steps = self.op1("Range", [self.const(np.array(0)), count, self.const(np.array(1))],
                         tag=f"{tag}/steps")
        outer, self.nodes = self.nodes, []
        try:
            outs = body(it)
        finally:
            inner, self.nodes = self.nodes, outer
        graph = helper.make_graph(
            inner, name, [helper.make_tensor_value_info(it, TensorProto.INT64, [])],
            [helper.make_tensor_value_info(o, ONNX_DTYPES[d], None) for o, d in zip(outs, dtypes)])
        results = [f"{name}:{i}" for i in range(len(outs))]
        self.nodes.append(helper.make_node("Scan", [steps], results, name=name, body=graph,
                                           num_scan_inputs=1))
        return results

    def param(self, local: str) -> str:
        """The initialiser holding this layer's parameter `local`, in the model's float dtype
        (named after the parameter unless a graph input or output took that name)."""
        assert self.node is not None
        spec = next(p for p in self.node.params if p.name == local)
        full = self.param_key(self.node, spec)
        if full not in self._param_names:
            name = self._unique(full)
            self._param_names[full] = name
            self.initializers[name] = Weight(name, self.np_dtype, tuple(spec.shape),
                                             self.params.source(full))
        return self._param_names[full]

    def param_array(self, local: str) -> np.ndarray:
        """The numpy value of this layer's parameter `local`, without writing an initialiser
        (for lowerings that store a transformed copy instead)."""
        assert self.node is not None
        spec = next(p for p in self.node.params if p.name == local)
        return self.params[self.param_key(self.node, spec)]

    def const(self, value: Any, dtype: str | None = None, tag: str = "const") -> str:
        """A constant initialiser (deduplicated); floats default to the model's dtype."""
        arr = np.asarray(value)
        if dtype is None:
            dtype = self.dtype if arr.dtype.kind == "f" else ("bool" if arr.dtype.kind == "b"
                                                               else "int64")
        arr = np.array(arr, dtype=dtype, order="C")  # ascontiguousarray would make 0-d 1-d
        key = (dtype, arr.shape, arr.tobytes())
        if key not in self._const_cache:
            name = self._unique(f"{self.layer}.{tag}")
            self.initializers[name] = Weight(name, arr.dtype.newbyteorder("<"), arr.shape, arr)
            self._const_cache[key] = name
        return self._const_cache[key]

    def ints(self, values: list[int] | tuple[int, ...], tag: str = "shape") -> str:
        return self.const(np.asarray(values, np.int64), "int64", tag=tag)

    # -- small helpers for opset-dependent forms -------------------------------------------
    def require_opset(self, opset: int, feature: str) -> None:
        if self.opset < opset:
            self.unsupported(f"{feature} below opset {opset} (model opset {self.opset})",
                             f"export with opset={opset} or higher")

    def reduce(self, op_type: str, x: str, axes: list[int], keepdims: bool = True) -> str:
        if self.opset >= 18 or op_type == "ReduceSum":
            return self.op1(op_type, [x, self.ints(axes, "axes")], keepdims=int(keepdims))
        return self.op1(op_type, [x], axes=list(axes), keepdims=int(keepdims))

    def unsqueeze(self, x: str, axes: list[int]) -> str:
        return self.op1("Unsqueeze", [x, self.ints(axes, "axes")])

    def reshape(self, x: str, shape: list[int] | str) -> str:
        shape_name = shape if isinstance(shape, str) else self.ints(shape)
        return self.op1("Reshape", [x, shape_name])

    def transpose(self, x: str, perm: list[int]) -> str:
        return self.op1("Transpose", [x], perm=list(perm))

    def dim(self, x: str, axis: int) -> str:
        """A 1-element int64 tensor holding x's size along `axis` (read at run time)."""
        end = axis + 1 if axis != -1 else None
        return self.op1("Shape", [x], start=axis, end=end)

    def concat(self, xs: list[str], axis: int) -> str:
        return self.op1("Concat", xs, axis=axis)

    def cast(self, x: str, dtype: str) -> str:
        return self.op1("Cast", [x], to=ONNX_DTYPES[dtype])
