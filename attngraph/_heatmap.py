"""Heat maps of attention weights: a grid of layers (rows) x heads (columns) with one shared
colour scale, a colour bar and token labels. Needs the `viz` extra (matplotlib)."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ._checks import name_list, require_path
from ._errors import ConfigError
from ._io import atomic_write_bytes

if TYPE_CHECKING:
    from .analysis import AttentionReport

MAX_LABELS = 40  # beyond this many tokens, label every k-th one


def plot_attention(report: AttentionReport, path: str | os.PathLike[str], *,
                   layer: str | None = None, layers: Sequence[str] | None = None,
                   batch: int = 0, heads: Sequence[int] | None = None,
                   tokens: Sequence[str] | None = None,
                   key_tokens: Sequence[str] | None = None) -> str:
    """Write a PNG of attention weights: one row per layer, one column per head, one colour
    scale (0 .. the largest weight shown) with a colour bar, queries down and keys across.
    Layers with fewer heads than others leave their extra cells empty.

    Args:
        layer / layers: the layer(s) to draw (default: every attention layer).
        batch: which batch item. heads: which heads (default: all).
        tokens: labels of the query positions (and of the keys, unless key_tokens is given,
            e.g. for cross-attention).

    Returns the path. Raises ConfigError for unknown layers or heads, label counts that do not
    match the sequence, or a missing matplotlib.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("plot_attention needs matplotlib: pip install 'attngraph[viz]'") \
            from None
    from .analysis import AttentionReport

    if not isinstance(report, AttentionReport):
        raise ConfigError(f"plot_attention: report must be an AttentionReport (from "
                          f"ag.analyze), given {type(report).__name__}")
    require_path(path, "plot_attention")
    if heads is not None and not isinstance(heads, Sequence):
        raise ConfigError(f"plot_attention: heads must be a list of head indices, given "
                          f"{heads!r}")
    names = _layers(report, layer, layers)
    maps = [report.layers[n].weights for n in names]
    if isinstance(batch, bool) or not isinstance(batch, int) or \
            not 0 <= batch < maps[0].shape[0]:
        raise ConfigError(f"plot_attention: batch must be an index below {maps[0].shape[0]}, "
                          f"given {batch!r}")
    count = max(m.shape[1] for m in maps)
    cols = list(range(count)) if heads is None else list(heads)
    for h in cols:
        if isinstance(h, bool) or not isinstance(h, int) or not 0 <= h < count:
            raise ConfigError(f"plot_attention: head {h!r} is not a head of these layers "
                              f"({[m.shape[1] for m in maps]} heads)")
    if not cols:
        raise ConfigError("plot_attention: heads is empty")
    q_labels = _labels(tokens, maps[0].shape[2], "tokens")
    k_labels = _labels(key_tokens if key_tokens is not None else tokens, maps[0].shape[3],
                       "key_tokens" if key_tokens is not None else "tokens")
    vmax = max(float(m[batch][[h for h in cols if h < m.shape[1]]].max(initial=0.0))
               for m in maps) or 1.0
    cell = min(2.4, 16.0 / len(cols))  # inches per panel: 12 heads fit a page width
    fig, axes = plt.subplots(len(names), len(cols), squeeze=False, layout="constrained",
                             figsize=(cell * len(cols) + 1.2, cell * len(names) + 0.6))
    image = None
    for r, (name, w) in enumerate(zip(names, maps)):
        for c, h in enumerate(cols):
            ax = axes[r][c]
            if h >= w.shape[1]:  # a layer with fewer heads leaves its cell empty
                ax.axis("off")
                continue
            image = ax.imshow(w[batch, h], cmap="viridis", vmin=0.0, vmax=vmax,
                              interpolation="nearest", aspect="auto")
            rows_with_h = [i for i, m in enumerate(maps) if h < m.shape[1]]
            _ticks(ax, q_labels if c == 0 else None, k_labels if r == rows_with_h[-1] else None)
            if r == rows_with_h[0]:
                ax.set_title(f"head {h}", fontsize=9)
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
    assert image is not None  # at least one panel was drawn
    bar = fig.colorbar(image, ax=axes, fraction=0.04 if len(cols) > 2 else 0.08, pad=0.02)
    bar.set_label("attention weight", fontsize=9)
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, dpi=100, format="png")
    finally:
        plt.close(fig)
    out = os.fspath(path)
    atomic_write_bytes(out, buffer.getvalue(), what="plot_attention")
    return out


def _layers(report: AttentionReport, layer: str | None,
            layers: Sequence[str] | None) -> list[str]:
    if layer is not None and layers is not None:
        raise ConfigError("plot_attention: pass layer= or layers=, not both")
    if layer is not None and not isinstance(layer, str):
        raise ConfigError(f"plot_attention: layer must be a layer name, given {layer!r}")
    chosen = name_list(layers, "plot_attention", "layers")
    names = list(report.layers) if layer is None and chosen is None else (
        [layer] if layer is not None else chosen or [])
    unknown = [n for n in names if n not in report.layers]
    if unknown or not names:
        raise ConfigError(f"plot_attention: no layer {unknown or names!r}; layers are "
                          f"{list(report.layers)}")
    shapes = {report.layers[n].weights.shape[2:] for n in names}
    if len(shapes) > 1:
        raise ConfigError(f"plot_attention: layers {names} have different query/key lengths "
                          f"{sorted(shapes)}; plot them one at a time with layer=")
    return names


def _labels(tokens: Sequence[str] | None, n: int, what: str) -> list[str] | None:
    if tokens is None:
        return None
    if isinstance(tokens, str) or not isinstance(tokens, Sequence):
        raise ConfigError(f"plot_attention: {what} must be a list of labels, one per position, "
                          f"given {type(tokens).__name__} {tokens!r}"[:200])
    labels = [str(t) for t in tokens]
    if len(labels) != n:
        raise ConfigError(f"plot_attention: {what} has {len(labels)} labels for {n} positions")
    return labels


def _ticks(ax: Any, rows: list[str] | None, cols: list[str] | None) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    if rows is not None:
        step = max(1, -(-len(rows) // MAX_LABELS))
        ax.set_yticks(np.arange(0, len(rows), step), rows[::step], fontsize=7)
    if cols is not None:
        step = max(1, -(-len(cols) // MAX_LABELS))
        ax.set_xticks(np.arange(0, len(cols), step), cols[::step], fontsize=7, rotation=90)
