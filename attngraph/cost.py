"""Parameters and key/value-cache memory of attention layers (the seed's MHA/GQA/MQA tables).

For embed width D, H query heads of size Dh, G key/value heads, value heads of size Dv:

    parameters  = D*H*Dh (query) + D*G*Dh (key) + D*G*Dv (value) + H*Dv*D (output) [+ biases]
                  MHA: 4 D^2, GQA: D^2 (2 + 2G/H), MQA: 2 D^2 + 2 D (D/H)   (Dh = Dv = D/H)
    KV cache    = G * (Dh + Dv) elements per token (2 G Dh when Dv = Dh), times the dtype's
                  size; a sliding-window layer holds at most `window` tokens (in the
                  copying cache form; a shared past/present buffer holds the whole sequence).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ._checks import Checker
from ._errors import caller_location
from ._types import FLOAT_DTYPES, normalize_dtype
from .ops.attention import value_dim as layer_value_dim

if TYPE_CHECKING:
    from ._graph import Node
    from ._model import Model


@dataclass(frozen=True)
class AttentionCost:
    """Cost of one attention layer. kv_cache_bytes_per_token is per sequence (batch 1)."""

    layer: str
    params: int
    kv_heads: int
    head_dim: int
    value_dim: int
    dtype: str
    window: int | None = None

    @property
    def kv_cache_bytes_per_token(self) -> int:
        """Bytes of cache one token adds for one sequence: kv_heads * (head_dim + value_dim)
        * the dtype's item size (one key and one value vector per kv head)."""
        return self.kv_heads * (self.head_dim + self.value_dim) * np.dtype(self.dtype).itemsize

    def kv_cache_bytes(self, context: int, batch: int = 1) -> int:
        """Bytes of keys and values held for `context` tokens (window-bounded) per batch."""
        c = Checker("AttentionCost.kv_cache_bytes", None, caller_location())
        if isinstance(context, bool) or not isinstance(context, int) or context < 0:
            c.fail(f"context must be an int >= 0, given {context!r}")
        c.pos_int(batch, "batch")
        tokens = context if self.window is None else min(context, self.window)
        return batch * tokens * self.kv_cache_bytes_per_token


def attention_cost(model_or_type: Any = "mha", *, embed_dim: int | None = None,
                   num_heads: int | None = None, num_groups: int | None = None,
                   head_dim: int | None = None, value_dim: int | None = None,
                   use_bias: bool = True, dtype: str | None = None) -> Any:
    """Parameters and KV-cache bytes of attention layers.

    attention_cost(model, dtype=None) -> {layer name: AttentionCost} for every attention layer
    of a Model, in the layer's dtype unless `dtype` is given (e.g. the export dtype).

    attention_cost("mha" | "mqa" | "gqa", embed_dim=, num_heads=, num_groups=None, ...)
    -> AttentionCost of one self-attention layer configured like `ag.get_attention`
    (head_dim defaults to embed_dim / num_heads, value_dim to head_dim; dtype float32).
    """
    from ._model import Model

    c = Checker("attention_cost", None, caller_location())
    if isinstance(model_or_type, Model):
        dtype = None if dtype is None else _float_dtype(c, dtype)
        costs = {}
        for node in model_or_type.nodes:
            cost = layer_cost(model_or_type, node, dtype)
            if cost is not None:
                costs[cost.layer] = cost
        return costs
    from .factory import kv_heads_for

    c.pos_int(embed_dim, "embed_dim")
    c.pos_int(num_heads, "num_heads")
    assert embed_dim is not None and num_heads is not None
    kv = kv_heads_for(c, model_or_type, num_heads, num_groups)
    if head_dim is None:
        if embed_dim % num_heads:
            c.fail(f"num_heads={num_heads} does not divide embed_dim={embed_dim}; pass head_dim=")
        head_dim = embed_dim // num_heads
    c.pos_int(head_dim, "head_dim")
    dv = head_dim if value_dim is None else c.pos_int(value_dim, "value_dim")
    assert dv is not None
    c.flag(use_bias, "use_bias")
    canonical = _float_dtype(c, dtype or "float32")
    count = projection_params(embed_dim, embed_dim, embed_dim, num_heads, kv, head_dim, dv,
                              use_bias)
    return AttentionCost(str(model_or_type), count, kv, head_dim, dv, canonical)


def _float_dtype(c: Checker, dtype: Any) -> str:
    canonical = normalize_dtype(dtype)
    if canonical not in FLOAT_DTYPES:
        c.fail(f"dtype must be one of {list(FLOAT_DTYPES)}, given {dtype!r}")
    return str(canonical)


def projection_params(embed: int, ctx: int, out: int, heads: int, kv: int, head_dim: int,
                      value_dim: int, use_bias: bool) -> int:
    """Weights (and biases) of the query, key, value and output projections."""
    weights = embed * heads * head_dim + ctx * kv * (head_dim + value_dim) \
        + heads * value_dim * out
    biases = heads * head_dim + kv * (head_dim + value_dim) + out
    return weights + (biases if use_bias else 0)


def layer_cost(model: Model, node: Node, dtype: str | None = None) -> AttentionCost | None:
    """The cost of one node, or None when it is not an attention layer."""
    name = model.name_of(node)
    if node.op == "multi_head_attention":
        a = node.attrs
        count = sum(int(np.prod(p.shape)) for p in node.params if p.owner is None)
        return AttentionCost(name, count, a["num_kv_heads"], a["head_dim"], layer_value_dim(a),
                             normalize_dtype(dtype) or node.out_types[0].dtype,
                             a["window"] if isinstance(a["window"], int) else None)
    if node.op == "attention":  # head-split inputs: its projections are layers of their own
        k, v = node.inputs[1], node.inputs[2]
        assert k is not None and v is not None
        window = node.attrs["window"]
        return AttentionCost(name, 0, k.shape[1], k.shape[3], v.shape[3],
                             normalize_dtype(dtype) or node.out_types[0].dtype,
                             window if isinstance(window, int) else None)
    return None
