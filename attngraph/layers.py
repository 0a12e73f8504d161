"""Builders: validate arguments, declare parameters with concrete shapes, emit one node.

Every builder takes graph values and returns a new graph value (Axon style) and accepts
`name=None` (auto-named `<op>_<n>` when the Model is made).
"""

from __future__ import annotations

from typing import Any

from ._attention_layers import multi_head_attention, scaled_dot_product_attention
from ._checks import Checker
from ._errors import ConfigError, caller_location, layer_message
from ._graph import ParamSpec, Value, make_node
from ._registry import register
from ._types import DTYPES, TensorType, normalize_dtype

# The attention builders live in _attention_layers.py; they are part of this module's API.
__all__ = ["add", "concatenate", "dense", "dropout", "embedding", "gelu", "input",
           "last_timestep", "layer_norm", "mean_pool", "multi_head_attention", "multiply",
           "positional_encoding", "relu", "rms_norm", "scale", "scaled_dot_product_attention",
           "sigmoid", "silu", "softmax", "tanh", "tied_projection", "timestep"]

register(
    "input",
    infer=lambda types, attrs, fail: (attrs["type"],),
    reference=lambda attrs, params: None,
    decomposed=lambda b, node, ins: [],
)


def input(name: str, shape: Any, dtype: str = "float32") -> Value:
    """A model input. Shape entries are ints (static) or strings (symbolic, e.g. "batch")."""
    loc = caller_location()
    if not isinstance(name, str) or not name.isidentifier() and not name.replace(".", "_") \
            .replace("-", "_").isidentifier():
        raise ConfigError(layer_message("input", None, f"name must be an identifier-like "
                                        f"string, given {name!r}", loc))
    if not isinstance(shape, (tuple, list)):
        raise ConfigError(layer_message("input", name, f"shape must be a tuple of ints or "
                                        f"strings, given {shape!r}", loc))
    for d in shape:
        if isinstance(d, bool) or not (isinstance(d, int) and d > 0 or
                                       isinstance(d, str) and d.isidentifier()):
            raise ConfigError(layer_message(
                "input", name, f"shape entries must be positive ints or names like 'batch', "
                f"given {d!r} in {tuple(shape)!r}", loc))
    canonical = normalize_dtype(dtype)
    if canonical is None:
        raise ConfigError(layer_message("input", name, f"dtype must be one of {list(DTYPES)}, "
                                        f"given {dtype!r}", loc))
    ttype = TensorType(canonical, tuple(shape))
    return Value(make_node("input", (), {"name": name, "type": ttype}, name=name, location=loc))


def _emit(op: str, inputs: list[Value | None], attrs: dict[str, Any], name: str | None,
          loc: str, params: tuple[ParamSpec, ...] = ()) -> Value:
    return Value(make_node(op, inputs, attrs, name=name, location=loc, params=params))


# -- dense and elementwise -------------------------------------------------------------------


def dense(x: Value, units: int, *, use_bias: bool = True, name: str | None = None) -> Value:
    """y = x @ kernel + bias. kernel [in, units], bias [units]; x (..., in) -> (..., units)."""
    c = Checker("dense", name, caller_location())
    c.value(x, "input")
    c.pos_int(units, "units")
    c.flag(use_bias, "use_bias")
    fan_in = c.last_dim(x)
    params: tuple[ParamSpec, ...] = (ParamSpec("kernel", (fan_in, units), "glorot"),)
    if use_bias:
        params += (ParamSpec("bias", (units,), "zeros"),)
    return _emit("dense", [x], {"units": units, "in_features": fan_in, "use_bias": use_bias},
                 name, c.location, params)


def _nary(op: str, values: tuple[Any, ...], name: str | None, loc: str) -> Value:
    c = Checker(op, name, loc)
    if len(values) == 1 and isinstance(values[0], (list, tuple)):
        values = tuple(values[0])
    if len(values) < 2:
        c.fail(f"needs at least two values, given {len(values)}")
    for i, v in enumerate(values):
        c.value(v, f"input {i}")
    return _emit(op, list(values), {}, name, loc)


def add(*values: Any, name: str | None = None) -> Value:
    """Elementwise sum (numpy broadcasting) of two or more values, or of one list of values."""
    return _nary("add", values, name, caller_location())


def multiply(*values: Any, name: str | None = None) -> Value:
    """Elementwise product (numpy broadcasting) of two or more values, or of one list."""
    return _nary("multiply", values, name, caller_location())


