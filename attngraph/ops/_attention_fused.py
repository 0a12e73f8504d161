"""Fused attention lowerings (placeholder while the contrib-op forms are written)."""

from __future__ import annotations

from typing import Any

from ._attention_graph import Attn, decomposed_attention


def fused_attention(b: Any, a: Attn, q: str, k: str, v: str, mask: str, kpm: str,
                    layout: str) -> str:
    return decomposed_attention(b, a, q, k, v, mask, kpm, layout)[0]
