"""Attention with a key/value cache, for every target (see `_decode.py` for the convention).

The new tokens' keys and values follow the cached ones; one boolean "allow" mask
[B, 1, S, T] (bottom-right causal, sliding window, padding from the attention mask) serves
every form, and rows it leaves without keys (left padding inside the prompt) become zeros.

- "ort": com.microsoft.GroupQueryAttention with past_key / past_value, seqlens_k = T - 1 for
  every row (left padding keeps the buffer rectangular; the bias masks the pads), when
  head_size % 8 == 0 and Dv == D; else the standard op. onnxruntime 1.32's CPU kernel takes
  several new tokens after a non-empty cache only at batch 1 (prompt or one token at a time
  otherwise).
- "ort" with a shared buffer: GroupQueryAttention alone, with seqlens_k = (tokens in the row)
  - 1 and total_sequence_length = T from the attention mask; no bias, no mask tensor of size
  S x T: the op's own causal mask, window and per-row lengths say everything, and it writes
  the new keys and values into the bound buffer in place.
- "onnx": the standard Attention op with past_key / past_value (opset 23), and the same
  fix-up of rows without keys.
- "decomposed": an explicit Concat, then the MatMul / Softmax form.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from ._attention_graph import (
    Attn,
    decomposed_attention,
    from_heads,
    neg_big,
    positional_allow,
    rows_alive,
    to_heads,
    zero_dead_rows,
)
from ._rope import inv_freq, rope_graph, rope_parts

_LAST = np.iinfo(np.int64).max


def cached_attention(b: Any, a: Attn, q: str, k: str, v: str, past_k: str, past_v: str,
                     padding: str, shared: tuple[str, str] | None = None) -> tuple[str, str, str]:
    """q (B, S, Hq*D), new k, v (B, S, Hkv*D), past (B, Hkv, P, D), padding (B, T0) int64
    -> (out (B, S, Hq*Dv), present key, present value (B, Hkv, P+S, D)). `shared` =
    (seqlens_k, total_sequence_length) selects the shared-buffer form (see `_decode.py`)."""
    if shared is not None:
        seqlens, total32 = shared
        return tuple(b.op(  # type: ignore[return-value]
            "GroupQueryAttention", [q, k, v, past_k, past_v, seqlens, total32], outputs=3,
            domain="com.microsoft", tag="GroupQueryAttention", num_heads=a.hq,
            kv_num_heads=a.hkv, scale=a.scale, softcap=a.softcap,
            local_window_size=a.window if isinstance(a.window, int) else None,
        ))
    total = b.op1("Add", [b.dim(past_k, 2), b.dim(q, 1)])  # (1,): T = P + S
    pad = b.op1("Slice", [padding, b.op1("Neg", [total]), b.ints([_LAST]), b.ints([1])])  # (B, T)
    allow = b.op1("And", [
        b.unsqueeze(positional_allow(b, a, q, pad, 1), [0, 1]),  # (1, 1, S, T)
        b.unsqueeze(b.cast(pad, "bool"), [1, 2]),  # (B, 1, 1, T)
    ])  # (B, 1, S, T)
    if b.target == "ort" and a.d % 8 == 0 and a.dv == a.d:
        return _gqa(b, a, q, k, v, past_k, past_v, total, allow)
    if b.target == "decomposed":
        return _concat(b, a, q, k, v, past_k, past_v, allow)
    b.require_opset(23, "the standard Attention op with a key/value cache")
    out, present_k, present_v = b.op(
        "Attention", [q, k, v, allow, past_k, past_v], outputs=3, tag="Attention",
        scale=a.scale, softcap=a.softcap, q_num_heads=a.hq, kv_num_heads=a.hkv,
    )  # its fully masked rows: zeros from onnxruntime 1.30 on, NaN or the mean of V before
    return zero_dead_rows(b, a, rows_alive(b, allow), out, "3d"), present_k, present_v


def _gqa(b: Any, a: Attn, q: str, k: str, v: str, past_k: str, past_v: str, total: str,
         allow: str) -> tuple[str, str, str]:
    batch = b.dim(q, 0)
    seqlens = b.op1("Expand", [b.cast(b.op1("Sub", [total, b.ints([1])]), "int32"), batch])
    bias = b.op1("Where", [allow, b.const(np.array(0.0)), b.const(np.array(neg_big(b)))])
    out, present_k, present_v = b.op(
        "GroupQueryAttention",
        [q, k, v, past_k, past_v, seqlens, b.cast(b.op1("Squeeze", [total]), "int32"),
         "", "", "", bias],
        outputs=3, domain="com.microsoft", tag="GroupQueryAttention", num_heads=a.hq,
        kv_num_heads=a.hkv, scale=a.scale, softcap=a.softcap,
        local_window_size=a.window if isinstance(a.window, int) else None,
    )
    return zero_dead_rows(b, a, rows_alive(b, allow), out, "3d"), present_k, present_v


def _concat(b: Any, a: Attn, q: str, k: str, v: str, past_k: str, past_v: str,
            allow: str) -> tuple[str, str, str]:
    k4 = b.concat([past_k, to_heads(b, k, a.hkv, a.d)], 2)  # (B, Hkv, T, D)
    v4 = b.concat([past_v, to_heads(b, v, a.hkv, a.dv)], 2)  # (B, Hkv, T, Dv)
    # The allow mask already holds causal, window and padding: pass it as a boolean mask.
    plain = replace(a, causal=False, window=None, mask_kind="bool", mask_rank=4, has_kpm=False,
                    same_len=False)
    out, _ = decomposed_attention(b, plain, to_heads(b, q, a.hq, a.d), k4, v4, allow, "", "4d")
    return from_heads(b, out, a.hq, a.dv), k4, v4


def decode_rope(b: Any, ctx: Any, x: str, heads: int, head_dim: int,
                rope: tuple[Any, ...]) -> str:
    """Rotate the new tokens x (B, S, H*D) at ctx.positions (B, S). The cos / sin tables are
    made once per model for just those positions, (B, S, r/2), and shared by every layer's q
    and k (the standard RotaryEmbedding op takes them without position ids); the portable
    form tabulates positions 0 .. T-1 and gathers."""
    rotary_dim, base, interleaved, scaling = rope_parts(rope)
    if b.target == "decomposed" or b.opset < 23:
        return rope_graph(b, x, heads, head_dim, rotary_dim, base, interleaved,
                          (ctx.positions, ctx.padding), scaling)
    key = (rotary_dim, float(base), repr(scaling))
    if key not in ctx.rope_tables:
        layer, b.layer = b.layer, "decoder"  # model-wide tensors read by every layer
        freqs = b.const(inv_freq(rotary_dim, base, scaling).astype(np.float32), "float32")
        pos = b.unsqueeze(b.cast(ctx.positions, "float32"), [2])  # (B, S, 1)
        angles = b.op1("Mul", [pos, freqs], tag="rope_angles")  # (B, S, r/2)
        cos, sin = b.op1("Cos", [angles]), b.op1("Sin", [angles])
        if b.dtype != "float32":
            cos, sin = b.cast(cos, b.dtype), b.cast(sin, b.dtype)
        ctx.rope_tables[key] = (cos, sin)
        b.layer = layer
    cos, sin = ctx.rope_tables[key]
    return b.op1("RotaryEmbedding", [x, cos, sin], tag="RotaryEmbedding",
                 interleaved=int(interleaved), num_heads=heads, rotary_embedding_dim=rotary_dim)


def shared_lengths(b: Any, mask: str) -> tuple[str, str]:
    """(seqlens_k (B,) int32 = tokens per row - 1, total_sequence_length () int32 = T) from
    the attention mask (B, T); built once and read by every layer."""
    count = b.op1("ReduceSum", [mask, b.ints([1])], keepdims=0, tag="seqlens_k")  # (B,)
    seqlens = b.cast(b.op1("Sub", [count, b.const(np.array(1), "int64")]), "int32")
    total = b.cast(b.op1("Squeeze", [b.dim(mask, 1)]), "int32")
    return seqlens, total


def trim_to_window(b: Any, x: str, window: int | None) -> str:
    """Keep the last `window` cached positions of (B, H, T, D) (all of them without a window)."""
    if window is None:
        return x
    return b.op1("Slice", [x, b.ints([-window]), b.ints([_LAST]), b.ints([2])], tag="trim_cache")