def concatenate(values: list[Value], axis: int = -1, *, name: str | None = None) -> Value:
    """Join values along `axis`; the other dims must agree."""
    c = Checker("concatenate", name, caller_location())
    if not isinstance(values, (list, tuple)) or len(values) < 1:
        c.fail(f"values must be a non-empty list of graph values, given {values!r}")
    for i, v in enumerate(values):
        c.value(v, f"value {i}")
    rank = values[0].type.rank
    if isinstance(axis, bool) or not isinstance(axis, int) or not -rank <= axis < rank:
        c.fail(f"axis must be an int in [{-rank}, {rank}), given {axis!r}")
    return _emit("concatenate", list(values), {"axis": axis % rank}, name, c.location)


def _unary(op: str, x: Value, name: str | None, loc: str, **attrs: Any) -> Value:
    Checker(op, name, loc).value(x, "input")
    return _emit(op, [x], attrs, name, loc)


def relu(x: Value, *, name: str | None = None) -> Value:
    """max(x, 0)."""
    return _unary("relu", x, name, caller_location())


def gelu(x: Value, *, approximate: str = "none", name: str | None = None) -> Value:
    """0.5 x (1 + erf(x / sqrt 2)); approximate="tanh": 0.5 x (1 + tanh(sqrt(2/pi)(x + 0.044715 x^3)))."""
    loc = caller_location()
    Checker("gelu", name, loc).choice(approximate, "approximate", ("none", "tanh"))
    return _unary("gelu", x, name, loc, approximate=approximate)


def silu(x: Value, *, name: str | None = None) -> Value:
    """x * sigmoid(x)."""
    return _unary("silu", x, name, caller_location())


def sigmoid(x: Value, *, name: str | None = None) -> Value:
    """1 / (1 + exp(-x))."""
    return _unary("sigmoid", x, name, caller_location())


def tanh(x: Value, *, name: str | None = None) -> Value:
    """tanh(x)."""
    return _unary("tanh", x, name, caller_location())


def softmax(x: Value, axis: int = -1, *, name: str | None = None) -> Value:
    """exp(x - max) / sum(exp(x - max)) along `axis`."""
    loc = caller_location()
    c = Checker("softmax", name, loc)
    c.value(x, "input")
    if isinstance(axis, bool) or not isinstance(axis, int) or not -x.type.rank <= axis < x.type.rank:
        c.fail(f"axis must be an int in [{-x.type.rank}, {x.type.rank}), given {axis!r}")
    return _emit("softmax", [x], {"axis": axis}, name, loc)


def dropout(x: Value, rate: float = 0.1, *, name: str | None = None) -> Value:
    """Identity at inference (attngraph only does inference); `rate` is recorded."""
    loc = caller_location()
    Checker("dropout", name, loc).number(rate, "rate", lo=0.0, hi=1.0)
    return _unary("dropout", x, name, loc, rate=float(rate))


# -- norms -----------------------------------------------------------------------------------


def layer_norm(x: Value, *, epsilon: float = 1e-5, use_bias: bool = True,
               name: str | None = None) -> Value:
    """(x - mean) / sqrt(var + epsilon) * scale + bias over the last axis."""
    c = Checker("layer_norm", name, caller_location())
    c.value(x, "input")
    c.number(epsilon, "epsilon", positive=True)
    dim = c.last_dim(x)
    params: tuple[ParamSpec, ...] = (ParamSpec("scale", (dim,), "ones"),)
    if c.flag(use_bias, "use_bias"):
        params += (ParamSpec("bias", (dim,), "zeros"),)
    return _emit("layer_norm", [x], {"dim": dim, "epsilon": float(epsilon), "use_bias": use_bias},
                 name, c.location, params)


def rms_norm(x: Value, *, epsilon: float = 1e-6, name: str | None = None) -> Value:
    """x / sqrt(mean(x^2) + epsilon) * scale over the last axis."""
    c = Checker("rms_norm", name, caller_location())
    c.value(x, "input")
    c.number(epsilon, "epsilon", positive=True)
    dim = c.last_dim(x)
    return _emit("rms_norm", [x], {"dim": dim, "epsilon": float(epsilon)}, name, c.location,
                 (ParamSpec("scale", (dim,), "ones"),))


# -- embeddings and sequences ----------------------------------------------------------------


