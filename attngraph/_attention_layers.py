"""Attention builders: `scaled_dot_product_attention` and `multi_head_attention` (re-exported
by `attngraph.layers` and `attngraph`). Each validates its options, declares its parameters
and emits one node; DESIGN.md section 4 gives the semantics every target keeps.
"""

from __future__ import annotations

import math
from typing import Any

from ._checks import Checker
from ._errors import caller_location
from ._graph import ParamSpec, Value, make_node
from .ops._rope import scaling_spec


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
