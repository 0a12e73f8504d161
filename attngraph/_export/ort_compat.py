"""Run spec-correct exports exactly on older onnxruntime releases that have known op faults.

Exported files stay in their spec-correct form (current onnxruntime runs them fused, at full
speed). `ag.Session` calls `load_adapted` before it creates the InferenceSession; on a runtime
with a known fault the affected nodes are rewritten in memory into an exact equivalent that the
old runtime computes correctly. Lives in `_export/` because only that package imports onnx.

Faults, with the evidence (the suite's window, mask and softcap tests, run on each release):
- "window", onnxruntime < 1.24: com.microsoft.GroupQueryAttention attends
  `local_window_size + 1` keys (1.23.2, the newest release with Python 3.10 wheels, fails every
  window parity test by one key; 1.24.4 passes them). Rewrite: local_window_size - 1. A window
  of 1 cannot be rewritten (0 means no window): the copying form's attention_bias holds it, and
  a shared-buffer node, which has none, is refused with UnsupportedError.
- "gqa_mask", onnxruntime < 1.29: the standard Attention op rejects or misapplies a mask when
  q_num_heads != kv_num_heads (1.23.2 and 1.24.4 fail the GQA-with-mask parity tests, 1.29.0
  passes; 1.25-1.28 untested, so treated as faulty).
- "softcap", onnxruntime < 1.29: the standard Attention op applies softcap after the mask, so
  masked keys get the finite score -softcap (1.23.2 and 1.24.4 fail the softcap-with-mask tests,
  Gemma 2 among them; 1.29.0 passes).
- "dead_rows", onnxruntime < 1.29: the standard Attention op gives NaN, not zeros, in query rows
  whose keys are all masked (1.23.2 fails the blocked sliding-window tests, whose blocks hold
  such rows; 1.29.0 passes).
Rewrite for the three standard-op faults: the node is replaced by its definition in plain ONNX ops
(DESIGN §4: softmax(mask(softcap(q k^T * scale))) v, K and V heads repeated for GQA); shapes
are read at run time, so nodes inside Scan, Loop and If bodies are rewritten too.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .._errors import UnsupportedError

WINDOW_FIXED = (1, 24)
STANDARD_ATTENTION_FIXED = (1, 29)


def version_tuple(version: str) -> tuple[int, int]:
    """'1.23.2' -> (1, 23); a dev or local suffix is ignored."""
    parts = version.split("+")[0].split(".")
    return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)


def faults(ort_version: str) -> set[str]:
    """The known faults of an onnxruntime release (names as in the module docstring)."""
    v = version_tuple(ort_version)
    found = set()
    if v < WINDOW_FIXED:
        found.add("window")
    if v < STANDARD_ATTENTION_FIXED:
        found |= {"gqa_mask", "softcap", "dead_rows"}
    return found


def _attr(node: Any, name: str) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return None


def _set_int(node: Any, name: str, value: int) -> None:
    for a in node.attribute:
        if a.name == name:
            a.i = value
            return
    node.attribute.append(helper.make_attribute(name, value))


def _graphs(graph: Any) -> list[Any]:
    """`graph` and every subgraph under it (Scan, Loop and If bodies)."""
    found = [graph]
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                found += _graphs(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    found += _graphs(g)
    return found


def _fix_window(graph: Any) -> bool:
    changed = False
    for node in (n for g in _graphs(graph) for n in g.node):
        if node.op_type == "GroupQueryAttention" and node.domain == "com.microsoft":
            window = _attr(node, "local_window_size")
            if window is not None and window > 1:
                _set_int(node, "local_window_size", window - 1)
                changed = True
            elif window == 1 and not (len(node.input) > 10 and node.input[10]):
                # 0 would mean no window; with an attention_bias (the copying form) the bias
                # holds the window, but the shared-buffer form has none: refuse, never miscompute
                raise UnsupportedError(
                    f"Session: onnxruntime < 1.24 attends 2 keys in GroupQueryAttention "
                    f"'{node.name}', a window of 1 in a shared past/present buffer; export with "
                    f"share_buffer=False or use onnxruntime >= 1.24 (Python 3.11+)")
    return changed


def _needs_rewrite(node: Any, found: set[str]) -> bool:
    """Whether a standard Attention node meets one of the `found` faults."""
    if node.op_type != "Attention" or node.domain not in ("", "ai.onnx"):
        return False
    if any(node.input[6:]) or any(node.output[3:]):
        return False  # the scores output: not produced by the exports this serves
    if _attr(node, "is_causal") and any(node.input[4:]):
        return False  # causal with a cache: the exports never write it
    masked = len(node.input) > 3 and bool(node.input[3])
    hq, hkv = _attr(node, "q_num_heads"), _attr(node, "kv_num_heads")
    grouped = hq is None or hkv is None or hq != hkv  # 4-D inputs: heads known only at run time
    softcap = bool(_attr(node, "softcap"))
    return (("gqa_mask" in found and masked and grouped)
            or ("dead_rows" in found and masked)
            or ("softcap" in found and softcap and (masked or bool(_attr(node, "is_causal")))))


class _Nodes:
    """Plain ONNX nodes (and their constants) that replace one Attention node."""

    def __init__(self, prefix: str, like: str) -> None:
        self.prefix, self.like = prefix, like
        self.nodes: list[Any] = []
        self.consts: list[Any] = []
        self._count = itertools.count()

    def op(self, op_type: str, inputs: list[str], out: str | None = None, **attrs: Any) -> str:
        name = out or f"{self.prefix}/{op_type}_{next(self._count)}"
        self.nodes.append(helper.make_node(op_type, inputs, [name], **attrs))
        return name

    def ints(self, *values: int) -> str:
        name = f"{self.prefix}/c{next(self._count)}"
        self.consts.append(numpy_helper.from_array(np.array(values, np.int64), name))
        return name

    def scalar(self, value: float) -> str:
        """A float constant in the dtype of the attention's query."""
        name = f"{self.prefix}/c{next(self._count)}"
        self.consts.append(numpy_helper.from_array(np.array(value, np.float32), name))
        return self.op("CastLike", [name, self.like])

    def dim(self, shape: str, axis: int) -> str:
        return self.op("Slice", [shape, self.ints(axis), self.ints(axis + 1)])


