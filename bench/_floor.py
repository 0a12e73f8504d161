"""Floors: graphs made of only the unavoidable work of one step of an exported model, run with
every input and output bound once. A floor is about the least that step can cost on this
machine, so it tells how far a goal is from what the hardware (and onnxruntime's kernels) allow.

- `products_only`: the model's weight products, each fed one row (a streaming frame, or one
  decoded token). Every weight is read once per run, as in a step.
- `attention_only`: the attention kernels of a shared-buffer cached decoder, each reading a
  cache of `context` positions. "gqa" runs the file's own GroupQueryAttention nodes (same
  attributes); "grouped" computes the same attention as a plain product per key/value head
  (each query head group as rows of one MatMul, so each cache is read once), to show what
  onnxruntime's kernel costs on top of reading the cache.
"""

from __future__ import annotations

from typing import Any

import numpy as np

Pieces = tuple[list[Any], list[Any], list[Any], list[Any]]  # nodes, inputs, outputs, tensors


def products_only(proto: Any) -> Pieces:
    """The model's weight products (MatMul with a 2-D weight; LSTM / GRU input and recurrent
    weights as the products they make for one frame), each fed one row of its own. No cache,
    shape, position or mask node runs."""
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    tied = {node.output[0]: node.input[0] for node in proto.graph.node  # a tied output head
            if node.op_type == "Transpose" and node.input[0] in inits}
    weights: list[np.ndarray] = []
    for node in proto.graph.node:
        if node.op_type == "MatMul" and node.input[1] in tied:
            weights.append(numpy_helper.to_array(inits[tied[node.input[1]]]).T.copy())
        elif node.op_type == "MatMul" and node.input[1] in inits \
                and len(inits[node.input[1]].dims) == 2:
            weights.append(numpy_helper.to_array(inits[node.input[1]]))
        elif node.op_type in ("LSTM", "GRU"):
            for name in node.input[1:3]:  # W [dirs, gates*H, in], R [dirs, gates*H, H]
                weights += [w.T.copy() for w in numpy_helper.to_array(inits[name])]
    pieces: Pieces = ([], [], [], [])
    nodes, inputs, outputs, tensors = pieces
    for i, w in enumerate(weights):
        tensors.append(numpy_helper.from_array(w, f"w{i}"))
        dtype = helper.np_dtype_to_tensor_dtype(w.dtype)
        inputs.append(helper.make_tensor_value_info(f"x{i}", dtype, [1, w.shape[0]]))
        outputs.append(helper.make_tensor_value_info(f"y{i}", dtype, [1, w.shape[1]]))
        nodes.append(helper.make_node("MatMul", [f"x{i}", f"w{i}"], [f"y{i}"]))
    return pieces


