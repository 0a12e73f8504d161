"""Attention ops: `attention` (scaled dot-product on head-split tensors) and
`multi_head_attention` (projections + attention + output projection, one node).

Shape rules and numpy references live here; the graph forms live in `_attention_graph.py`
(portable) and `_attention_fused.py` (onnxruntime contrib ops and the standard op).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from .._decode import looks_ahead
from .._registry import DecodeForms, StreamForms, register
from .._types import TensorType, same_dim
from ._attention_blocked import blocked_attention, threshold
from ._attention_cache import cached_attention, decode_rope, trim_to_window
from ._attention_fused import fused_attention, uses_fused_rope
from ._attention_graph import Attn, decomposed_attention
from ._attention_masks import array_shape, check_masks, masks_problem
from ._attention_math import attention_reference, merge_heads, split_heads
from ._attention_stream import (
    keep_last,
    last_query_attention,
    lookback,
    slice_last,
    stream_attention,
    stream_check,
    stream_last_query,
    stream_positions,
    stream_state,
)
from ._rope import rope_graph, rope_parts, rope_reference
from ._shapes import Fail, need_float


def attn_facts(node: Any, same_len: bool, hq: int, hkv: int, d: int, dv: int) -> Attn:
    a, mask, kpm = node.attrs, node.inputs[-1], node.inputs[-2]
    return Attn(
        hq=hq, hkv=hkv, d=d, dv=dv, causal=a["causal"], window=a["window"], scale=a["scale"],
        softcap=a["softcap"],
        mask_kind=None if mask is None else ("bool" if mask.dtype == "bool" else "float"),
        mask_rank=0 if mask is None else mask.type.rank,
        has_kpm=kpm is not None, kpm_bool=kpm is not None and kpm.dtype == "bool",
        same_len=same_len, return_weights=a["return_weights"], cross=not same_len,
        mask_shape=() if mask is None else tuple(mask.type.shape),
    )


def _core(b: Any, a: Attn, q: str, k: str, v: str, mask: str, kpm: str,
          layout: str) -> list[str]:
    above = threshold(b, a)
    if above is not None:  # sliding window: O(S·W) blocked form (DESIGN §8)
        return [blocked_attention(b, a, q, k, v, mask, kpm, layout, above)]
    if b.target == "decomposed":
        out, weights = decomposed_attention(b, a, q, k, v, mask, kpm, layout)
        return [out, weights] if a.return_weights else [out]
    out = fused_attention(b, a, q, k, v, mask, kpm, layout)
    if not a.return_weights:
        return [out]
    # Fused ops do not return their weights; inspection gets them from the portable form.
    _, weights = decomposed_attention(b, a, q, k, v, mask, kpm, layout)
    return [out, weights]


# -- attention (head-split tensors) ----------------------------------------------------------


def _sdpa_infer(types: list[Any], attrs: Any, fail: Fail) -> list[TensorType]:
    q, k, v, kpm, mask = types
    for t, what in ((q, "q"), (k, "k"), (v, "v")):
        need_float(t, what, fail)
        if t.rank != 4:
            fail(f"{what} must be [batch, heads, seq, head_dim], given {t}")
    if not q.dtype == k.dtype == v.dtype:
        fail(f"q, k, v must share a dtype, given {q}, {k}, {v}")
    (bq, hq, sq, dq), (bk, hk, sk, dk), (bv, hv, sv, dv) = q.shape, k.shape, v.shape
    if same_dim(bq, bk) is False or same_dim(bq, bv) is False:
        fail(f"q, k, v batch sizes differ: {q}, {k}, {v}")
    if same_dim(dq, dk) is False:
        fail(f"q and k head_dim differ: q {q}, k {k}")
    if same_dim(hk, hv) is False or same_dim(sk, sv) is False:
        fail(f"k and v must share heads and seq: k {k}, v {v}")
    if not all(isinstance(x, int) for x in (hq, hk, dq, dv)):
        fail(f"heads and head_dim must be static ints, given q {q}, k {k}, v {v}")
    if hq % hk:
        fail(f"kv heads ({hk}) must divide query heads ({hq}): q {q}, k {k}")
    check_masks(mask, kpm, bq, hq, sq, sk, fail)
    out = [q.with_shape((bq, hq, sq, dv))]
    if attrs["return_weights"]:
        out.append(q.with_shape((bq, hq, sq, sk)))
    return out


def _sdpa_ref(attrs: Any, p: Any, q: np.ndarray, k: np.ndarray, v: np.ndarray,
              kpm: np.ndarray | None, mask: np.ndarray | None) -> tuple[np.ndarray, ...]:
    out, weights = attention_reference(
        q, k, v, mask=mask, key_padding_mask=kpm, causal=attrs["causal"],
        window=attrs["window"], scale=attrs["scale"], softcap=attrs["softcap"],
        return_weights=attrs["return_weights"],
    )
    return (out, weights) if weights is not None and attrs["return_weights"] else (out,)


def _sdpa_lower(b: Any, node: Any, ins: list[str]) -> list[str]:
    q, k, v = (t.type for t in node.inputs[:3])
    same = same_dim(q.shape[2], k.shape[2]) is True
    a = attn_facts(node, same, q.shape[1], k.shape[1], q.shape[3], v.shape[3])
    q_in, k_in, v_in, kpm, mask = ins
    return _core(b, a, q_in, k_in, v_in, mask, kpm, "4d")


def _sdpa_check(attrs: Any, q: np.ndarray, k: np.ndarray, v: np.ndarray,
                kpm: np.ndarray | None, mask: np.ndarray | None) -> str | None:
    return masks_problem(q.shape[0], q.shape[1], q.shape[2], k.shape[2], array_shape(kpm),
                         array_shape(mask))


register("attention", infer=_sdpa_infer, reference=_sdpa_ref, decomposed=_sdpa_lower,
         ort=_sdpa_lower, onnx=_sdpa_lower, check=_sdpa_check)

# -- multi-head attention (one node, with its projections) -----------------------------------


def value_dim(attrs: Any) -> int:
    """Width Dv of a multi_head_attention layer's value heads (head_dim unless set)."""
    return int(attrs.get("value_dim", attrs["head_dim"]))


