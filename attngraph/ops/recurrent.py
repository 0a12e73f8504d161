"""LSTM and GRU stacks with PyTorch's semantics and parameter layout, lowered to the standard
ONNX `LSTM` / `GRU` ops on every target.

Parameters of layer l (PyTorch names): weight_ih_l{l} [G*H, in], weight_hh_l{l} [G*H, H],
bias_ih_l{l} [G*H], bias_hh_l{l} [G*H], rows stacked by gate: LSTM i, f, g, o (G = 4);
GRU r, z, n (G = 3). ONNX orders gates i, o, f, c and z, r, h; the exporter reorders rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._registry import register
from ._shapes import Fail, need_float, need_rank

GATES = {"lstm": 4, "gru": 3}
# Row blocks of PyTorch's weights in ONNX's gate order.
ONNX_ORDER = {"lstm": [0, 3, 1, 2], "gru": [1, 0, 2]}


def _infer(types: list[Any], attrs: Any, fail: Fail) -> list[Any]:
    (x,) = types
    need_float(x, "input", fail)
    need_rank(x, (3,), "input [batch, seq, features]", fail)
    if x.shape[2] != attrs["in_features"]:
        fail(f"expected input [batch, seq, {attrs['in_features']}], given {x}")
    if attrs["return_sequences"]:
        return [x.with_shape((x.shape[0], x.shape[1], attrs["hidden"]))]
    return [x.with_shape((x.shape[0], attrs["hidden"]))]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _lstm_step(xw: np.ndarray, h: np.ndarray, c: np.ndarray, w_hh: np.ndarray,
               b_hh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    i, f, g, o = np.split(xw + h @ w_hh.T + b_hh, 4, axis=-1)  # (B, H) each
    c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)  # c' = f c + i g
    return _sigmoid(o) * np.tanh(c), c  # h' = o tanh(c')


def _gru_step(xw: np.ndarray, h: np.ndarray, w_hh: np.ndarray,
              b_hh: np.ndarray) -> np.ndarray:
    xr, xz, xn = np.split(xw, 3, axis=-1)
    hr, hz, hn = np.split(h @ w_hh.T + b_hh, 3, axis=-1)
    r, z = _sigmoid(xr + hr), _sigmoid(xz + hz)
    n = np.tanh(xn + r * hn)  # PyTorch: the reset gate scales (W_hn h + b_hn)
    return (1.0 - z) * n + z * h  # h' = (1 - z) n + z h


def _reference(kind: str) -> Any:
    def ref(attrs: Any, p: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
        if x.shape[1] == 0 and not attrs["return_sequences"]:
            from .._errors import FeedError

            raise FeedError(f"{kind}: return_sequences=False needs at least one time step, "
                            f"given input of shape {list(x.shape)}")
        seq = x
        hidden = attrs["hidden"]
        for layer in range(attrs["num_layers"]):
            w_ih, w_hh = p[f"weight_ih_l{layer}"], p[f"weight_hh_l{layer}"]
            b_ih, b_hh = p[f"bias_ih_l{layer}"], p[f"bias_hh_l{layer}"]
            xw = seq @ w_ih.T + b_ih  # (B, S, G*H): input projections of every step
            h = np.zeros((x.shape[0], hidden), np.float32)
            c = np.zeros_like(h)
            outs = []
            for t in range(x.shape[1]):
                if kind == "lstm":
                    h, c = _lstm_step(xw[:, t], h, c, w_hh, b_hh)
                else:
                    h = _gru_step(xw[:, t], h, w_hh, b_hh)
                outs.append(h)
            seq = np.stack(outs, axis=1) if outs else np.zeros((x.shape[0], 0, hidden),
                                                                 np.float32)
        return seq.astype(np.float32) if attrs["return_sequences"] else seq[:, -1].astype(
            np.float32)

    return ref


def _reorder(arr: np.ndarray, kind: str) -> np.ndarray:
    blocks = np.split(arr, GATES[kind], axis=0)
    return np.concatenate([blocks[i] for i in ONNX_ORDER[kind]], axis=0)


def _lower(kind: str) -> Any:
    def lower(b: Any, node: Any, ins: list[str]) -> list[str]:
        hidden = node.attrs["hidden"]
        seq = b.transpose(ins[0], [1, 0, 2])  # (S, B, F): ONNX recurrences are seq-first
        last = ""
        for layer in range(node.attrs["num_layers"]):
            # Reordered copies of the parameters, in ONNX's gate order.
            w = {n: b.param_array(f"{n}_l{layer}") for n in
                 ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
            weights = b.const(_reorder(w["weight_ih"], kind)[None], tag=f"W_l{layer}")
            recur = b.const(_reorder(w["weight_hh"], kind)[None], tag=f"R_l{layer}")
            bias = b.const(np.concatenate([_reorder(w["bias_ih"], kind),
                                           _reorder(w["bias_hh"], kind)])[None],
                           tag=f"B_l{layer}")
            extra = {"linear_before_reset": 1} if kind == "gru" else {}
            y, last = b.op(kind.upper(), [seq, weights, recur, bias], outputs=2,
                           hidden_size=hidden, **extra)[:2]  # Y (S, 1, B, H), Y_h (1, B, H)
            seq = b.op1("Squeeze", [y, b.ints([1])])  # (S, B, H)
        if node.attrs["return_sequences"]:
            return [b.transpose(seq, [1, 0, 2])]  # (B, S, H)
        return [b.op1("Squeeze", [last, b.ints([0])])]  # (B, H)

    return lower


for _kind in GATES:
    register(_kind, infer=_infer, reference=_reference(_kind), decomposed=_lower(_kind))
