"""Builders for recurrent layers (PyTorch semantics and parameter names, batch first)."""

from __future__ import annotations

from ._checks import Checker
from ._errors import caller_location
from ._graph import ParamSpec, Value, make_node
from .ops.recurrent import GATES


def _recurrent(kind: str, x: Value, hidden: int, num_layers: int, return_sequences: bool,
               name: str | None, loc: str) -> Value:
    c = Checker(kind, name, loc)
    c.value(x, "input")
    c.pos_int(hidden, "hidden")
    c.pos_int(num_layers, "num_layers")
    c.flag(return_sequences, "return_sequences")
    if x.type.rank != 3:
        c.fail(f"input must be [batch, seq, features], given {x.type}")
    features = c.last_dim(x)
    gates = GATES[kind] * hidden
    params: tuple[ParamSpec, ...] = ()
    for layer in range(num_layers):
        fan_in = features if layer == 0 else hidden
        params += (ParamSpec(f"weight_ih_l{layer}", (gates, fan_in), "glorot"),
                   ParamSpec(f"weight_hh_l{layer}", (gates, hidden), "glorot"),
                   ParamSpec(f"bias_ih_l{layer}", (gates,), "zeros"),
                   ParamSpec(f"bias_hh_l{layer}", (gates,), "zeros"))
    attrs = {"hidden": hidden, "num_layers": num_layers, "return_sequences": return_sequences,
             "in_features": features}
    return Value(make_node(kind, [x], attrs, name=name, location=loc, params=params))


def lstm(x: Value, hidden: int, *, num_layers: int = 1, return_sequences: bool = True,
         name: str | None = None) -> Value:
    """A stack of LSTM layers over x [batch, seq, features] (PyTorch's nn.LSTM, batch_first).

    i, f, g, o = σ, σ, tanh, σ of (W_ih x_t + b_ih + W_hh h + b_hh) split in four;
    c_t = f c + i g; h_t = o tanh(c_t); zero initial state.
    Params per layer l: weight_ih_l{l} [4H, in], weight_hh_l{l} [4H, H], bias_ih_l{l} [4H],
    bias_hh_l{l} [4H], rows in gate order i, f, g, o (PyTorch's, so its state dicts load
    as they are). Returns [batch, seq, hidden], or [batch, hidden] (last step) when
    return_sequences=False.
    """
    return _recurrent("lstm", x, hidden, num_layers, return_sequences, name, caller_location())


def gru(x: Value, hidden: int, *, num_layers: int = 1, return_sequences: bool = True,
        name: str | None = None) -> Value:
    """A stack of GRU layers over x [batch, seq, features] (PyTorch's nn.GRU, batch_first).

    r, z = σ(W_i{r,z} x + b_i{r,z} + W_h{r,z} h + b_h{r,z}); n = tanh(W_in x + b_in +
    r (W_hn h + b_hn)); h_t = (1 - z) n + z h; zero initial state.
    Params per layer l: weight_ih_l{l} [3H, in], weight_hh_l{l} [3H, H], bias_ih_l{l},
    bias_hh_l{l} [3H], rows in gate order r, z, n (PyTorch's).
    """
    return _recurrent("gru", x, hidden, num_layers, return_sequences, name, caller_location())
