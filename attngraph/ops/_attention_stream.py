"""Attention in step models and for the last query alone (see `_stream_plan.py`).

A streamed layer keeps its keys and values [B, Hkv, P, D] (rotated at their absolute positions
when RoPE is on) and at most `lookback` of them. The chunk's queries sit at the last S of the
T = P + S positions (bottom-right, DESIGN §4):

- "ort": com.microsoft.MultiHeadAttention with past_key / past_value and an additive bias
  when Hq == Hkv and there is no softcap; else the standard op. (GroupQueryAttention's CPU
  kernel takes several new tokens after a non-empty cache only at batch 1, in onnxruntime
  1.32, so a step model that must serve any batch and chunk size cannot use it.)
- "onnx": the standard Attention op with past_key / past_value (opset 23).
- "decomposed": an explicit Concat, then the MatMul / Softmax form.

A last-query layer reads one query (the last frame) against every kept key: no mask at all.
"""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import numpy as np

from ._attention_cache import _concat, trim_to_window
from ._attention_fused import fused_attention
from ._attention_graph import Attn, decomposed_attention, from_heads, neg_big, to_heads

_LAST = np.iinfo(np.int64).max


def lookback(attrs: Any, last_only: bool) -> int | None:
    """How many positions a streamed layer must keep (None: every one). An int window W keeps
    W; a (left, right) window that does not look ahead (right = 0, causal=True, or read at the
    last position only) keeps left + 1."""
    window = attrs["window"]
    if isinstance(window, int):
        return window
    if window is not None and (window[1] == 0 or attrs["causal"] or last_only):
        return int(window[0]) + 1
    return None


def looks_ahead(attrs: Any) -> str | None:
    """Why a layer whose every position is used cannot stream, or None."""
    window = attrs["window"]
    if attrs["causal"] or isinstance(window, int):
        return None
    if window is None:
        return ("bidirectional attention (causal=False) whose later positions are used: its "
                "output at a frame depends on frames after it; use causal=True or an int "
                "window, or read it only through position-wise layers and last_timestep")
    if window[1] > 0:
        return (f"window {tuple(window)} looks {window[1]} frame(s) ahead; a step model only "
                "sees frames up to the current one (use right = 0, or an int window)")
    return None


def stream_check(node: Any, last_only: bool) -> str | None:
    """Why a multi_head_attention node cannot stream, or None."""
    if node.inputs[1] is not None:
        return "cross-attention reads a context that is not streamed; a step model runs " \
               "self-attention only"
    if node.inputs[2] is not None or node.inputs[3] is not None:
        return "a key_padding_mask or mask input cannot follow a stream (every frame is real)"
    if node.attrs["return_weights"]:
        return "return_weights is for inspection; stream the model without it"
    return None if last_only else looks_ahead(node.attrs)


def stream_state(node: Any, last_only: bool) -> dict[str, tuple[Any, ...]]:
    """The key / value caches of a streamed multi_head_attention node."""
    keep = lookback(node.attrs, last_only)
    length = "past" if keep is None else f"past_w{keep}"
    kv, d = node.attrs["num_kv_heads"], node.attrs["head_dim"]
    dv = int(node.attrs.get("value_dim", d))
    return {"key": ("batch", kv, length, d), "value": ("batch", kv, length, dv)}


def stream_positions(b: Any, ctx: Any, x: str) -> Any:
    """For the standard RotaryEmbedding op (opset 23, not "decomposed"): the chunk's
    positions (B, S) and a table cache, made once per step model, in the form the decoder's
    rotation reads (`decode_rope`: cos / sin at just these positions, shared by every layer's
    q and k); None where the rotation tabulates from an offset instead."""
    if b.target == "decomposed" or b.opset < 23:
        return None
    if "rope" not in ctx.shared:
        layer, b.layer = b.layer, "stream"
        start = b.op1("Squeeze", [ctx.frames])
        stop = b.op1("Add", [start, b.op1("Squeeze", [b.dim(x, 1)])])
        pos = b.op1("Range", [start, stop, b.const(np.array(1), "int64")])  # (S,)
        pos = b.op1("Expand", [b.unsqueeze(pos, [0]), b.concat([b.dim(x, 0), b.dim(x, 1)], 0)],
                    tag="positions")  # (B, S)
        ctx.shared["rope"] = SimpleNamespace(positions=pos, padding=None, rope_tables={})
        b.layer = layer
    return ctx.shared["rope"]


def slice_last(b: Any, x: str) -> str:
    """x [B, S, ...] -> [B, 1, ...]: the last position."""
    return b.op1("Slice", [x, b.ints([-1]), b.ints([_LAST]), b.ints([1])], tag="last_query")


def keep_last(b: Any, x: str, count: int | None, axis: int) -> str:
    if count is None:
        return x
    return b.op1("Slice", [x, b.ints([-count]), b.ints([_LAST]), b.ints([axis])], tag="keep")


