"""onnxruntime's failures told in attngraph's words: the layer, what was expected, what was
given. Node names in exported models start with their layer's name (`wte/Gather`), and the
model's layers are recorded in its metadata, so a failing node leads back to the user's layer."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

_NODE = re.compile(r"running (\w+) node\. Name:'([^']*)' Status Message: (.*)", re.DOTALL)
# "/onnxruntime_src/.../element_wise_ops.h:583 void onnxruntime::X::Y(...) cond was false. "
_SOURCE = re.compile(r"\S*onnxruntime_src\S*:\d+ .*? was false\. ", re.DOTALL)
_BOUNDS = re.compile(r"idx=(-?\d+) must be within the inclusive range \[(-?\d+),(-?\d+)\]")
_BROADCAST = re.compile(r"dimension other than 1\. (\d+) by (\d+)")


def layers_of(metadata: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Layer name -> its recorded config ({"op": ..., attrs}), from attngraph's metadata."""
    try:
        config = json.loads(metadata.get("attngraph.config", "{}"))
        return {layer["name"]: layer for layer in config.get("layers", []) if "name" in layer}
    except (ValueError, TypeError, KeyError):
        return {}


def explain(where: str, exc: BaseException, layers: Mapping[str, Mapping[str, Any]]) -> str:
    """One clear message for an onnxruntime run failure (`where` is e.g. "Session.run")."""
    text = str(exc)
    found = _NODE.search(text)
    if found is None:
        return f"{where}: onnxruntime failed: {_clean(text)}"
    op_type, node, status = found.group(1), found.group(2), _clean(found.group(3))
    layer_name = _layer_name(node, layers)
    if layer_name is None:
        return f"{where}: onnxruntime failed at node '{node}' ({op_type}): {status}"
    layer = layers[layer_name]
    op = layer.get("op", "layer")
    who = f"{where}: {op} '{layer_name}'"
    bounds = _BOUNDS.search(status)
    if op == "embedding" and bounds:
        vocab = layer.get("vocab_size", int(bounds.group(3)) + 1)
        return f"{who}: ids must lie in [0, {vocab}), given {bounds.group(1)}"
    wide = _BROADCAST.search(status)
    if op == "positional_encoding" and "max_len" in layer and wide:
        seq = max(int(wide.group(1)), int(wide.group(2)))
        return (f"{who}: sequence length {seq} exceeds max_len={layer['max_len']} (the "
                f"positions it was built with)")
    if op in ("multi_head_attention", "attention") and re.search(r"broadcast|shape", status,
                                                                   re.IGNORECASE):
        return (f"{who}: the feeds do not fit the layer's masks (key_padding_mask must be "
                f"[batch, kv_seq], mask must broadcast to [batch, heads, q_seq, kv_seq]); "
                f"onnxruntime says at {op_type} node '{node}': {status}")
    return f"{who}: onnxruntime failed at {op_type} node '{node}': {status}"


def _layer_name(node: str, layers: Mapping[str, Any]) -> str | None:
    """The longest layer name that `node` starts with, followed by '/'."""
    parts = node.split("/")
    for cut in range(len(parts) - 1, 0, -1):
        name = "/".join(parts[:cut])
        if name in layers:
            return name
    return None


def _clean(text: str) -> str:
    """Drop onnxruntime's source paths and the `[ONNXRuntimeError] : 2 : ...` prefix."""
    text = _SOURCE.sub("", text)
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text.strip())
    return " ".join(text.split())
