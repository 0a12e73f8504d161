"""Composite builders: plain Python functions that call builders (they are not ops)."""

from __future__ import annotations

from typing import Any

from ._checks import Checker
from ._errors import caller_location
from ._graph import Value
from .layers import (
    add,
    dense,
    gelu,
    layer_norm,
    multi_head_attention,
    multiply,
    relu,
    rms_norm,
    silu,
)
from .layers import (
    dropout as dropout_layer,
)

ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu", "swiglu", "geglu")


def feed_forward(x: Value, ffn_dim: int, *, activation: str = "gelu", out_dim: int | None = None,
                 use_bias: bool = True, name: str) -> Value:
    """dense(ffn_dim) -> activation -> dense(out_dim); "swiglu"/"geglu" gate a second
    projection: act(gate(x)) * up(x). Layers: `{name}.up`, `{name}.gate`, `{name}.down`."""
    c = Checker("feed_forward", name, caller_location())
    c.value(x, "input")
    c.pos_int(ffn_dim, "ffn_dim")
    c.pos_int(out_dim, "out_dim", optional=True)
    c.choice(activation, "activation", ACTIVATIONS)
    out_dim = out_dim or x.shape[-1]
    up = dense(x, ffn_dim, use_bias=use_bias, name=f"{name}.up")
    if activation in ("swiglu", "geglu"):
        gate = dense(x, ffn_dim, use_bias=use_bias, name=f"{name}.gate")
        gate = silu(gate) if activation == "swiglu" else gelu(gate)
        h = multiply(gate, up, name=f"{name}.glu")
    elif activation == "gelu_tanh":
        h = gelu(up, approximate="tanh")
    else:
        h = {"gelu": gelu, "relu": relu, "silu": silu}[activation](up)
    return dense(h, out_dim, use_bias=use_bias, name=f"{name}.down")


def transformer_block(
    x: Value, context: Value | None = None, *, num_heads: int, ffn_dim: int,
    num_kv_heads: int | None = None, head_dim: int | None = None, causal: bool = False,
    window: int | tuple[int, int] | None = None, key_padding_mask: Value | None = None,
    context_padding_mask: Value | None = None, norm: str = "layer",
    norm_position: str = "pre", activation: str = "gelu", dropout: float = 0.0,
    attn_bias: Value | None = None, cross_attn_bias: Value | None = None,
    scale: float | None = None, rope: bool = False, rope_base: float = 10000.0,
    rotary_dim: int | None = None, qk_layernorm: bool = False, use_bias: bool = True,
    norm_eps: float | None = None, name: str | None = None,
    rope_scaling: dict[str, Any] | None = None,
) -> Value:
    """One transformer layer: self-attention (+ cross-attention over `context`) + feed-forward,
    each with a residual connection and a norm ("pre": x + f(norm(x)); "post": norm(x + f(x))).

    Layers are named `{name}.attn`, `{name}.cross_attn`, `{name}.ffn.*`, `{name}.norm1..3`.
    attn_bias / cross_attn_bias: additive float masks (e.g. a shared T5 relative bias);
    scale, rope*, rope_scaling, qk_layernorm: as in `multi_head_attention`; use_bias applies to every
    projection; norm_eps defaults to 1e-5 (layer) or 1e-6 (rms).
    Returns [batch, seq, embed] like x.
    """
    loc = caller_location()
    c = Checker("transformer_block", name, loc)
    c.value(x, "input")
    c.pos_int(ffn_dim, "ffn_dim")
    c.choice(norm, "norm", ("layer", "rms"))
    c.choice(norm_position, "norm_position", ("pre", "post"))
    c.choice(activation, "activation", ACTIVATIONS)
    c.number(dropout, "dropout", lo=0.0, hi=1.0)
    base = name or f"block_{_next_block()}"

    def normed(h: Value, i: int) -> Value:
        if norm == "layer":
            eps = 1e-5 if norm_eps is None else norm_eps
            return layer_norm(h, epsilon=eps, use_bias=use_bias, name=f"{base}.norm{i}")
        return rms_norm(h, epsilon=1e-6 if norm_eps is None else norm_eps,
                        name=f"{base}.norm{i}")

    def sublayer(h: Value, i: int, fn: Any) -> Value:
        if norm_position == "pre":
            return add(h, dropout_layer(fn(normed(h, i)), dropout, name=f"{base}.drop{i}"),
                       name=f"{base}.res{i}")
        out = add(h, dropout_layer(fn(h), dropout, name=f"{base}.drop{i}"), name=f"{base}.res{i}")
        return normed(out, i)

    h = sublayer(x, 1, lambda t: multi_head_attention(
        t, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim, causal=causal,
        window=window, key_padding_mask=key_padding_mask, mask=attn_bias, scale=scale,
        rope=rope, rope_base=rope_base, rotary_dim=rotary_dim, qk_layernorm=qk_layernorm,
        use_bias=use_bias, rope_scaling=rope_scaling, name=f"{base}.attn"))
    n = 2
    if context is not None:
        h = sublayer(h, n, lambda t: multi_head_attention(
            t, context, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
            key_padding_mask=context_padding_mask, mask=cross_attn_bias, scale=scale,
            use_bias=use_bias, name=f"{base}.cross_attn"))
        n += 1
    return sublayer(h, n, lambda t: feed_forward(t, ffn_dim, activation=activation,
                                                 use_bias=use_bias, name=f"{base}.ffn"))


_BLOCKS = [0]


def _next_block() -> int:
    # Unnamed blocks still need distinct sub-layer names; a process-wide counter gives them.
    _BLOCKS[0] += 1
    return _BLOCKS[0] - 1