def _stream_allow(b: Any, a: Attn, q: str, past: str) -> str:
    """Bool (1, 1, S, T): query i (position P + i) attends key j <= P + i (and > P + i - W)."""
    zero, one = b.const(np.array(0), "int64"), b.const(np.array(1), "int64")
    p = b.op1("Squeeze", [b.dim(past, 2)])
    t = b.op1("Add", [p, b.op1("Squeeze", [b.dim(q, 1)])])
    diff = b.op1("Sub", [b.unsqueeze(b.op1("Range", [zero, t, one]), [0]),
                         b.unsqueeze(b.op1("Range", [p, t, one]), [1])])  # (S, T): j - p_i
    allow = b.op1("LessOrEqual", [diff, zero])
    if isinstance(a.window, int):
        allow = b.op1("And", [allow, b.op1("Greater", [diff, b.const(np.array(-a.window),
                                                                      "int64")])])
    return b.unsqueeze(allow, [0, 1])


def stream_attention(b: Any, a: Attn, q: str, k: str, v: str, past_k: str, past_v: str,
                     keep: int | None, shared: dict[Any, str]) -> tuple[str, str, str]:
    """q (B, S, Hq*D), new k, v (B, S, Hkv*D), past (B, Hkv, P, D) -> (out (B, S, Hq*Dv),
    present key, value (B, Hkv, min(P + S, keep), D)). Masks are built once per step model
    for each kept length (`shared`): every layer keeping as many positions sees the same."""
    a = replace(a, causal=True, window=keep, same_len=False, mask_kind="bool", mask_rank=4,
                has_kpm=False, return_weights=False, cross=False, rope=None)
    if ("allow", keep) not in shared:
        shared[("allow", keep)] = _stream_allow(b, a, q, past_k)
    allow = shared[("allow", keep)]
    if b.target == "ort" and a.hq == a.hkv and a.softcap is None and a.dv == a.d:
        if ("bias", keep) not in shared:
            shared[("bias", keep)] = b.op1("Where", [allow, b.const(np.array(0.0)),
                                                     b.const(np.array(neg_big(b)))])
        bias = shared[("bias", keep)]
        out, present_k, present_v = b.op(
            "MultiHeadAttention", [q, k, v, "", "", bias, past_k, past_v], outputs=3,
            domain="com.microsoft", tag="MultiHeadAttention", num_heads=a.hq, scale=a.scale)
    elif b.target != "decomposed" and b.opset >= 23:
        out, present_k, present_v = b.op(
            "Attention", [q, k, v, allow, past_k, past_v], outputs=3, tag="Attention",
            scale=a.scale, softcap=a.softcap, q_num_heads=a.hq, kv_num_heads=a.hkv)
    else:
        out, present_k, present_v = _concat(b, a, q, k, v, past_k, past_v, allow)
    return out, trim_to_window(b, present_k, keep), trim_to_window(b, present_v, keep)


def last_query_attention(b: Any, a: Attn, q: str, k: str, v: str, kv_layout: str) -> str:
    """One query q (B, 1, Hq*D) against every key k, v: (B, T, Hkv*D) ("3d") or
    (B, Hkv, T, D) ("4d"); no mask. Output (B, 1, Hq*Dv)."""
    a = replace(a, causal=False, window=None, same_len=False, mask_kind=None, mask_rank=0,
                has_kpm=False, return_weights=False, cross=True, rope=None)
    if b.target == "ort" and a.hq == a.hkv and a.softcap is None and a.dv == a.d:
        # MultiHeadAttention takes keys and values in either layout as they are.
        return b.op1("MultiHeadAttention", [q, k, v], domain="com.microsoft",
                     tag="MultiHeadAttention", num_heads=a.hq, scale=a.scale)
    q4 = to_heads(b, q, a.hq, a.d)  # (B, Hq, 1, D)
    if kv_layout == "3d":
        k, v = to_heads(b, k, a.hkv, a.d), to_heads(b, v, a.hkv, a.dv)  # (B, Hkv, T, D)
    if b.target == "decomposed" or b.opset < 23:
        out, _ = decomposed_attention(b, a, q4, k, v, "", "", "4d")
    else:
        out = fused_attention(b, a, q4, k, v, "", "", "4d")
    return from_heads(b, out, a.hq, a.dv)  # (B, 1, Hq*Dv)


def stream_last_query(b: Any, a: Attn, q: str, k: str, v: str, past_k: str, past_v: str,
                      keep: int | None) -> tuple[str, str, str]:
    """The chunk's last query against the kept keys and the chunk's: (out (B, 1, Hq*Dv),
    present key, value)."""
    k4 = keep_last(b, b.concat([past_k, to_heads(b, k, a.hkv, a.d)], 2), keep, 2)
    v4 = keep_last(b, b.concat([past_v, to_heads(b, v, a.hkv, a.dv)], 2), keep, 2)
    return last_query_attention(b, a, q, k4, v4, "4d"), k4, v4