def embedding(ids: Value, vocab_size: int, dim: int, *, shared_with: Value | None = None,
              name: str | None = None) -> Value:
    """Look rows of an `embeddings` table [vocab_size, dim] up: ids (...) -> (..., dim).

    shared_with: another embedding layer's output whose table this layer reads (one
    parameter, owned by that layer; T5's encoder and decoder share it this way).
    """
    c = Checker("embedding", name, caller_location())
    c.value(ids, "ids")
    c.pos_int(vocab_size, "vocab_size")
    c.pos_int(dim, "dim")
    owner = None
    if shared_with is not None:
        c.value(shared_with, "shared_with")
        other = shared_with.node
        if other.op != "embedding" or (other.attrs["vocab_size"], other.attrs["dim"]) != (
                vocab_size, dim):
            c.fail(f"shared_with must be an embedding of [{vocab_size}, {dim}], given "
                   f"{other.op} {shared_with.type}")
        owner = other.params[0].owner or other
    return _emit("embedding", [ids], {"vocab_size": vocab_size, "dim": dim}, name, c.location,
                 (ParamSpec("embeddings", (vocab_size, dim), "normal", owner=owner),))


def scale(x: Value, factor: float, *, name: str | None = None) -> Value:
    """x * factor (a constant)."""
    loc = caller_location()
    Checker("scale", name, loc).number(factor, "factor")
    return _unary("scale", x, name, loc, factor=float(factor))


def positional_encoding(x: Value, kind: str = "sinusoidal", *, max_len: int | None = None,
                        name: str | None = None) -> Value:
    """x + PE[:seq]. "sinusoidal": PE[pos, 2i] = sin(pos / 10000^(2i/d)),
    PE[pos, 2i+1] = cos(pos / 10000^(2i/d)) (any length); "learned": a trained table
    `embeddings` [max_len, d]. x [batch, seq, d]."""
    c = Checker("positional_encoding", name, caller_location())
    c.value(x, "input")
    c.choice(kind, "kind", ("sinusoidal", "learned"))
    dim = c.last_dim(x)
    params: tuple[ParamSpec, ...] = ()
    if kind == "learned":
        if max_len is None:
            seq = x.shape[1] if x.type.rank == 3 else None
            if not isinstance(seq, int):
                c.fail(f"kind='learned' needs max_len when the sequence dim is symbolic "
                       f"(input {x.type})")
            max_len = seq
        c.pos_int(max_len, "max_len")
        params = (ParamSpec("embeddings", (max_len, dim), "normal"),)
    elif max_len is not None:
        c.pos_int(max_len, "max_len")
    return _emit("positional_encoding", [x], {"kind": kind, "dim": dim, "max_len": max_len},
                 name, c.location, params)


def last_timestep(x: Value, *, name: str | None = None) -> Value:
    """x[:, -1, :]: [batch, seq, d] -> [batch, d]."""
    return _unary("last_timestep", x, name, caller_location())


def timestep(x: Value, index: int, *, name: str | None = None) -> Value:
    """x[:, index, :]: [batch, seq, d] -> [batch, d] (index 0: a BERT [CLS] position)."""
    loc = caller_location()
    c = Checker("timestep", name, loc)
    c.value(x, "input")
    if isinstance(index, bool) or not isinstance(index, int):
        c.fail(f"index must be an int, given {index!r}")
    return _emit("timestep", [x], {"index": index}, name, loc)


def tied_projection(x: Value, embedding: Value, *, name: str | None = None) -> Value:
    """x @ embeddings^T with the table of an `ag.embedding` layer (a tied LM head):
    [..., dim] -> [..., vocab_size]. The table stays one parameter, owned by the embedding."""
    c = Checker("tied_projection", name, caller_location())
    c.value(x, "input")
    c.value(embedding, "embedding")
    if embedding.node.op != "embedding":
        c.fail(f"embedding must be the output of ag.embedding, given {embedding.node.op}")
    vocab, dim = embedding.node.attrs["vocab_size"], embedding.node.attrs["dim"]
    spec = ParamSpec("embeddings", (vocab, dim), "normal", owner=embedding.node)
    return _emit("tied_projection", [x], {"vocab_size": vocab, "dim": dim}, name, c.location,
                 (spec,))


def mean_pool(x: Value, mask: Value | None = None, *, name: str | None = None) -> Value:
    """Mean over the sequence axis, counting only positions where mask is True/1 (if given)."""
    c = Checker("mean_pool", name, caller_location())
    c.value(x, "input")
    c.value(mask, "mask", optional=True)
    return _emit("mean_pool", [x, mask], {}, name, c.location)