def _decompose(node: Any, prefix: str, mask_is_bool: bool) -> _Nodes:
    """DESIGN §4 attention in plain ops; same inputs, same output name as `node`."""
    q, k, v = node.input[0], node.input[1], node.input[2]
    mask = node.input[3] if len(node.input) > 3 else ""
    hq, hkv = _attr(node, "q_num_heads"), _attr(node, "kv_num_heads")
    b = _Nodes(prefix, q)
    three_d = hq is not None and hkv is not None
    if three_d:  # (B, S, H*D) -> (B, H, S, D)
        q, k, v = (b.op("Transpose", [b.op("Reshape", [x, b.ints(0, 0, h, -1)])], perm=[0, 2, 1, 3])
                   for x, h in ((q, hq), (k, hkv), (v, hkv)))
    past = [node.input[i] if len(node.input) > i else "" for i in (4, 5)]
    present = [node.output[i] if len(node.output) > i else "" for i in (1, 2)]
    kv = [k, v]
    for j in (0, 1):  # the cache: past keys and values, then the new ones, (B, Hkv, T, D)
        if past[j]:
            kv[j] = b.op("Concat", [past[j], kv[j]], axis=2)
        if present[j]:
            b.op("Identity", [kv[j]], out=present[j])
    k, v = kv
    q_shape, k_shape = b.op("Shape", [q]), b.op("Shape", [k])
    group = b.op("Div", [b.dim(q_shape, 1), b.dim(k_shape, 1)])
    repeated = []
    for x in (k, v):  # (B, Hkv, S, D) -> (B, Hkv, group, S, D) -> (B, Hq, S, D)
        shape = b.op("Shape", [x])
        wide = b.op("Concat", [b.dim(shape, 0), b.dim(shape, 1), group, b.dim(shape, 2),
                               b.dim(shape, 3)], axis=0)
        x = b.op("Expand", [b.op("Unsqueeze", [x, b.ints(2)]), wide])
        repeated.append(b.op("Reshape", [x, b.op("Concat", [b.dim(shape, 0), b.dim(q_shape, 1),
                                                             b.dim(shape, 2), b.dim(shape, 3)],
                                                   axis=0)]))
    k, v = repeated
    scale = _attr(node, "scale")
    if scale is None:  # 1 / sqrt(head size)
        size = b.op("CastLike", [b.dim(q_shape, 3), q])
        scale_t = b.op("Reciprocal", [b.op("Sqrt", [size])])
    else:
        scale_t = b.scalar(scale)
    scores = b.op("Mul", [b.op("MatMul", [q, b.op("Transpose", [k], perm=[0, 1, 3, 2])]),
                          scale_t])
    softcap = _attr(node, "softcap")
    if softcap:
        cap = b.scalar(softcap)
        scores = b.op("Mul", [b.op("Tanh", [b.op("Div", [scores, cap])]), cap])
    minus_inf = b.scalar(-np.inf)
    if mask and mask_is_bool:
        scores = b.op("Where", [mask, scores, minus_inf])
    elif mask:
        scores = b.op("Add", [scores, mask])
    if _attr(node, "is_causal"):  # top-left aligned, as the standard op defines it
        zero, one = b.op("Squeeze", [b.ints(0)]), b.op("Squeeze", [b.ints(1)])
        rows = b.op("Range", [zero, b.op("Squeeze", [b.dim(q_shape, 2)]), one])
        cols = b.op("Range", [zero, b.op("Squeeze", [b.dim(k_shape, 2)]), one])
        allow = b.op("LessOrEqual", [b.op("Unsqueeze", [cols, b.ints(0)]),
                                     b.op("Unsqueeze", [rows, b.ints(1)])])
        scores = b.op("Where", [allow, scores, minus_inf])
    probs = b.op("Softmax", [scores], axis=-1)
    if mask or _attr(node, "is_causal"):  # fully masked rows: zeros, not NaN
        alive = b.op("Greater", [b.op("ReduceMax", [scores, b.ints(-1)], keepdims=1), minus_inf])
        probs = b.op("Where", [alive, probs, b.scalar(0.0)])
    out = node.output[0]
    if three_d:  # (B, Hq, S, Dv) -> (B, S, Hq*Dv)
        joined = b.op("Transpose", [b.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
        b.op("Reshape", [joined, b.ints(0, 0, -1)], out=out)
    else:
        b.op("MatMul", [probs, v], out=out)
    return b


def _elem_types(model: Any) -> dict[str, int]:
    """Element type of every tensor whose type onnx's inference knows, subgraphs included."""
    types: dict[str, int] = {}
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001 - a model onnx cannot infer: onnxruntime will judge it
        return types
    for g in _graphs(inferred.graph):
        for info in (*g.input, *g.output, *g.value_info):
            if info.type.tensor_type.elem_type:
                types[info.name] = info.type.tensor_type.elem_type
        for init in g.initializer:
            types[init.name] = init.data_type
    return types


def _fix_standard_attention(model: Any, found: set[str]) -> bool:
    targets = [(g, n) for g in _graphs(model.graph) for n in g.node if _needs_rewrite(n, found)]
    if not targets:
        return False
    types = _elem_types(model)
    changed = False
    for i, (graph, node) in enumerate(targets):
        mask = node.input[3] if len(node.input) > 3 else ""
        if mask and mask not in types:
            continue  # the mask's type is unknown here: the node is left as it is
        parts = _decompose(node, f"ort_compat/{i}", types.get(mask) == onnx.TensorProto.BOOL)
        graph.initializer.extend(parts.consts)
        pos = list(graph.node).index(node)
        graph.node.remove(node)
        for k, extra in enumerate(parts.nodes):
            graph.node.insert(pos + k, extra)
        changed = True
    return changed


def adapt(model: Any, found: set[str]) -> bool:
    """Rewrite `model` (an onnx.ModelProto, in place) for the runtime faults in `found`.

    Returns whether anything changed. Graph inputs and outputs and every node output that
    others read keep their names.
    """
    changed = False
    if "window" in found:
        changed |= _fix_window(model.graph)
    if found & {"gqa_mask", "softcap", "dead_rows"}:
        changed |= _fix_standard_attention(model, found)
    return changed


def load_adapted(data: bytes | str, found: set[str]) -> bytes | None:
    """The adapted model's bytes, or None when `data` needs no change.

    A path is loaded without its external data (the weights stay on disk; the caller points
    onnxruntime at the file's folder), so large models cost no extra memory here.
    """
    if not found:
        return None
    try:
        if isinstance(data, str):
            model = onnx.load(data, load_external_data=False)
        else:
            model = onnx.load_from_string(data)
    except Exception:  # noqa: BLE001 - not an ONNX model: onnxruntime reports it as it would
        return None
    if not adapt(model, found):
        return None
    return model.SerializeToString()
