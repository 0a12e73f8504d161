"""Fused attention lowerings: onnxruntime's contrib ops ("ort") and the standard op ("onnx").

Each fused op is used only where its semantics fit DESIGN §4 exactly; the rest is expressed
with an explicit mask and a fully-masked-row fix-up (see `_attention_graph.py`), or refused
with a clear error. Traps handled here (measured on onnxruntime 1.32 CPU):
- MultiHeadAttention masks with -10000 and turns fully masked rows into unmasked attention;
  its `unidirectional` is aligned neither way when Sq < Sk. attngraph never uses its padding
  mask or `unidirectional` unless Sq == Sk, and feeds an additive bias instead.
- The standard Attention op aligns causal top-left when Sq != Sk and applies softcap after the
  mask; attngraph uses `is_causal` only when Sq == Sk and refuses softcap together with masks.
"""

from __future__ import annotations

from typing import Any

from ._attention_graph import (
    Attn,
    additive_bias,
    allow_mask,
    from_heads,
    rows_alive,
    to_heads,
    zero_dead_rows,
)


def fused_attention(b: Any, a: Attn, q: str, k: str, v: str, mask: str, kpm: str,
                    layout: str) -> str:
    """One fused attention node (plus mask/fix-up helpers); output in the input `layout`."""
    if b.target == "ort":
        if a.softcap is None and a.hkv == a.hq:
            return _ms_multi_head(b, a, q, k, v, mask, kpm, layout)
    return _standard(b, a, q, k, v, mask, kpm, layout)


def _finish(b: Any, a: Attn, out: str, allow: str | None, layout: str) -> str:
    if allow is not None and a.can_fully_mask:
        return zero_dead_rows(b, a, rows_alive(b, allow), out, layout)
    return out


def _standard(b: Any, a: Attn, q: str, k: str, v: str, mask: str, kpm: str,
              layout: str) -> str:
    """The standard ONNX Attention op (opset 23)."""
    b.require_opset(23, "the standard Attention op")
    seq_axis = 1 if layout == "3d" else 2
    native_causal = a.causal and a.window is None and a.same_len
    allow = allow_mask(b, a, q, k, mask, kpm, seq_axis, positional=not native_causal)
    if a.softcap is not None and (allow is not None or native_causal):
        b.unsupported(
            "softcap together with causal/window/masks (the standard Attention op applies "
            "softcap after masking, which would un-mask positions)",
            "use target='ort' (GroupQueryAttention) or target='decomposed'",
        )
    inputs = [q, k, v]
    if allow is not None:
        # onnxruntime wants the mask's query axis at full length (no broadcasting there)
        full = b.concat([b.ints([1, 1]), b.dim(q, seq_axis), b.dim(k, seq_axis)], 0)
        allow = b.op1("Expand", [allow, full])
        inputs.append(additive_bias(b, a, allow, mask) if a.mask_kind == "float" else allow)
    heads = {"q_num_heads": a.hq, "kv_num_heads": a.hkv} if layout == "3d" else {}
    out = b.op1("Attention", inputs, tag="Attention", scale=a.scale,
                is_causal=int(native_causal), softcap=a.softcap, **heads)
    return _finish(b, a, out, allow, layout)


def _ms_multi_head(b: Any, a: Attn, q: str, k: str, v: str, mask: str, kpm: str,
                   layout: str) -> str:
    """com.microsoft.MultiHeadAttention: Hq == Hkv, no softcap; masks as an additive bias."""
    if layout == "4d":
        q = from_heads(b, q, a.hq, a.d)  # (B, Sq, H*D)
        k = from_heads(b, k, a.hkv, a.d)  # (B, Sk, H*D)
        v = from_heads(b, v, a.hkv, a.dv)  # (B, Sk, H*Dv)
    native_causal = a.causal and a.window is None and a.same_len
    allow = allow_mask(b, a, q, k, mask, kpm, 1, positional=not native_causal)
    inputs = [q, k, v, "", ""]
    if allow is not None:
        inputs.append(additive_bias(b, a, allow, mask))
    out = b.op1("MultiHeadAttention", inputs, domain="com.microsoft", tag="MultiHeadAttention",
                num_heads=a.hq, scale=a.scale, unidirectional=int(native_causal))
    out = _finish(b, a, out, allow, "3d")
    if layout == "4d":
        out = to_heads(b, out, a.hq, a.dv)  # (B, H, Sq, Dv)
    return out