def _mha_infer(types: list[Any], attrs: Any, fail: Fail) -> list[TensorType]:
    x, ctx, kpm, mask = types
    need_float(x, "input", fail)
    if x.rank != 3 or x.shape[2] != attrs["embed_dim"]:
        fail(f"expected input [batch, seq, {attrs['embed_dim']}], given {x}")
    src = x if ctx is None else ctx
    if ctx is not None:
        need_float(ctx, "context", fail)
        if ctx.rank != 3 or ctx.shape[2] != attrs["context_dim"] or ctx.dtype != x.dtype:
            fail(f"expected context [batch, kv_seq, {attrs['context_dim']}] of {x.dtype}, "
                 f"given {ctx}")
        if same_dim(ctx.shape[0], x.shape[0]) is False:
            fail(f"input and context batch sizes differ: {x} and {ctx}")
    check_masks(mask, kpm, x.shape[0], attrs["num_heads"], x.shape[1], src.shape[1], fail)
    out = [x.with_shape((x.shape[0], x.shape[1], attrs["out_dim"]))]
    if attrs["return_weights"]:
        out.append(x.with_shape((x.shape[0], attrs["num_heads"], x.shape[1], src.shape[1])))
    return out


def _heads_ref(attrs: Any, p: dict[str, np.ndarray], x: np.ndarray, src: np.ndarray,
               positions: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """Projected, normalised and rotated q (B, Hq, Sq, D), k, v (B, Hkv, Sk, D)."""
    q = split_heads(_dense(p, x, "query"), attrs["num_heads"])  # (B, Hq, Sq, D)
    k = split_heads(_dense(p, src, "key"), attrs["num_kv_heads"])  # (B, Hkv, Sk, D)
    v = split_heads(_dense(p, src, "value"), attrs["num_kv_heads"])  # (B, Hkv, Sk, D)
    if attrs["qk_layernorm"]:
        q, k = _head_norm(q, p, "q_norm"), _head_norm(k, p, "k_norm")
    if attrs["rope"] is not None:
        rotary_dim, base, interleaved, scaling = rope_parts(attrs["rope"])
        q = rope_reference(q, rotary_dim, base, interleaved, positions, scaling)
        k = rope_reference(k, rotary_dim, base, interleaved, positions, scaling)
    return q, k, v


def _dense(p: dict[str, np.ndarray], t: np.ndarray, name: str) -> np.ndarray:
    y = t @ p[f"{name}.kernel"]
    return y + p[f"{name}.bias"] if f"{name}.bias" in p else y


def _mha_ref(attrs: Any, p: dict[str, np.ndarray], x: np.ndarray, ctx: np.ndarray | None,
             kpm: np.ndarray | None, mask: np.ndarray | None) -> tuple[np.ndarray, ...]:
    q, k, v = _heads_ref(attrs, p, x, x if ctx is None else ctx)
    out, weights = attention_reference(
        q, k, v, mask=mask, key_padding_mask=kpm, causal=attrs["causal"],
        window=attrs["window"], scale=attrs["scale"], softcap=attrs["softcap"],
        return_weights=attrs["return_weights"],
    )
    y = _dense(p, merge_heads(out), "output")  # (B, Sq, Hq*D) -> (B, Sq, out_dim)
    return (y, weights) if weights is not None and attrs["return_weights"] else (y,)


def _head_norm(x: np.ndarray, p: dict[str, np.ndarray], name: str) -> np.ndarray:
    """Layer norm of each head vector (B, H, S, D) over D, eps 1e-5 (qk_layernorm)."""
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * p[f"{name}.scale"] + p[f"{name}.bias"]


def _head_norm_graph(b: Any, x: str, heads: int, dim: int, name: str) -> str:
    x4 = b.reshape(x, [0, 0, heads, dim])  # (B, S, H, D)
    y = b.op1("LayerNormalization", [x4, b.param(f"{name}.scale"), b.param(f"{name}.bias")],
              axis=-1, epsilon=1e-5, tag=f"{name}/LayerNormalization")
    return b.reshape(y, [0, 0, heads * dim])  # (B, S, H*D)


def _project_graph(b: Any, node: Any, x: str, src: str,
                   decode: Any = None,
                   offsets: tuple[str, str] | None = None) -> tuple[str, str, str, Attn]:
    """Projected q (B, Sq, Hq*D), k, v (B, Sk, Hkv*D) (normalised, rotated unless the fused
    op rotates them) and the layer's attention facts. `offsets`: q and k sit at positions
    offset .. offset+S-1 ((1,) int64 tensors; streaming and last-query forms)."""
    attrs = node.attrs
    x_type, ctx_value = node.inputs[0].type, node.inputs[1]
    same = ctx_value is None
    hq, hkv, d = attrs["num_heads"], attrs["num_kv_heads"], attrs["head_dim"]
    a = attn_facts(node, same or same_dim(x_type.shape[1], ctx_value.type.shape[1]) is True,
                   hq, hkv, d, value_dim(attrs))
    a = replace(a, cross=not same, rope=attrs["rope"])

    q, k, v = (_dense_graph(b, node, t, name)
               for t, name in ((x, "query"), (src, "key"), (src, "value")))  # (B, S, H*D)
    if attrs["qk_layernorm"]:
        q = _head_norm_graph(b, q, hq, d, "q_norm")
        k = _head_norm_graph(b, k, hkv, d, "k_norm")
    if a.rope is not None and decode is not None:  # the new tokens at their positions
        q = decode_rope(b, decode, q, hq, d, a.rope)
        k = decode_rope(b, decode, k, hkv, d, a.rope)
    elif a.rope is not None and (offsets is not None or not uses_fused_rope(b, a)):
        rotary_dim, base, interleaved, scaling = rope_parts(a.rope)
        q_at, k_at = offsets or (None, None)
        q = rope_graph(b, q, hq, d, rotary_dim, base, interleaved, None, scaling, q_at)
        k = rope_graph(b, k, hkv, d, rotary_dim, base, interleaved, None, scaling, k_at)
    return q, k, v, a


def _dense_graph(b: Any, node: Any, t: str, name: str) -> str:
    """One of the layer's dense sub-layers (query, key, value, output) applied to t."""
    y = b.op1("MatMul", [t, b.param(f"{name}.kernel")], tag=f"{name}/MatMul")
    use_bias = node.attrs["use_bias"]
    if name == "output":  # Qwen2: biased q/k/v, unbiased output ("output_bias" only if it differs)
        use_bias = node.attrs.get("output_bias", use_bias)
    if use_bias:
        y = b.op1("Add", [y, b.param(f"{name}.bias")], tag=f"{name}/Add")
    return y


def _mha_lower(b: Any, node: Any, ins: list[str]) -> list[str]:
    x, ctx, kpm, mask = ins
    q, k, v, a = _project_graph(b, node, x, ctx or x)
    outs = _core(b, a, q, k, v, mask, kpm, "3d")
    return [_dense_graph(b, node, outs[0], "output"), *outs[1:]]


# -- multi-head attention with a key/value cache (see `_decode.py`) ---------------------------


def _mha_decode_check(node: Any) -> str | None:
    attrs = node.attrs
    if node.inputs[1] is not None:
        return "cross-attention keeps no growing cache; only self-attention decodes with one"
    if node.inputs[2] is not None or node.inputs[3] is not None:
        return ("a key_padding_mask or mask input cannot follow cached decoding; the cached "
                "model takes attention_mask [batch, total_seq] instead")
    if looks_ahead(attrs):
        return ("attention must be causal (causal=True, or an int window) to decode with a "
                "cache")
    if attrs["window"] is not None and not isinstance(attrs["window"], int):
        return (f"a (left, right) window {attrs['window']} cannot be cached; use an int "
                "window (the last K positions)")
    if attrs["return_weights"]:
        return "return_weights is for inspection; export without it to decode with a cache"
    if value_dim(attrs) != attrs["head_dim"]:
        return (f"value_dim={value_dim(attrs)} differs from head_dim={attrs['head_dim']}; the "
                "cache layout holds one head size for keys and values")
    return None


def _mha_cache(node: Any) -> tuple[int, int, int | None]:
    return node.attrs["num_kv_heads"], node.attrs["head_dim"], node.attrs["window"]


def _mha_decode_ref(attrs: Any, p: dict[str, np.ndarray], ctx: Any, node: Any, x: np.ndarray,
                    *_: Any) -> tuple[np.ndarray]:
    q, k, v = _heads_ref(attrs, p, x, x, ctx.positions)  # new tokens (B, H, S, D)
    past_k, past_v = ctx.past[ctx.index[node]]
    k = np.concatenate([past_k, k], axis=2)  # (B, Hkv, P+S, D)
    v = np.concatenate([past_v, v], axis=2)
    out, _weights = attention_reference(
        q, k, v, key_padding_mask=ctx.padding[:, -k.shape[2]:], causal=True,
        window=attrs["window"], scale=attrs["scale"], softcap=attrs["softcap"],
    )
    window = attrs["window"]
    ctx.present[ctx.index[node]] = (k, v) if window is None else (k[:, :, -window:],
                                                                  v[:, :, -window:])
    return (_dense(p, merge_heads(out), "output"),)  # (B, S, out_dim)


def _mha_decode_lower(b: Any, node: Any, ins: list[str], ctx: Any) -> list[str]:
    q, k, v, a = _project_graph(b, node, ins[0], ins[0], ctx)
    a = replace(a, same_len=False, has_kpm=True, kpm_bool=False)
    past_k, past_v = ctx.past[ctx.index[node]]
    out, present_k, present_v = cached_attention(b, a, q, k, v, past_k, past_v, ctx.padding,
                                                 ctx.shared)
    window = None if ctx.shared is not None else node.attrs["window"]  # shared: op's window
    ctx.present[ctx.index[node]] = (trim_to_window(b, present_k, window),
                                    trim_to_window(b, present_v, window))
    return [_dense_graph(b, node, out, "output")]


# -- multi-head attention in step models and for the last query (see `_stream_plan.py`) -------


def _mha_stream_ref(attrs: Any, p: dict[str, np.ndarray], ctx: Any, node: Any, x: np.ndarray,
                    *_: Any) -> tuple[np.ndarray]:
    last, keep = ctx.last_only(node), lookback(attrs, ctx.last_only(node))
    positions = np.broadcast_to(ctx.positions, x.shape[:2])  # (B, S)
    q, k, v = _heads_ref(attrs, p, x, x, positions)  # (B, H, S, D), rotated where they sit
    key, value = ctx.key(node, "key"), ctx.key(node, "value")
    k = np.concatenate([ctx.state[key], k], axis=2)  # (B, Hkv, P+S, D)
    v = np.concatenate([ctx.state[value], v], axis=2)
    out, _w = attention_reference(q[:, :, -1:] if last else q, k, v, causal=True, window=keep,
                                  scale=attrs["scale"], softcap=attrs["softcap"])
    if keep is not None:
        k, v = k[:, :, -keep:], v[:, :, -keep:]
    ctx.new_state[key], ctx.new_state[value] = k.astype(np.float32), v.astype(np.float32)
    return (_dense(p, merge_heads(out), "output"),)  # (B, S or 1, out_dim)


def _mha_stream_lower(b: Any, node: Any, ins: list[str], ctx: Any) -> list[str]:
    x, last = ins[0], ctx.last_only(node)
    keep = lookback(node.attrs, last)
    rope = node.attrs["rope"] is not None
    rotate = stream_positions(b, ctx, x) if rope and not last else None
    offsets = None
    if rope and rotate is None:  # q and k rotated where they sit in the stream
        q_at = b.op1("Sub", [b.op1("Add", [ctx.frames, b.dim(x, 1)]), b.ints([1])]) if last \
            else ctx.frames
        offsets = (q_at, ctx.frames)
    q, k, v, a = _project_graph(b, node, slice_last(b, x) if last else x, x, rotate, offsets)
    past = ctx.state[ctx.key(node, "key")], ctx.state[ctx.key(node, "value")]
    if last:
        out, present_k, present_v = stream_last_query(b, a, q, k, v, *past, keep)
    else:
        out, present_k, present_v = stream_attention(b, a, q, k, v, *past, keep, ctx.shared)
    ctx.new_state[ctx.key(node, "key")] = present_k
    ctx.new_state[ctx.key(node, "value")] = present_v
    return [_dense_graph(b, node, out, "output")]


def _mha_last_query(b: Any, node: Any, ins: list[str]) -> list[str]:
    """The output at the last position only: one query against the last `lookback` keys."""
    x, keep = ins[0], lookback(node.attrs, True)
    keys = keep_last(b, x, keep, 1)  # (B, min(S, keep), E)
    offsets = None
    if node.attrs["rope"] is not None:  # q at S - 1, the keys at S - len .. S - 1
        seq = b.dim(x, 1)
        start = b.ints([0]) if keep is None else \
            b.op1("Max", [b.op1("Sub", [seq, b.ints([keep])]), b.ints([0])])
        offsets = (b.op1("Sub", [seq, b.ints([1])]), start)
    q, k, v, a = _project_graph(b, node, slice_last(b, x), keys, offsets=offsets)
    out = last_query_attention(b, a, q, k, v, "3d")
    return [_dense_graph(b, node, out, "output")]


def _mha_check(attrs: Any, x: np.ndarray, ctx: np.ndarray | None, kpm: np.ndarray | None,
               mask: np.ndarray | None) -> str | None:
    src = x if ctx is None else ctx
    return masks_problem(x.shape[0], attrs["num_heads"], x.shape[1], src.shape[1], array_shape(kpm),
                         array_shape(mask))


register("multi_head_attention", infer=_mha_infer, reference=_mha_ref, decomposed=_mha_lower,
         ort=_mha_lower, onnx=_mha_lower, check=_mha_check,
         decode=DecodeForms(_mha_decode_ref, _mha_decode_lower, _mha_decode_check, _mha_cache),
         stream=StreamForms(stream_check, stream_state, _mha_stream_ref,
                            _mha_stream_lower, _mha_last_query))
