"""Attention the way other libraries spell it: a unified factory (`get_attention`), a Keras /
TensorFlow-style module with separate key and value inputs (`attention_module`) and a
single-query helper for memories (`process_sequence`).

They are composites: plain functions over builders, so every target lowers them like any
other layer. Widths are never aligned silently: a mismatch is an error that names the
projection to add.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ._checks import Checker, require_model
from ._errors import FeedError, caller_location, layer_message
from ._graph import Value, make_node
from .layers import (
    add,
    dense,
    gelu,
    layer_norm,
    multi_head_attention,
    relu,
    scaled_dot_product_attention,
    sigmoid,
    silu,
    tanh,
)

ATTENTION_TYPES = ("mha", "mqa", "gqa")
ACTIVATIONS: dict[str, Callable[..., Value]] = {
    "relu": relu, "gelu": gelu, "silu": silu, "sigmoid": sigmoid, "tanh": tanh}


def kv_heads_for(c: Checker, attention_type: Any, num_heads: int, num_groups: Any) -> int:
    """Key/value heads of an "mha" | "mqa" | "gqa" layer (the seed's `num_groups` G)."""
    c.choice(attention_type, "attention_type", ATTENTION_TYPES)
    if attention_type != "gqa":
        if num_groups is not None:
            c.fail(f"num_groups applies to attention_type='gqa' only, given num_groups="
                   f"{num_groups!r} with {attention_type!r}")
        return num_heads if attention_type == "mha" else 1
    if num_groups is None:
        c.fail("attention_type='gqa' needs num_groups (query heads share num_groups key/value "
               "heads)")
    c.pos_int(num_groups, "num_groups")
    if num_heads % num_groups:
        c.fail(f"num_groups={num_groups} must divide num_heads={num_heads}")
    return int(num_groups)


def get_attention(attention_type: str = "mha", *, embed_dim: int, num_heads: int,
                  num_groups: int | None = None, apply_causal_mask: bool = False,
                  dropout: float = 0.0, name: str | None = None) -> Callable[..., Value]:
    """A self-attention layer function `x -> Value` of the given type (a PyTorch-style factory).

    attention_type: "mha" (H key/value heads), "mqa" (1) or "gqa" (num_groups G, which must
    divide num_heads). embed_dim = the input and output width; head_dim = embed_dim / H.
    apply_causal_mask: causal self-attention. dropout: attention dropout, validated only: it is
    the identity at inference, and attngraph only does inference.

    The returned function takes x [batch, seq, embed_dim] (and optionally
    `key_padding_mask=` [batch, seq], True = attend) and returns [batch, seq, embed_dim]; its
    layer is a `multi_head_attention` named `name`.

    Raises:
        ConfigError: an unknown type, num_groups missing for gqa or not dividing num_heads,
            num_heads not dividing embed_dim, or dropout outside [0, 1).
    """
    c = Checker("get_attention", name, caller_location())
    c.pos_int(embed_dim, "embed_dim")
    c.pos_int(num_heads, "num_heads")
    kv = kv_heads_for(c, attention_type, num_heads, num_groups)
    if embed_dim % num_heads:
        c.fail(f"num_heads={num_heads} does not divide embed_dim={embed_dim}")
    c.flag(apply_causal_mask, "apply_causal_mask")
    c.number(dropout, "dropout", lo=0.0, hi=1.0)
    if dropout >= 1.0:
        c.fail(f"dropout must lie in [0, 1), given {dropout!r}")
    defined_at = c.location

    def layer(x: Value, *, key_padding_mask: Value | None = None) -> Value:
        here = Checker("get_attention", name, caller_location())
        here.value(x, "input")
        width = x.shape[-1] if x.shape else None
        if width != embed_dim:
            here.fail(f"expects input [batch, seq, {embed_dim}] (embed_dim given at "
                      f"{defined_at}), given {x.type}; project it first with "
                      f"ag.dense(x, {embed_dim})")
        return multi_head_attention(
            x, num_heads=num_heads, num_kv_heads=None if kv == num_heads else kv,
            causal=apply_causal_mask, key_padding_mask=key_padding_mask, name=name)

    layer.__doc__ = (f"{attention_type} self-attention: [batch, seq, {embed_dim}] -> "
                     f"[batch, seq, {embed_dim}], {num_heads} heads, {kv} key/value heads")
    return layer


def attention_module(
    query: Value, key: Value | None = None, value: Value | None = None, *, num_heads: int,
    key_dim: int, value_dim: int | None = None, output_dim: int | None = None,
    use_bias: bool = True, use_layer_norm: bool = True, use_residual: bool = True,
    activation: str | None = None, dropout: float = 0.0, causal: bool = False,
    key_padding_mask: Value | None = None, mask: Value | None = None,
    return_attention_scores: bool = False, name: str | None = None,
) -> Any:
    """Keras / TensorFlow MultiHeadAttentionModule: attention, then activation, residual and
    layer norm, each optional.

        y = attention(query, key, value)       # heads of key_dim (values: value_dim)
        y = activation(y)                      # when given
        y = y + query                          # use_residual
        y = layer_norm(y)                      # use_layer_norm (layer `{name}.norm`)

    Args:
        query: [batch, q_seq, Dq]. key: [batch, kv_seq, Dk] (default: query, self-attention).
        value: [batch, kv_seq, Dv_in] (default: key). Each input has a width of its own; the
            query/key/value projections map them to num_heads heads.
        key_dim: query/key head size; value_dim: value head size (default key_dim).
        output_dim: output width (default Dq, so the residual fits).
        activation: None, "relu", "gelu", "silu", "sigmoid" or "tanh".
        dropout: identity at inference; validated only.
        causal, key_padding_mask, mask: as in `multi_head_attention`.
        return_attention_scores: also return the weights [batch, heads, q_seq, kv_seq].

    Params: `{name}.query|key|value|output.kernel` (+ `.bias`), `{name}.norm.scale|bias`
    (without a name, the layers are auto-named like any builder's).
    When key and value are one tensor the layer is one `multi_head_attention` node; with
    separate key and value inputs it is dense projections around one `attention` node.

    Raises:
        ConfigError: bad options, or a residual between different widths (the error names the
            projection to add: attngraph never pads or truncates a width silently).
    """
    c = Checker("attention_module", name, caller_location())
    c.value(query, "query")
    c.value(key, "key", optional=True)
    c.value(value, "value", optional=True)
    for n, what in ((num_heads, "num_heads"), (key_dim, "key_dim")):
        c.pos_int(n, what)
    c.pos_int(value_dim, "value_dim", optional=True)
    c.pos_int(output_dim, "output_dim", optional=True)
    for flag, what in ((use_bias, "use_bias"), (use_layer_norm, "use_layer_norm"),
                       (use_residual, "use_residual"),
                       (return_attention_scores, "return_attention_scores")):
        c.flag(flag, what)
    if activation is not None:
        c.choice(activation, "activation", tuple(ACTIVATIONS))
    c.number(dropout, "dropout", lo=0.0, hi=1.0)
    if dropout >= 1.0:
        c.fail(f"dropout must lie in [0, 1), given {dropout!r}")
    width = c.last_dim(query, "query")
    out_dim = width if output_dim is None else output_dim
    if use_residual and out_dim != width:
        c.fail(f"use_residual=True adds the query (width {width}) to the attention output "
               f"(width {out_dim}); widths are never aligned silently: project the query "
               f"first (ag.dense(query, {out_dim})), set output_dim={width}, or pass "
               "use_residual=False")
    base = name
    key = query if key is None else key
    value = key if value is None else value
    common: dict[str, Any] = {"key_padding_mask": key_padding_mask, "mask": mask,
                              "causal": causal}
    if value is key:
        out = multi_head_attention(
            query, None if key is query else key, num_heads=num_heads, head_dim=key_dim,
            value_dim=value_dim, out_dim=out_dim, use_bias=use_bias,
            return_weights=return_attention_scores, name=base, **common)
    else:
        out = _separate_kv(query, key, value, num_heads, key_dim, value_dim or key_dim,
                           out_dim, use_bias, return_attention_scores, base, common)
    y, scores = out if return_attention_scores else (out, None)
    if activation is not None:
        y = ACTIVATIONS[activation](y, name=_sub(base, "activation"))
    if use_residual:
        y = add(y, query, name=_sub(base, "residual"))
    if use_layer_norm:
        y = layer_norm(y, name=_sub(base, "norm"))
    return (y, scores) if return_attention_scores else y


def _sub(base: str | None, part: str) -> str | None:
    """`{name}.{part}` for a named module; unnamed modules' layers are auto-named."""
    return None if base is None else f"{base}.{part}"


def _separate_kv(query: Value, key: Value, value: Value, heads: int, key_dim: int,
                 value_dim: int, out_dim: int, use_bias: bool, scores: bool, base: str | None,
                 common: dict[str, Any]) -> Any:
    """Dense projections of query, key and value from inputs of their own widths around one
    attention node: q/k [B, H, S, key_dim], v [B, H, Sk, value_dim]."""
    def heads_of(x: Value, width: int, sub: str) -> Value:
        projected = dense(x, heads * width, use_bias=use_bias, name=_sub(base, sub))
        return Value(make_node("split_heads", [projected], {"heads": heads},
                               name=_sub(base, f"{sub}_heads"), location=caller_location()))

    q = heads_of(query, key_dim, "query")
    k = heads_of(key, key_dim, "key")
    v = heads_of(value, value_dim, "value")
    out = scaled_dot_product_attention(q, k, v, return_weights=scores, name=base, **common)
    attended, weights = out if scores else (out, None)
    merged = Value(make_node("merge_heads", [attended], {}, name=_sub(base, "merge"),
                             location=caller_location()))
    y = dense(merged, out_dim, use_bias=use_bias, name=_sub(base, "output"))
    return (y, weights) if scores else y


def process_sequence(model: Any, params: Mapping[str, np.ndarray], query: Any,
                     keys: Sequence[Any], values: Sequence[Any] | None = None, *,
                     session: Any = None, return_attention_scores: bool = False) -> Any:
    """One query vector against a list of key (and value) vectors, through the same layer.

    `model` takes (query [batch, q_seq, Dq], key [batch, kv_seq, Dk][, value [batch, kv_seq,
    Dv]]) in that input order, e.g. a Model around `attention_module`. The vectors are stacked
    into a batch of one: query [1, 1, Dq], keys [1, N, Dk], values [1, N, Dv].

    Args:
        query: [Dq]; keys: N vectors [Dk]; values: N vectors [Dv] (a model with two inputs
            reads its keys as values, so leave values out).
        session: run an exported `ag.Session` of the model instead of the reference.
        return_attention_scores: also return the weights [heads, N] (the model must output
            them as its second output: build it with return_attention_scores=True).

    Returns:
        The output vector [Dout] (and the scores).

    Raises:
        FeedError: a vector of the wrong width (the message names the projection to add),
            NaN/Inf, an empty list, or key/value counts that differ.
    """
    where = caller_location()

    def fail(message: str) -> Any:
        raise FeedError(layer_message("process_sequence", None, message, where))

    require_model(model, "process_sequence", where)
    names = list(model.inputs)
    if len(names) not in (2, 3):
        fail(f"the model must take (query, key[, value]) inputs, it takes {names}")
    if values is not None and len(names) == 2:
        fail(f"the model reads its values from its keys input {names[1]!r}; leave values out")
    if values is None and len(names) == 3:
        fail(f"the model takes separate values ({names[2]!r}); pass values=")
    count = len(keys) if isinstance(keys, (list, tuple, np.ndarray)) else 0
    vectors = {names[0]: ([query], 1), names[1]: (keys, count)}
    if values is not None:
        vectors[names[2]] = (values, count)
    feeds = {name: _stack(fail, name, vs, model.inputs[name].type, n)
             for name, (vs, n) in vectors.items()}
    outs = list(model.outputs)
    if return_attention_scores and len(outs) < 2:
        fail("return_attention_scores=True needs a model that outputs the scores second; "
             "build its layer with return_attention_scores=True")
    result = (session.run(feeds, check_finite=True) if session is not None
              else model.predict(params, feeds, check_finite=True))
    out = result[outs[0]][0, 0]  # (Dout,)
    if not return_attention_scores:
        return out
    return out, result[outs[1]][0, :, 0, :]  # (heads, N)


def _stack(fail: Any, name: str, vectors: Any, ttype: Any, count: int) -> np.ndarray:
    width = ttype.shape[-1]
    if isinstance(vectors, np.ndarray) and vectors.ndim == 2:
        vectors = list(vectors)
    if not isinstance(vectors, (list, tuple)) or not vectors:
        fail(f"{name}: expected a non-empty list of vectors [{width}], given {vectors!r}")
    if len(vectors) != count:
        fail(f"{name}: {len(vectors)} vectors for {count} keys; keys and values pair up")
    rows = []
    for i, v in enumerate(vectors):
        arr = np.asarray(v, dtype=np.float32)
        if arr.ndim != 1 or arr.shape[0] != width:
            fail(f"{name}[{i}]: expected a vector [{width}], given shape {arr.shape}; widths "
                 f"are never padded or truncated: project it to {width} first (a dense "
                 f"layer, e.g. ag.dense(x, {width}))")
        rows.append(arr)
    return np.stack(rows)[None]  # (1, N, width)
