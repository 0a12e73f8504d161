"""Builders: validate arguments, declare parameters with concrete shapes, emit one node.

Every builder takes graph values and returns a new graph value (Axon style) and accepts
`name=None` (auto-named `<op>_<n>` when the Model is made).
"""

from __future__ import annotations

import math
from typing import Any

from ._checks import Checker
from ._errors import ConfigError, caller_location, layer_message
from ._graph import ParamSpec, Value, make_node
from ._registry import register
from ._types import DTYPES, TensorType, normalize_dtype
from .ops._rope import scaling_spec

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


# -- attention -------------------------------------------------------------------------------


def _attention_options(c: Checker, causal: Any, window: Any, scale: Any, softcap: Any,
                       return_weights: Any, mask: Any, key_padding_mask: Any) -> dict[str, Any]:
    c.flag(causal, "causal")
    c.flag(return_weights, "return_weights")
    c.value(mask, "mask", optional=True)
    c.value(key_padding_mask, "key_padding_mask", optional=True)
    return {
        "causal": causal, "window": c.window(window),
        "scale": c.number(scale, "scale", positive=True, optional=True),
        "softcap": c.number(softcap, "softcap", positive=True, optional=True),
        "return_weights": return_weights,
    }


def scaled_dot_product_attention(
    q: Value, k: Value, v: Value, *, mask: Value | None = None,
    key_padding_mask: Value | None = None, causal: bool = False,
    window: int | tuple[int, int] | None = None, scale: float | None = None,
    softcap: float | None = None, return_weights: bool = False, name: str | None = None,
) -> Any:
    """softmax(mask(softcap(q k^T * scale))) v, as DESIGN §4 defines it.

    Args:
        q: [B, Hq, Sq, D]; k: [B, Hkv, Sk, D]; v: [B, Hkv, Sk, Dv]; Hkv must divide Hq
            (query head h reads kv head h // (Hq // Hkv)).
        mask: bool (True = attend) or additive float, broadcastable to [B, Hq, Sq, Sk].
        key_padding_mask: bool/int [B, Sk], True/1 = attend.
        causal: query i (absolute position Sk - Sq + i) attends keys j <= Sk - Sq + i.
        window: int K = the last K positions including the query; (left, right) = local band.
            An int window looks only backwards whatever `causal` says (causal=False does not
            make it two-sided); for a band around the query pass (left, right), e.g. (3, 3).
        scale: default 1/sqrt(D); a temperature t is scale = 1/(t sqrt(D)).
        softcap: c > 0 turns scores into c tanh(scores / c) before masking.
        return_weights: also return the attention weights [B, Hq, Sq, Sk].

    Returns:
        [B, Hq, Sq, Dv] (and the weights when asked). Fully masked rows are zeros.
    """
    c = Checker("attention", name, caller_location())
    for t, what in ((q, "q"), (k, "k"), (v, "v")):
        c.value(t, what)
    attrs = _attention_options(c, causal, window, scale, softcap, return_weights, mask,
                               key_padding_mask)
    if attrs["scale"] is None:
        d = q.shape[-1]
        if not isinstance(d, int):
            c.fail(f"q needs a static head_dim, given {q.type}")
        attrs["scale"] = 1.0 / math.sqrt(d)
    node = make_node("attention", [q, k, v, key_padding_mask, mask], attrs, name=name,
                     location=c.location)
    return (Value(node, 0), Value(node, 1)) if return_weights else Value(node, 0)


