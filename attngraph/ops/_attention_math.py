"""The numpy reference of attention (DESIGN §4), written for reading rather than speed."""

from __future__ import annotations

import numpy as np

from ..analysis import capturing, record
from ._attention_modes import current_mode, lean_attention


def allowed_positions(sq: int, sk: int, causal: bool, window: int | tuple[int, int] | None
                      ) -> np.ndarray | None:
    """Bool [Sq, Sk]: which keys each query may attend, by position only; None if all.

    Query i sits at absolute position p = Sk - Sq + i (bottom-right alignment).
    causal: j <= p. window K (int): p - K < j <= p. window (left, right): p - left <= j <= p + right.
    """
    if not causal and window is None:
        return None
    p = np.arange(sq)[:, None] + (sk - sq)  # (Sq, 1)
    j = np.arange(sk)[None, :]  # (1, Sk)
    allow = np.ones((sq, sk), bool)
    if causal:
        allow &= j <= p
    if isinstance(window, int):
        allow &= (j <= p) & (j > p - window)
    elif window is not None:
        left, right = window
        allow &= (j >= p - left) & (j <= p + right)
    return allow


def attention_reference(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, *,
    mask: np.ndarray | None = None, key_padding_mask: np.ndarray | None = None,
    causal: bool = False, window: int | tuple[int, int] | None = None,
    scale: float | None = None, softcap: float | None = None, return_weights: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """softmax(mask(softcap(q k^T * scale))) v, with fully masked query rows set to zero.

    q (B, Hq, Sq, D), k (B, Hkv, Sk, D), v (B, Hkv, Sk, Dv); query head h reads kv head
    h // (Hq // Hkv). Returns (output (B, Hq, Sq, Dv), weights (B, Hq, Sq, Sk) or None).
    Without weights, the memory-lean mode selected by `attention_mode` is used.
    """
    hq, hkv, sq, d = q.shape[1], k.shape[1], q.shape[2], q.shape[3]
    sk = k.shape[2]
    group = hq // hkv
    k = np.repeat(k, group, axis=1)  # (B, Hq, Sk, D)
    v = np.repeat(v, group, axis=1)  # (B, Hq, Sk, Dv)
    scale = 1.0 / np.sqrt(d) if scale is None else scale
    mode, chunk = current_mode()
    if mode != "standard" and not return_weights and not capturing():
        out = lean_attention(q, k, v, mode, chunk, mask=mask, kpm=key_padding_mask,
                             causal=causal, window=window, scale=scale, softcap=softcap)
        return out.astype(q.dtype), None
    scores = (q @ k.swapaxes(-1, -2)) * scale  # (B, Hq, Sq, Sk)
    if softcap is not None:
        scores = softcap * np.tanh(scores / softcap)
    allow = np.ones(scores.shape, bool)
    positional = allowed_positions(sq, sk, causal, window)
    if positional is not None:
        allow &= positional  # (Sq, Sk) broadcasts
    if key_padding_mask is not None:
        allow &= key_padding_mask.astype(bool)[:, None, None, :]  # (B, 1, 1, Sk)
    if mask is not None:
        if mask.dtype == bool:
            allow &= mask
        else:
            scores = scores + mask
            allow &= ~np.isneginf(mask)
    scores = np.where(allow, scores, -np.inf)
    row_max = scores.max(axis=-1, keepdims=True)  # (B, Hq, Sq, 1)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)
    e = np.where(allow, np.exp(scores - row_max), 0.0)
    denom = e.sum(axis=-1, keepdims=True)
    weights = e / np.where(denom == 0.0, 1.0, denom)  # fully masked rows: all zeros
    record(weights, allow)  # for ag.analyze: weights and which keys each row could attend
    return (weights @ v).astype(q.dtype), weights.astype(q.dtype)


def split_heads(x: np.ndarray, heads: int) -> np.ndarray:
    b, s, hd = x.shape
    return x.reshape(b, s, heads, hd // heads).transpose(0, 2, 1, 3)  # (B, H, S, D)


def merge_heads(x: np.ndarray) -> np.ndarray:
    b, h, s, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, s, h * d)  # (B, S, H*D)
