"""Run spec-correct exports exactly on older onnxruntime releases that have known op faults.

Exported files stay in their spec-correct form. `ag.Session` calls `adapt` before it creates the
InferenceSession; on a runtime with a known fault the affected nodes are rewritten in memory into
an exact equivalent that the old runtime computes correctly. Lives in `_export/` because only
that package imports onnx.

Faults, with the evidence (the suite's window and mask tests on each release):
- onnxruntime < 1.24: com.microsoft.GroupQueryAttention attends `local_window_size + 1` keys
  (1.23.2, the newest release with Python 3.10 wheels, fails every window parity test by one key;
  1.24.4 passes them). Rewrite: local_window_size - 1.
- onnxruntime < 1.29: the standard Attention op rejects or misapplies a mask when
  q_num_heads != kv_num_heads (1.23.2 and 1.24.4 fail the GQA-with-mask parity tests, 1.29.0
  passes; 1.25-1.28 untested, so treated as faulty). Rewrite: K and V heads repeated (Gather on
  the head axis) so the op sees Hq == Hkv, which is the same attention by definition of GQA.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

WINDOW_FIXED = (1, 24)
GQA_MASK_FIXED = (1, 29)


def version_tuple(version: str) -> tuple[int, int]:
    """'1.23.2' -> (1, 23); a dev or local suffix is ignored."""
    parts = version.split("+")[0].split(".")
    return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)


def faults(ort_version: str) -> set[str]:
    """The known faults of an onnxruntime release: a subset of {"window", "gqa_mask"}."""
    v = version_tuple(ort_version)
    found = set()
    if v < WINDOW_FIXED:
        found.add("window")
    if v < GQA_MASK_FIXED:
        found.add("gqa_mask")
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
    return changed


def _heads_4d(model: Any, names: list[str]) -> list[int | None]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    g = inferred.graph
    infos = {i.name: i for i in [*g.value_info, *g.input, *g.output]}
    out: list[int | None] = []
    for name in names:
        info = infos.get(name)
        dims = info.type.tensor_type.shape.dim if info is not None else []
        out.append(dims[1].dim_value if len(dims) == 4 and dims[1].dim_value > 0 else None)
    return out


def _fix_gqa_mask(model: Any) -> bool:
    targets = [(g, n) for g in _graphs(model.graph) for n in g.node
               if n.op_type == "Attention" and n.domain in ("", "ai.onnx")
               and len(n.input) > 3 and n.input[3] and not any(n.input[4:])]
    changed = False
    for i, (graph, node) in enumerate(targets):
        hq, hkv = _attr(node, "q_num_heads"), _attr(node, "kv_num_heads")
        three_d = hq is not None and hkv is not None
        if not three_d and graph is not model.graph:
            continue  # shapes inside a subgraph are not inferred here
        if not three_d:
            hq, hkv = _heads_4d(model, [node.input[0], node.input[1]])
        if hq is None or hkv is None or hq == hkv or hq % hkv:
            continue
        index = f"ort_compat/{i}/heads"
        graph.initializer.append(numpy_helper.from_array(
            np.repeat(np.arange(hkv, dtype=np.int64), hq // hkv), index))
        new_nodes = []
        for j in (1, 2):
            src, dst = node.input[j], f"ort_compat/{i}/kv{j}"
            if three_d:
                shape_in = f"ort_compat/{i}/split_shape"
                if j == 1:
                    graph.initializer.append(numpy_helper.from_array(
                        np.array([0, 0, hkv, -1], np.int64), shape_in))
                    graph.initializer.append(numpy_helper.from_array(
                        np.array([0, 0, -1], np.int64), f"ort_compat/{i}/join_shape"))
                new_nodes += [
                    helper.make_node("Reshape", [src, shape_in], [dst + "/split"]),
                    helper.make_node("Gather", [dst + "/split", index], [dst + "/rep"], axis=2),
                    helper.make_node("Reshape", [dst + "/rep", f"ort_compat/{i}/join_shape"],
                                     [dst]),
                ]
            else:
                new_nodes.append(helper.make_node("Gather", [src, index], [dst], axis=1))
            node.input[j] = dst
        if three_d:
            _set_int(node, "kv_num_heads", hq)
        pos = list(graph.node).index(node)
        for k, extra in enumerate(new_nodes):
            graph.node.insert(pos + k, extra)
        changed = True
    return changed


def adapt(model: Any, found: set[str]) -> bool:
    """Rewrite `model` (an onnx.ModelProto, in place) for the runtime faults in `found`.

    Returns whether anything changed. Node outputs and graph outputs keep their names.
    """
    changed = False
    if "window" in found:
        changed |= _fix_window(model.graph)
    if "gqa_mask" in found:
        changed |= _fix_gqa_mask(model)
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
