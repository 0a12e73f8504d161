"""Attention masks and sparse patterns.

numpy helpers (for feeds, tests and pictures): `causal_mask(n)`, `window_mask(n, w)`,
`strided_mask`, `block_sparse_mask` — bool [n, n], True = attend.

Graph builders: `strided_pattern` and `block_sparse_pattern` make the same masks inside a
model, sized by the run-time sequence lengths, for the `mask=` input of
`multi_head_attention` / `scaled_dot_product_attention`. Every target receives them as an
exact mask on its fused attention node. Build a pattern once and pass it to every layer that
uses it: the exported model then computes it once.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._checks import Checker
from ._errors import caller_location
from ._graph import Value, make_node
from .ops._attention_math import allowed_positions
from .ops.patterns import block_sparse_allow, strided_allow


def causal_mask(n: int) -> np.ndarray:
    """Bool [n, n]: position i attends j <= i (itself and earlier positions)."""
    Checker("causal_mask", None, caller_location()).pos_int(n, "n")
    allow = allowed_positions(n, n, True, None)
    assert allow is not None
    return allow


def window_mask(n: int, w: int | tuple[int, int]) -> np.ndarray:
    """Bool [n, n] of a sliding window: int w = the last w positions including i itself
    (i - w < j <= i, as `window=w`); a pair (left, right) = i - left <= j <= i + right."""
    c = Checker("window_mask", None, caller_location())
    c.pos_int(n, "n")
    window = c.window(w)
    allow = allowed_positions(n, n, False, window)
    assert allow is not None
    return allow


def strided_mask(n: int, stride: int, *, window: int | None = None,
                 causal: bool = True) -> np.ndarray:
    """Bool [n, n] of the Sparse Transformer's strided pattern (see `strided_pattern`)."""
    c = Checker("strided_mask", None, caller_location())
    c.pos_int(n, "n")
    stride, window, causal = _strided_options(c, stride, window, causal)
    return strided_allow(n, n, stride, window, causal)


def block_sparse_mask(n: int, block_size: int, layout: Any, *,
                      causal: bool = False) -> np.ndarray:
    """Bool [n, n] of a block layout (see `block_sparse_pattern`)."""
    c = Checker("block_sparse_mask", None, caller_location())
    c.pos_int(n, "n")
    block_size, table, causal = _block_options(c, block_size, layout, causal)
    return block_sparse_allow(n, n, block_size, np.asarray(table, bool), causal)


def _strided_options(c: Checker, stride: Any, window: Any, causal: Any) -> tuple[int, int, bool]:
    c.pos_int(stride, "stride")
    window = stride if window is None else window
    c.pos_int(window, "window")
    c.flag(causal, "causal")
    return stride, window, causal


def _block_options(c: Checker, block_size: Any, layout: Any,
                   causal: Any) -> tuple[int, tuple[tuple[bool, ...], ...], bool]:
    c.pos_int(block_size, "block_size")
    c.flag(causal, "causal")
    try:
        arr = np.asarray(layout)
    except ValueError:  # ragged nested lists
        arr = np.asarray(None)
    if arr.ndim != 2 or arr.size == 0 or arr.dtype.kind not in "biu" or \
            not np.isin(arr, (0, 1)).all():
        c.fail(f"layout must be a 2-d array of bools (or 0/1) [query blocks, key blocks], "
               f"given {layout!r}")
    return block_size, tuple(tuple(bool(v) for v in row) for row in arr), causal


def _sources(c: Checker, q_source: Any, k_source: Any) -> tuple[Value, Value]:
    c.value(q_source, "q_source")
    k_source = q_source if k_source is None else k_source
    c.value(k_source, "k_source")
    return q_source, k_source


def strided_pattern(q_source: Value, k_source: Value | None = None, *, stride: int,
                    window: int | None = None, causal: bool = True,
                    name: str | None = None) -> Value:
    """Sparse Transformer strided pattern, bool[1, 1, Sq, Sk] for `mask=`.

    Query at absolute position p (= Sk - Sq + i) attends key j when (p - j) % stride == 0
    (every stride-th earlier position) or j lies in the local window: p - window < j <= p
    when causal, |p - j| < window otherwise. window defaults to stride (Child et al. 2019).
    causal=True also drops every j > p. Sq and Sk are read from axis 1 of the sources.
    """
    c = Checker("strided_pattern", name, caller_location())
    q, k = _sources(c, q_source, k_source)
    stride, window, causal = _strided_options(c, stride, window, causal)
    attrs = {"stride": stride, "window": window, "causal": causal}
    return Value(make_node("strided_pattern", [q, k], attrs, name=name, location=c.location))


def block_sparse_pattern(q_source: Value, k_source: Value | None = None, *, block_size: int,
                         layout: Any, causal: bool = False, name: str | None = None) -> Value:
    """Block-sparse pattern from a static layout, bool[1, 1, Sq, Sk] for `mask=`.

    Query at absolute position p attends key j when layout[p // block_size][j // block_size]
    is True (and j <= p when causal). layout: bool [query blocks, key blocks]; positions past
    the layout attend nothing and are attended by nothing (their rows output zeros), so size
    the layout for the longest sequence.
    """
    c = Checker("block_sparse_pattern", name, caller_location())
    q, k = _sources(c, q_source, k_source)
    block_size, table, causal = _block_options(c, block_size, layout, causal)
    attrs = {"block_size": block_size, "layout": table, "causal": causal}
    return Value(make_node("block_sparse_pattern", [q, k], attrs, name=name,
                           location=c.location))
