"""Layer normalisation and RMS normalisation over the last axis."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._registry import register
from ._shapes import Fail, need_float


def _norm_infer(types: list[Any], attrs: Any, fail: Fail) -> list[Any]:
    (x,) = types
    need_float(x, "input", fail)
    if x.rank < 1 or x.shape[-1] != attrs["dim"]:
        fail(f"expected input [..., {attrs['dim']}], given {x}")
    return [x]


def _layer_norm_ref(attrs: Any, p: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    # (x - mean) / sqrt(var + eps) * scale + bias, over the last axis
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    y = (x - mean) / np.sqrt(var + attrs["epsilon"]) * p["scale"]
    return y + p["bias"] if "bias" in p else y


def _layer_norm_lower(b: Any, node: Any, ins: list[str]) -> list[str]:
    args = [ins[0], b.param("scale")]
    if node.attrs["use_bias"]:
        args.append(b.param("bias"))
    return [b.op1("LayerNormalization", args, axis=-1, epsilon=node.attrs["epsilon"])]


register("layer_norm", infer=_norm_infer, reference=_layer_norm_ref,
         decomposed=_layer_norm_lower, per_position=True)


def _rms_norm_ref(attrs: Any, p: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    # x / sqrt(mean(x^2) + eps) * scale, over the last axis
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + attrs["epsilon"]) * p["scale"]


def _rms_norm_decomposed(b: Any, node: Any, ins: list[str]) -> list[str]:
    x = ins[0]
    ms = b.reduce("ReduceMean", b.op1("Mul", [x, x]), [-1])
    inv = b.op1("Reciprocal", [b.op1("Sqrt", [b.op1("Add", [ms, b.const(node.attrs["epsilon"])])])])
    return [b.op1("Mul", [b.op1("Mul", [x, inv]), b.param("scale")])]


def _rms_norm_standard(b: Any, node: Any, ins: list[str]) -> list[str]:
    if b.opset < 23:
        return _rms_norm_decomposed(b, node, ins)
    return [b.op1("RMSNormalization", [ins[0], b.param("scale")], axis=-1,
                  epsilon=node.attrs["epsilon"])]


register("rms_norm", infer=_norm_infer, reference=_rms_norm_ref,
         decomposed=_rms_norm_decomposed, onnx=_rms_norm_standard, ort=_rms_norm_standard,
         per_position=True)
