"""Builders for position-dependent attention biases (pass the result as `mask=`)."""

from __future__ import annotations

from ._checks import Checker
from ._errors import caller_location
from ._graph import ParamSpec, Value, make_node


def relative_position_bias(q_source: Value, k_source: Value | None = None, *, num_heads: int,
                           num_buckets: int = 32, max_distance: int = 128,
                           bidirectional: bool = True, name: str | None = None) -> Value:
    """T5 relative-position bias f32[1, H, Sq, Sk] from a learned table `embeddings`
    [num_buckets, num_heads], looked up by the bucket of j - p (T5's bucketing).

    Sq and Sk are read from axis 1 of `q_source` and `k_source` (default: q_source). Build it
    once and pass it to every layer of a stack to share one table, as T5 does. Encoders use
    bidirectional=True, decoders bidirectional=False.
    """
    c = Checker("relative_position_bias", name, caller_location())
    c.value(q_source, "q_source")
    k_source = q_source if k_source is None else k_source
    c.value(k_source, "k_source")
    c.pos_int(num_heads, "num_heads")
    c.pos_int(num_buckets, "num_buckets")
    c.pos_int(max_distance, "max_distance")
    c.flag(bidirectional, "bidirectional")
    half = num_buckets // 2 if bidirectional else num_buckets
    if half < 2 or max_distance <= half // 2:
        c.fail(f"needs num_buckets >= {4 if bidirectional else 2} and max_distance > "
               f"{half // 2}, given num_buckets={num_buckets}, max_distance={max_distance}")
    attrs = {"num_heads": num_heads, "num_buckets": num_buckets, "max_distance": max_distance,
             "bidirectional": bidirectional}
    return Value(make_node("relative_position_bias", [q_source, k_source], attrs, name=name,
                           location=c.location,
                           params=(ParamSpec("embeddings", (num_buckets, num_heads), "normal"),)))


def alibi_bias(q_source: Value, k_source: Value | None = None, *, num_heads: int,
               name: str | None = None) -> Value:
    """ALiBi bias f32[1, H, Sq, Sk] = -slope_h * |j - p|, with ALiBi's head slopes. Combine with
    causal=True for decoders (then only j <= p counts)."""
    c = Checker("alibi_bias", name, caller_location())
    c.value(q_source, "q_source")
    k_source = q_source if k_source is None else k_source
    c.value(k_source, "k_source")
    c.pos_int(num_heads, "num_heads")
    return Value(make_node("alibi_bias", [q_source, k_source], {"num_heads": num_heads},
                           name=name, location=c.location))
