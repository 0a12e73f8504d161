"""LSTM and GRU stacks with PyTorch's semantics and parameter layout, lowered to the standard
ONNX `LSTM` / `GRU` ops on every target.

Parameters of layer l (PyTorch names): weight_ih_l{l} [G*H, in], weight_hh_l{l} [G*H, H],
bias_ih_l{l} [G*H], bias_hh_l{l} [G*H], rows stacked by gate: LSTM i, f, g, o (G = 4);
GRU r, z, n (G = 3). ONNX orders gates i, o, f, c and z, r, h; the exporter reorders rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._registry import StreamForms, register
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


def run_layers(kind: str, attrs: Any, p: dict[str, np.ndarray], x: np.ndarray,
               h0: np.ndarray | None = None,
               c0: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every layer over x (B, S, F) from initial states h0, c0 (L, B, H) (zeros when None):
    (last layer's outputs (B, S, H), final h (L, B, H), final c (L, B, H))."""
    seq, hidden = x, attrs["hidden"]
    zeros = np.zeros((attrs["num_layers"], x.shape[0], hidden), np.float32)
    h0 = zeros if h0 is None else h0
    c0 = zeros if c0 is None else c0
    hs, cs = [], []
    for layer in range(attrs["num_layers"]):
        w_ih, w_hh = p[f"weight_ih_l{layer}"], p[f"weight_hh_l{layer}"]
        b_ih, b_hh = p[f"bias_ih_l{layer}"], p[f"bias_hh_l{layer}"]
        xw = seq @ w_ih.T + b_ih  # (B, S, G*H): input projections of every step
        h, c = h0[layer].astype(np.float32), c0[layer].astype(np.float32)
        outs = []
        for t in range(x.shape[1]):
            if kind == "lstm":
                h, c = _lstm_step(xw[:, t], h, c, w_hh, b_hh)
            else:
                h = _gru_step(xw[:, t], h, w_hh, b_hh)
            outs.append(h)
        seq = np.stack(outs, axis=1) if outs else np.zeros((x.shape[0], 0, hidden), np.float32)
        hs.append(h)
        cs.append(c)
    return seq.astype(np.float32), np.stack(hs).astype(np.float32), np.stack(cs).astype(
        np.float32)


def _reference(kind: str) -> Any:
    def ref(attrs: Any, p: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
        if x.shape[1] == 0 and not attrs["return_sequences"]:
            from .._errors import FeedError

            raise FeedError(f"{kind}: return_sequences=False needs at least one time step, "
                            f"given input of shape {list(x.shape)}")
        seq = run_layers(kind, attrs, p, x)[0]
        return seq if attrs["return_sequences"] else seq[:, -1]

    return ref


def _reorder(arr: np.ndarray, kind: str) -> np.ndarray:
    blocks = np.split(arr, GATES[kind], axis=0)
    return np.concatenate([blocks[i] for i in ONNX_ORDER[kind]], axis=0)


def _lower(kind: str) -> Any:
    def lower(b: Any, node: Any, ins: list[str]) -> list[str]:
        return _lower_layers(b, node, kind, ins[0])[0]

    return lower


def _lower_layers(b: Any, node: Any, kind: str, x: str,
                  state: tuple[str, str] | None = None) -> tuple[list[str], list[str], list[str]]:
    """The stack on x (B, S, F), from `state` = (h, c) (L, B, H) names or zeros: (outputs,
    final h per layer, final c per layer), each final state (1, B, H)."""
    seq = b.transpose(x, [1, 0, 2])  # (S, B, F): ONNX recurrences are seq-first
    last, hs, cs = "", [], []
    for layer in range(node.attrs["num_layers"]):
        # Reordered copies of the parameters, in ONNX's gate order.
        w = {n: b.param_array(f"{n}_l{layer}") for n in
             ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
        weights = b.const(_reorder(w["weight_ih"], kind)[None], tag=f"W_l{layer}")
        recur = b.const(_reorder(w["weight_hh"], kind)[None], tag=f"R_l{layer}")
        bias = b.const(np.concatenate([_reorder(w["bias_ih"], kind),
                                       _reorder(w["bias_hh"], kind)])[None], tag=f"B_l{layer}")
        inputs = [seq, weights, recur, bias]
        if state is not None:  # initial_h, initial_c: this layer's (1, B, H) slice
            inputs += ["", *(s if node.attrs["num_layers"] == 1 else
                             b.op1("Slice", [s, b.ints([layer]), b.ints([layer + 1]),
                                             b.ints([0])], tag=f"state_l{layer}")
                             for s in state[: 2 if kind == "lstm" else 1])]
        extra = {"linear_before_reset": 1} if kind == "gru" else {}
        c_out = kind == "lstm" and state is not None
        outs = b.op(kind.upper(), inputs, outputs=3 if c_out else 2,
                    hidden_size=node.attrs["hidden"], **extra)  # Y (S, 1, B, H), Y_h (1, B, H)
        seq = b.op1("Squeeze", [outs[0], b.ints([1])])  # (S, B, H)
        last = outs[1]
        hs.append(outs[1])
        cs.extend(outs[2:])
    if node.attrs["return_sequences"]:
        return [b.transpose(seq, [1, 0, 2])], hs, cs  # (B, S, H)
    return [b.op1("Squeeze", [last, b.ints([0])])], hs, cs  # (B, H)


# -- streaming: h (and c) [num_layers, batch, hidden] carried between chunks ------------------


def _parts(kind: str) -> tuple[str, ...]:
    return ("h", "c") if kind == "lstm" else ("h",)


def _stream_state(kind: str) -> Any:
    def state(node: Any, last_only: bool) -> dict[str, tuple[Any, ...]]:
        shape = (node.attrs["num_layers"], "batch", node.attrs["hidden"])
        return {part: shape for part in _parts(kind)}

    return state


def _stream_ref(kind: str) -> Any:
    def ref(attrs: Any, p: dict[str, np.ndarray], ctx: Any, node: Any, x: np.ndarray) -> Any:
        h0 = ctx.state[ctx.key(node, "h")]
        c0 = ctx.state[ctx.key(node, "c")] if kind == "lstm" else None
        seq, h, c = run_layers(kind, attrs, p, x, h0, c0)
        ctx.new_state[ctx.key(node, "h")] = h
        if kind == "lstm":
            ctx.new_state[ctx.key(node, "c")] = c
        return seq if attrs["return_sequences"] else seq[:, -1]

    return ref


def _stream_lower(kind: str) -> Any:
    def lower(b: Any, node: Any, ins: list[str], ctx: Any) -> list[str]:
        names = [ctx.key(node, part) for part in _parts(kind)]
        state = tuple(ctx.state[n] for n in names)
        outs, hs, cs = _lower_layers(b, node, kind, ins[0], state + ("",) * (2 - len(state)))
        for name, finals in zip(names, (hs, cs)):
            ctx.new_state[name] = finals[0] if len(finals) == 1 else b.concat(finals, 0)
        return outs

    return lower


for _kind in GATES:
    register(_kind, infer=_infer, reference=_reference(_kind), decomposed=_lower(_kind),
             stream=StreamForms(lambda node, last: None, _stream_state(_kind),
                                _stream_ref(_kind), _stream_lower(_kind)))
