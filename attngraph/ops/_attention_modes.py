"""Memory-lean reference attention (Edifice's two modes), same answers as the standard form.

- "chunked": queries in chunks of `chunk_size`; each chunk holds a [chunk, Sk] score block.
- "memory_efficient": keys/values streamed in chunks with an online softmax (Rabe & Staats
  2021, "Self-attention does not need O(n^2) memory"): a running row maximum m, a running
  denominator l and an unnormalised output acc are rescaled as each chunk arrives, so no
  [Sq, Sk] array is ever held. With a sliding window, queries go in chunks too and each
  query chunk skips the key chunks its window does not reach: O(Sq·W) work.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import numpy as np

MODES = ("standard", "chunked", "memory_efficient")
_MODE: contextvars.ContextVar[tuple[str, int]] = contextvars.ContextVar(
    "attention_mode", default=("standard", 64))


@contextlib.contextmanager
def attention_mode(mode: str, chunk_size: int) -> Iterator[None]:
    """Select how the reference interpreter evaluates attention inside the block."""
    token = _MODE.set((mode, chunk_size))
    try:
        yield
    finally:
        _MODE.reset(token)


def current_mode() -> tuple[str, int]:
    return _MODE.get()


def _block(q: np.ndarray, k: np.ndarray, rows: slice, cols: slice, sq: int, sk: int, *,
           mask: np.ndarray | None, kpm: np.ndarray | None, causal: bool,
           window: int | tuple[int, int] | None, scale: float, softcap: float | None,
           ) -> tuple[np.ndarray, np.ndarray]:
    """Scores and the allow mask of query rows `rows` against key columns `cols`:
    (B, H, r, c) each."""
    scores = (q[:, :, rows] @ k[:, :, cols].swapaxes(-1, -2)) * np.float32(scale)
    if softcap is not None:
        scores = np.float32(softcap) * np.tanh(scores / np.float32(softcap))
    allow = np.ones(scores.shape, bool)
    p = np.arange(rows.start, rows.stop)[:, None] + (sk - sq)  # absolute query positions
    j = np.arange(cols.start, cols.stop)[None, :]
    if causal or isinstance(window, int):
        allow &= j <= p
    if isinstance(window, int):
        allow &= j > p - window
    elif window is not None:
        allow &= (j >= p - window[0]) & (j <= p + window[1])
    if kpm is not None:
        allow &= kpm.astype(bool)[:, None, None, cols]
    if mask is not None:
        view = np.broadcast_to(mask, (*mask.shape[:-2], sq, sk) if mask.ndim >= 2
                               else (sq, sk))[..., rows, cols]  # a view: nothing copied
        if view.dtype == bool:
            allow &= view
        else:
            scores = scores + view
            allow &= ~np.isneginf(view)
    return np.where(allow, scores, -np.inf).astype(np.float32), allow


def lean_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, mode: str, chunk: int,
                   **opts: object) -> np.ndarray:
    """Output (B, Hq, Sq, Dv) of DESIGN §4 attention in a memory-lean `mode`.
    q (B, Hq, Sq, D), k/v already repeated to Hq heads."""
    sq, sk = q.shape[2], k.shape[2]
    window = opts.get("window")
    if mode == "memory_efficient" and window is None:
        return _online(q, k, v, slice(0, sq), range(0, sk, chunk), chunk, opts)
    out = np.zeros((*q.shape[:3], v.shape[-1]), np.float32)
    if mode == "chunked":
        for start in range(0, sq, chunk):
            rows = slice(start, min(start + chunk, sq))
            scores, allow = _block(q, k, rows, slice(0, sk), sq, sk, **opts)  # type: ignore[arg-type]
            m = scores.max(-1, keepdims=True)
            e = np.where(allow, np.exp(scores - np.where(np.isfinite(m), m, 0)), 0)
            denom = e.sum(-1, keepdims=True)
            out[:, :, rows] = (e / np.where(denom == 0, 1, denom)) @ v
        return out
    # A sliding window: each chunk of queries reads only the key chunks its window reaches,
    # so the work is O(Sq·(W + chunk)) instead of O(Sq·Sk).
    lo, hi = ((-(window - 1), 0) if isinstance(window, int)
              else (-window[0], window[1]))  # type: ignore[index]
    if opts.get("causal"):
        hi = min(hi, 0)
    for start in range(0, sq, chunk):
        rows = slice(start, min(start + chunk, sq))
        first = max(0, sk - sq + rows.start + lo)  # the first key any of these rows may read
        last = min(sk - 1, sk - sq + rows.stop - 1 + hi)
        cols = range(first // chunk * chunk, last + 1, chunk) if last >= first else range(0)
        out[:, :, rows] = _online(q, k, v, rows, cols, chunk, opts)
    return out


def _online(q: np.ndarray, k: np.ndarray, v: np.ndarray, rows: slice, col_starts: range,
            chunk: int, opts: dict[str, object]) -> np.ndarray:
    """Online-softmax attention of query `rows` over the key chunks starting at `col_starts`
    (keys outside them must be masked for these rows); rows left without keys give zeros."""
    sq, sk = q.shape[2], k.shape[2]
    shape = (q.shape[0], q.shape[1], rows.stop - rows.start)
    out = np.zeros((*shape, v.shape[-1]), np.float32)
    m = np.full((*shape, 1), -np.inf, np.float32)  # running row max
    denom = np.zeros((*shape, 1), np.float32)  # running sum of exp(score - m)
    for start in col_starts:
        cols = slice(start, min(start + chunk, sk))
        scores, allow = _block(q, k, rows, cols, sq, sk, **opts)  # type: ignore[arg-type]
        m_new = np.maximum(m, scores.max(-1, keepdims=True))
        safe = np.where(np.isfinite(m_new), m_new, 0)
        rescale = np.where(np.isfinite(m), np.exp(m - safe), 0)  # old terms, re-based
        e = np.where(allow, np.exp(scores - safe), 0)
        denom = denom * rescale + e.sum(-1, keepdims=True)
        out = out * rescale + e @ v[:, :, cols]
        m = m_new
    return out / np.where(denom == 0, 1, denom)  # fully masked rows stay zero
