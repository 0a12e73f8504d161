"""Dense projection, elementwise arithmetic, activations, softmax, dropout, concatenation."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._registry import register
from .._types import add_dims
from ._shapes import Fail, need_float, same_type, unary

# -- dense -----------------------------------------------------------------------------------


def _dense_infer(types: list[Any], attrs: Any, fail: Fail) -> list[Any]:
    (x,) = types
    need_float(x, "input", fail)
    if x.rank < 1 or x.shape[-1] != attrs["in_features"]:
        fail(f"expected input [..., {attrs['in_features']}], given {x}")
    return [x.with_shape((*x.shape[:-1], attrs["units"]))]


def _dense_ref(attrs: Any, p: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    y = x @ p["kernel"]  # (..., in) @ (in, out) -> (..., out)
    return y + p["bias"] if "bias" in p else y


def _dense_lower(b: Any, node: Any, ins: list[str]) -> list[str]:
    y = b.op1("MatMul", [ins[0], b.param("kernel")])
    if node.attrs["use_bias"]:
        y = b.op1("Add", [y, b.param("bias")])
    return [y]


register("dense", infer=_dense_infer, reference=_dense_ref, decomposed=_dense_lower,
         per_position=True)

# -- elementwise -----------------------------------------------------------------------------


def _nary(np_fn: Any, onnx_op: str) -> tuple[Any, Any]:
    def ref(attrs: Any, p: Any, *xs: np.ndarray) -> np.ndarray:
        out = xs[0]
        for x in xs[1:]:
            out = np_fn(out, x)
        return out

    def lower(b: Any, node: Any, ins: list[str]) -> list[str]:
        out = ins[0]
        for x in ins[1:]:
            out = b.op1(onnx_op, [out, x])
        return [out]

    return ref, lower


for _name, _fn, _op in (("add", np.add, "Add"), ("multiply", np.multiply, "Mul")):
    _ref, _low = _nary(_fn, _op)
    register(_name, infer=lambda t, a, f: same_type(t, f), reference=_ref, decomposed=_low,
             per_position=True)


def _concat_infer(types: list[Any], attrs: Any, fail: Fail) -> list[Any]:
    first = types[0]
    axis = attrs["axis"] % first.rank
    size = first.shape[axis]
    for t in types[1:]:
        if t.dtype != first.dtype or t.rank != first.rank:
            fail(f"inputs must share dtype and rank, given {first} and {t}")
        for i, (a, c) in enumerate(zip(first.shape, t.shape)):
            if i != axis and isinstance(a, int) and isinstance(c, int) and a != c:
                fail(f"inputs differ outside axis {attrs['axis']}: {first} and {t}")
        size = add_dims(size, t.shape[axis])
    shape = list(first.shape)
    shape[axis] = size
    return [first.with_shape(tuple(shape))]


register(
    "concatenate",
    infer=_concat_infer,
    reference=lambda a, p, *xs: np.concatenate(xs, axis=a["axis"]),
    decomposed=lambda b, node, ins: [b.op1("Concat", ins, axis=node.attrs["axis"])],
    per_position=lambda a: off_sequence_axis(a["axis"]),
)

def off_sequence_axis(axis: int) -> bool:
    """Whether an op along `axis` of [batch, seq, ...] leaves positions apart (KV-cache
    decoding runs such ops on the new tokens alone)."""
    return axis == -1 or axis >= 2


# -- activations -----------------------------------------------------------------------------


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # stable for large |x|


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[np.float64])(x).astype(x.dtype)


def _gelu_ref(attrs: Any, p: Any, x: np.ndarray) -> np.ndarray:
    if attrs["approximate"] == "tanh":
        # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1.0 + _erf(x / np.sqrt(2.0)))  # 0.5 x (1 + erf(x / sqrt 2))


def _gelu_lower(b: Any, node: Any, ins: list[str]) -> list[str]:
    x = ins[0]
    if b.opset >= 20:
        return [b.op1("Gelu", [x], approximate=node.attrs["approximate"])]
    half = b.op1("Mul", [x, b.const(0.5)])
    if node.attrs["approximate"] == "tanh":
        cube = b.op1("Mul", [b.op1("Mul", [x, x]), x])
        inner = b.op1("Add", [x, b.op1("Mul", [cube, b.const(0.044715)])])
        t = b.op1("Tanh", [b.op1("Mul", [inner, b.const(np.sqrt(2.0 / np.pi))])])
    else:
        t = b.op1("Erf", [b.op1("Div", [x, b.const(np.sqrt(2.0))])])
    return [b.op1("Mul", [half, b.op1("Add", [t, b.const(1.0)])])]


register("gelu", infer=unary, reference=_gelu_ref, decomposed=_gelu_lower, per_position=True)
register(
    "relu", infer=unary, reference=lambda a, p, x: np.maximum(x, 0),
    decomposed=lambda b, n, ins: [b.op1("Relu", ins)],
    per_position=True,
)
register(
    "sigmoid", infer=unary, reference=lambda a, p, x: _sigmoid(x),
    decomposed=lambda b, n, ins: [b.op1("Sigmoid", ins)],
    per_position=True,
)
register(
    "tanh", infer=unary, reference=lambda a, p, x: np.tanh(x),
    decomposed=lambda b, n, ins: [b.op1("Tanh", ins)],
    per_position=True,
)
register(
    "silu", infer=unary, reference=lambda a, p, x: x * _sigmoid(x),
    decomposed=lambda b, n, ins: [b.op1("Mul", [ins[0], b.op1("Sigmoid", ins)])],
    per_position=True,
)


def softmax_ref(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """exp(x - max) / sum(exp(x - max)) along `axis`."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


register(
    "softmax", infer=unary, reference=lambda a, p, x: softmax_ref(x, a["axis"]),
    decomposed=lambda b, n, ins: [b.op1("Softmax", ins, axis=n.attrs["axis"])],
    per_position=lambda a: off_sequence_axis(a["axis"]),
)
register(
    "scale", infer=unary, reference=lambda a, p, x: x * np.float32(a["factor"]),
    decomposed=lambda b, n, ins: [b.op1("Mul", [ins[0], b.const(np.array(n.attrs["factor"]))])],
    per_position=True,
)
register(
    "dropout", infer=unary, reference=lambda a, p, x: x,
    decomposed=lambda b, n, ins: [b.op1("Identity", ins)],
    per_position=True,
)