def multi_head_attention(
    x: Value, context: Value | None = None, *, num_heads: int, head_dim: int | None = None,
    num_kv_heads: int | None = None, value_dim: int | None = None, causal: bool = False,
    window: int | tuple[int, int] | None = None, key_padding_mask: Value | None = None,
    mask: Value | None = None, scale: float | None = None, softcap: float | None = None,
    use_bias: bool = True, out_dim: int | None = None, rope: bool = False,
    rope_base: float = 10000.0, rotary_dim: int | None = None, rope_interleaved: bool = False,
    qk_layernorm: bool = False, return_weights: bool = False, name: str | None = None,
    rope_scaling: dict[str, Any] | None = None, output_bias: bool | None = None,
) -> Any:
    """Multi-head attention with its query/key/value/output projections, as one node.

    Self-attention when `context` is None, cross-attention otherwise. num_kv_heads: None = MHA,
    1 = MQA, else GQA (must divide num_heads). head_dim defaults to embed_dim // num_heads.
    value_dim: the width of each value head (default head_dim); value heads may be wider or
    narrower than query/key heads (Keras `value_dim`, Dv in DESIGN §4).
    Attention options are those of `scaled_dot_product_attention`.

    rope: rotary position embedding on q and k (self-attention only), positions 0 .. S-1;
    pair k of the first `rotary_dim` dims (default head_dim) turns by p * rope_base^(-2k/r);
    half-split pairs (Llama, default) or interleaved pairs (`rope_interleaved=True`, GPT-J).
    rope_scaling: Hugging Face's frequency scaling, {"rope_type": "linear", "factor": f} or
    {"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
    "original_max_position_embeddings"} (see `attngraph.ops._rope`).
    output_bias: whether the output projection has a bias (default: use_bias; Qwen2 biases
    only query/key/value).
    qk_layernorm: layer-normalise each query and key head vector before the scores (Edifice),
    with params q_norm/k_norm.scale and .bias [head_dim]; applied before RoPE.

    Params: query.kernel [E, H*D], key.kernel [Ec, Hkv*D], value.kernel [Ec, Hkv*Dv],
    output.kernel [H*Dv, out_dim] (and `.bias` of each when use_bias).

    Returns:
        [batch, seq, out_dim] (out_dim defaults to E), and weights [B, H, Sq, Sk] if asked.
    """
    c = Checker("multi_head_attention", name, caller_location())
    c.value(x, "input")
    c.value(context, "context", optional=True)
    c.pos_int(num_heads, "num_heads")
    c.pos_int(head_dim, "head_dim", optional=True)
    c.pos_int(num_kv_heads, "num_kv_heads", optional=True)
    c.pos_int(value_dim, "value_dim", optional=True)
    c.pos_int(out_dim, "out_dim", optional=True)
    c.flag(use_bias, "use_bias")
    attrs = _attention_options(c, causal, window, scale, softcap, return_weights, mask,
                               key_padding_mask)
    embed = c.last_dim(x)
    ctx_dim = embed if context is None else c.last_dim(context, "context")
    if head_dim is None:
        if embed % num_heads:
            c.fail(f"num_heads={num_heads} does not divide embed dim {embed}; pass head_dim= "
                   f"or pick num_heads among the divisors of {embed}")
        head_dim = embed // num_heads
    kv = num_heads if num_kv_heads is None else num_kv_heads
    if num_heads % kv:
        c.fail(f"num_kv_heads={kv} does not divide num_heads={num_heads}")
    if attrs["scale"] is None:
        attrs["scale"] = 1.0 / math.sqrt(head_dim)
    c.flag(rope, "rope")
    c.flag(rope_interleaved, "rope_interleaved")
    c.flag(qk_layernorm, "qk_layernorm")
    rope_spec: tuple[Any, ...] | None = None
    if rope:
        if context is not None:
            c.fail("rope=True applies to self-attention only (context was given)")
        base = c.number(rope_base, "rope_base", positive=True)
        r = head_dim if rotary_dim is None else int(c.pos_int(rotary_dim, "rotary_dim") or 0)
        if r > head_dim or r % 2:
            c.fail(f"rotary_dim must be even and <= head_dim={head_dim}, given {r}")
        rope_spec = (r, base, rope_interleaved)
        scaling, problems = scaling_spec(rope_scaling)
        if problems:
            c.fail(f"rope_scaling: {'; '.join(problems)}")
        if scaling is not None:
            rope_spec += (scaling,)
    elif rotary_dim is not None or rope_scaling is not None:
        c.fail("rotary_dim / rope_scaling is given but rope=False")
    if output_bias is not None:
        c.flag(output_bias, "output_bias")
    out_dim = embed if out_dim is None else out_dim
    attrs.update(num_heads=num_heads, num_kv_heads=kv, head_dim=head_dim, embed_dim=embed,
                 context_dim=ctx_dim, out_dim=out_dim, use_bias=use_bias, rope=rope_spec,
                 qk_layernorm=qk_layernorm)
    if output_bias is not None and output_bias != use_bias:
        attrs["output_bias"] = output_bias  # recorded only when it differs: stable exports
    dv = head_dim if value_dim is None else value_dim
    if dv != head_dim:  # recorded only when it differs, so other layers' configs stay as they were
        attrs["value_dim"] = dv
    shapes = {"query": (embed, num_heads * head_dim), "key": (ctx_dim, kv * head_dim),
              "value": (ctx_dim, kv * dv), "output": (num_heads * dv, out_dim)}
    params: tuple[ParamSpec, ...] = ()
    for sub, shape in shapes.items():
        params += (ParamSpec(f"{sub}.kernel", shape, "glorot"),)
        if attrs.get("output_bias", use_bias) if sub == "output" else use_bias:
            params += (ParamSpec(f"{sub}.bias", (shape[1],), "zeros"),)
    if qk_layernorm:
        for sub in ("q_norm", "k_norm"):
            params += (ParamSpec(f"{sub}.scale", (head_dim,), "ones"),
                       ParamSpec(f"{sub}.bias", (head_dim,), "zeros"))
    node = make_node("multi_head_attention", [x, context, key_padding_mask, mask], attrs,
                     name=name, location=c.location, params=params)
    return (Value(node, 0), Value(node, 1)) if return_weights else Value(node, 0)
