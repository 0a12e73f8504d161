"""Fused attention lowerings: onnxruntime's contrib ops ("ort") and the standard op ("onnx").

Each fused op is used only where its semantics fit DESIGN §4 exactly; the rest is expressed
with an explicit mask and, where rows can be fully masked, a fix-up that writes zeros (see
`_attention_graph.py`). Facts measured on onnxruntime 1.32 CPU that shape these choices:

- MultiHeadAttention: masks with -10000 (a fully padded row becomes unmasked attention) and
  its `unidirectional` is aligned neither way when Sq < Sk; a -inf bias gives NaN rows. So
  attngraph feeds an additive bias of the dtype's minimum, uses `unidirectional` only when
  Sq == Sk, and zeroes dead rows itself. No softcap, no GQA.
- GroupQueryAttention: self-attention only (Sq == Sk without a cache), head_size % 8 == 0,
  Dv == D; causal only: onnxruntime before 1.30 knows no `causal` attribute (default 1), so
  attngraph never writes it and sends non-causal layers and (left, right) bands to the other
  ops; `local_window_size` W = the last W keys including the query (our int window),
  only with causal; softcap is applied before the bias and the causal mask, as DESIGN §4
  wants; `attention_bias` [B|1, H|1, Sq, Sk].
- Attention (opset 23): causal is top-left when Sq != Sk without a cache, so `is_causal` is
  used only when Sq == Sk; softcap comes before masking; the mask's query axis must be full
  length. Fully masked rows (bool False or -inf) give zeros on 1.30 and newer but NaN or the
  mean of V before, so attngraph zeroes them itself there too.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._attention_blocked import threshold
from ._attention_graph import (
    Attn,
    additive_bias,
    alive_from_padding,
    allow_mask,
    expand_rows,
    from_heads,
    neg_big,
    positional_allow,
    rows_alive,
    to_heads,
    zero_dead_rows,
)
from ._rope import rope_cache, rope_parts


def fused_attention(b: Any, a: Attn, q: str, k: str, v: str, mask: str, kpm: str,
                    layout: str) -> str:
    """One fused attention node (plus mask helpers); output in the input `layout`."""
    if b.target == "ort":
        if _gqa_fits(a):
            return _in_3d(b, a, q, k, v, layout, lambda q3, k3, v3: _ms_gqa(b, a, q3, k3, v3,
                                                                             mask, kpm))
        if a.softcap is None and a.hkv == a.hq:
            return _in_3d(b, a, q, k, v, layout, lambda q3, k3, v3: _ms_mha(b, a, q3, k3, v3,
                                                                             mask, kpm))
    return _standard(b, a, q, k, v, mask, kpm, layout)


def _gqa_fits(a: Attn) -> bool:
    """GroupQueryAttention serves causal self-attention, with or without a sliding window, with
    head_size % 8 == 0 and Dv == D (its non-causal mode needs onnxruntime >= 1.30)."""
    if not a.same_len or a.cross or a.d % 8 or a.dv != a.d:
        return False
    return isinstance(a.window, int) or (a.causal and a.window is None)


def rope_is_fused(a: Attn) -> bool:
    """GroupQueryAttention rotates q and k itself (`do_rotary`) when RoPE covers the whole
    head and head_size % 16 == 0; otherwise RoPE is applied before the attention node."""
    return a.rope is not None and a.rope[0] == a.d and a.d % 16 == 0 and not a.cross


def uses_fused_rope(b: Any, a: Attn) -> bool:
    """Whether the layer's GroupQueryAttention node rotates q and k (never in the blocked form,
    whose blocks do not start at position 0)."""
    return (b.target == "ort" and rope_is_fused(a) and _gqa_fits(a)
            and threshold(b, a) is None)


def _in_3d(b: Any, a: Attn, q: str, k: str, v: str, layout: str, fn: Any) -> str:
    """Run a [B, S, H*D] contrib op on tensors given in `layout`."""
    if layout == "3d":
        return fn(q, k, v)
    out = fn(from_heads(b, q, a.hq, a.d), from_heads(b, k, a.hkv, a.d),
             from_heads(b, v, a.hkv, a.dv))  # (B, Sq, H*Dv)
    return to_heads(b, out, a.hq, a.dv)  # (B, H, Sq, Dv)


def _fix_rows(b: Any, a: Attn, out: str, allow: str | None, q: str, k: str,
              native_positional: bool) -> str:
    """Zero the rows that mask and position together leave without keys (the contrib ops
    would average over every key there instead)."""
    if allow is None or not a.can_fully_mask:
        return out
    if native_positional and a.mask_kind is None:
        # Only padding besides the op's own causal/window: count the valid keys in each
        # row's range from a running sum over the padding mask, O(B * S) instead of O(S^2).
        return zero_dead_rows(b, a, alive_from_padding(b, a, allow, q, k), out, "3d")
    if native_positional:  # the op applied causal/window itself; the dead rows need it too
        allow = b.op1("And", [allow, b.unsqueeze(positional_allow(b, a, q, k, 1), [0, 1])])
    return zero_dead_rows(b, a, rows_alive(b, allow), out, "3d")


def _ms_gqa(b: Any, a: Attn, q: str, k: str, v: str, mask: str, kpm: str) -> str:
    """com.microsoft.GroupQueryAttention on (B, S, H*D) tensors, no cache."""
    native_window = isinstance(a.window, int)
    allow = allow_mask(b, a, q, k, mask, kpm, 1, positional=False)  # the op is causal itself
    seq = b.dim(q, 1)  # (1,) int64
    batch = b.dim(q, 0)
    seqlens = b.op1("Expand", [b.cast(b.op1("Sub", [seq, b.ints([1])]), "int32"), batch])
    total = b.cast(b.op1("Squeeze", [seq]), "int32")
    inputs = [q, k, v, "", "", seqlens, total, "", ""]
    rotary = rope_is_fused(a)
    if rotary:
        assert a.rope is not None
        inputs[7:9] = rope_cache(b, q, a.rope[0], a.rope[1], rope_parts(a.rope)[3])  # (S, D/2)
    if allow is not None:
        inputs += ["", additive_bias(b, a, expand_rows(b, allow, q, k, 1), mask)]
    out = b.op(
        "GroupQueryAttention", inputs, outputs=3, domain="com.microsoft",
        tag="GroupQueryAttention", num_heads=a.hq, kv_num_heads=a.hkv, scale=a.scale,
        softcap=a.softcap,
        local_window_size=a.window if native_window else None,
        do_rotary=int(rotary) if rotary else None,
        rotary_interleaved=int(a.rope[2]) if rotary and a.rope else None,
    )[0]
    return _fix_rows(b, a, out, allow, q, k, True)


def _ms_mha(b: Any, a: Attn, q: str, k: str, v: str, mask: str, kpm: str) -> str:
    """com.microsoft.MultiHeadAttention on (B, S, H*D): Hq == Hkv, no softcap."""
    native_causal = a.causal and a.window is None and a.same_len
    allow = allow_mask(b, a, q, k, mask, kpm, 1, positional=not native_causal)
    inputs = [q, k, v, "", ""]
    filter_value = None
    if allow is not None and a.mask_kind is None and (native_causal or not a.positional):
        # Padding only: the op's own key_padding_mask, with the dtype's minimum as its mask
        # value (a hard mask), avoids building an [B, 1, Sq, Sk] bias.
        inputs[4] = b.cast(kpm, "int32")
        filter_value = neg_big(b)
    elif allow is not None:
        inputs.append(additive_bias(b, a, expand_rows(b, allow, q, k, 1), mask))
    out = b.op1("MultiHeadAttention", inputs, domain="com.microsoft", tag="MultiHeadAttention",
                num_heads=a.hq, scale=a.scale, unidirectional=int(native_causal),
                mask_filter_value=filter_value)
    return _fix_rows(b, a, out, allow, q, k, native_causal)


def _standard(b: Any, a: Attn, q: str, k: str, v: str, mask: str, kpm: str,
              layout: str) -> str:
    """The standard ONNX Attention op (opset 23), then zeros in fully masked rows."""
    b.require_opset(23, "the standard Attention op")
    seq_axis = 1 if layout == "3d" else 2
    native_causal = a.causal and a.window is None and a.same_len
    allow = allow_mask(b, a, q, k, mask, kpm, seq_axis, positional=not native_causal)
    inputs = [q, k, v]
    if allow is not None:
        allow = expand_rows(b, allow, q, k, seq_axis)
        inputs.append(allow)
        if a.mask_kind == "float":
            lead = list(range(4 - a.mask_rank))
            user = b.unsqueeze(mask, lead) if lead else mask
            inputs[3] = b.op1("Where", [allow, user, b.const(np.array(-np.inf))])
    heads = {"q_num_heads": a.hq, "kv_num_heads": a.hkv} if layout == "3d" else {}
    out = b.op1("Attention", inputs, tag="Attention", scale=a.scale,
                is_causal=int(native_causal), softcap=a.softcap, **heads)
    if allow is None or not a.can_fully_mask:
        return out
    # onnxruntime before 1.30 gives NaN or the mean of V in fully masked rows
    if native_causal:
        allow = b.op1("And", [allow, b.unsqueeze(positional_allow(b, a, q, k, seq_axis), [0, 1])])
    return zero_dead_rows(b, a, rows_alive(b, allow), out, layout)