def attention_only(proto: Any, context: int, kind: str) -> Pieces:
    """The attention of one decoded token over `context` cached positions, for every
    GroupQueryAttention node of a shared-buffer cached decoder (kind "gqa" or "grouped")."""
    from onnx import TensorProto, helper

    layers = [n for n in proto.graph.node if n.op_type == "GroupQueryAttention"]
    if not layers or any(n.input[1] == "" for n in layers):
        raise ValueError("attention_only needs GroupQueryAttention nodes with separate q/k/v")
    length = context + 1  # the buffer's room: the cached positions and the new token
    f32 = TensorProto.FLOAT
    pieces: Pieces = ([], [], [], [])
    nodes, inputs, outputs, _ = pieces
    if kind == "gqa":
        inputs += [helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [1]),
                   helper.make_tensor_value_info("total", TensorProto.INT32, [])]
    else:
        inputs.append(helper.make_tensor_value_info("mask", f32, [1, 1, 1, length]))
    for i, node in enumerate(layers):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        heads, kv_heads = attrs["num_heads"], attrs["kv_num_heads"]
        head_dim = _head_dim(proto, node.input[3])
        scale = attrs.get("scale") or head_dim ** -0.5
        k, v = f"k{i}", f"v{i}"
        inputs += [helper.make_tensor_value_info(name, f32, [1, kv_heads, length, head_dim])
                   for name in (k, v)]
        if kind == "gqa":
            inputs += [helper.make_tensor_value_info(f"q{i}", f32, [1, 1, heads * head_dim]),
                       *(helper.make_tensor_value_info(f"{x}{i}", f32, [1, 1, kv_heads * head_dim])
                         for x in ("new_k", "new_v"))]
            outputs += [helper.make_tensor_value_info(name, f32, shape) for name, shape in
                        ((f"o{i}", [1, 1, heads * head_dim]),
                         (f"{k}_out", [1, kv_heads, length, head_dim]),
                         (f"{v}_out", [1, kv_heads, length, head_dim]))]
            nodes.append(helper.make_node(
                "GroupQueryAttention",
                [f"q{i}", f"new_k{i}", f"new_v{i}", k, v, "seqlens_k", "total"],
                [f"o{i}", f"{k}_out", f"{v}_out"], domain="com.microsoft", **attrs))
        elif kind == "grouped":
            group = heads // kv_heads
            inputs.append(helper.make_tensor_value_info(f"q{i}", f32,
                                                        [1, kv_heads, group, head_dim]))
            outputs.append(helper.make_tensor_value_info(f"o{i}", f32,
                                                         [1, kv_heads, group, head_dim]))
            nodes += [
                helper.make_node("FusedMatMul", [f"q{i}", k], [f"s{i}"], domain="com.microsoft",
                                 transB=1, alpha=float(scale)),
                helper.make_node("Add", [f"s{i}", "mask"], [f"m{i}"]),
                helper.make_node("Softmax", [f"m{i}"], [f"p{i}"], axis=-1),
                helper.make_node("MatMul", [f"p{i}", v], [f"o{i}"]),
            ]
        else:
            raise ValueError(f"attention_only: kind must be 'gqa' or 'grouped', given {kind!r}")
    return pieces


def _head_dim(proto: Any, past: str) -> int:
    (value,) = [x for x in proto.graph.input if x.name == past]
    return int(value.type.tensor_type.shape.dim[3].dim_value)


def floor_model(*parts: Pieces) -> Any:
    from onnx import helper

    nodes, inputs, outputs, tensors = ([x for part in parts for x in part[i]] for i in range(4))
    graph = helper.make_graph(nodes, "floor", inputs, outputs, tensors)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid("com.microsoft", 1)])


class Floor:
    """A floor model run with every input and output bound once (no Python feed check either),
    like a steady step. Attention inputs attend `context` cached positions; outputs named
    `<input>_out` are bound to their input's buffer (the shared cache, written in place)."""

    def __init__(self, model: Any, threads: int | None, spinning: bool,
                 context: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if not spinning:  # as the measured session chose
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.weight_bytes = sum(len(t.raw_data) for t in model.graph.initializer)
        self.session = ort.InferenceSession(model.SerializeToString(), options,
                                            providers=["CPUExecutionProvider"])
        self.binding = self.session.io_binding()
        rng = np.random.default_rng(1)
        values: dict[str, Any] = {}
        for i in self.session.get_inputs():
            if i.name == "seqlens_k":
                x = np.array([context], np.int32)
            elif i.name == "total":
                x = np.array(context + 1, np.int32)
            elif i.name == "mask":  # every position of the buffer holds a key
                x = np.zeros(i.shape, np.float32)
            else:
                x = rng.standard_normal(i.shape).astype(np.float32)
            values[i.name] = ort.OrtValue.ortvalue_from_numpy(x)
            self.binding.bind_ortvalue_input(i.name, values[i.name])
        for o in self.session.get_outputs():
            if o.name.endswith("_out"):
                value = values[o.name[: -len("_out")]]
            else:
                value = ort.OrtValue.ortvalue_from_numpy(np.zeros(o.shape, np.float32))
            values[o.name] = value
            self.binding.bind_ortvalue_output(o.name, value)
        self.values = values  # kept alive while bound

    def run(self) -> None:
        self.session.run_with_iobinding(self.binding)
