"""Attention analysis: weights of every attention layer and statistics per head.

Statistics per layer and head, over batch items and query rows that attend something:
- entropy: mean of -sum_j w_j log w_j (nats); low means sharp attention;
- sparsity: share of weights below 0.01;
- max_weight: mean of each row's largest weight;
- collapsed: max_weight > 0.95 or entropy < 0.1 (a head that looks at one key only).
Per layer, head diversity is 1 - the mean cosine similarity between the heads' weight maps
(0: all heads attend alike).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._errors import ConfigError

_CAPTURE: contextvars.ContextVar[list[np.ndarray] | None] = contextvars.ContextVar(
    "attention_capture", default=None)
ATTENTION_OPS = ("multi_head_attention", "attention")


def capturing() -> bool:
    return _CAPTURE.get() is not None


def record(weights: np.ndarray) -> None:
    """Called by the attention reference with each layer's weights while analysing."""
    captured = _CAPTURE.get()
    if captured is not None:
        captured.append(weights)


@contextlib.contextmanager
def _capture() -> Iterator[list[np.ndarray]]:
    captured: list[np.ndarray] = []
    token = _CAPTURE.set(captured)
    try:
        yield captured
    finally:
        _CAPTURE.reset(token)


@dataclass
class LayerAttention:
    """One attention layer's weights [B, H, Sq, Sk] and per-head statistics."""

    name: str
    weights: np.ndarray
    entropy: np.ndarray
    sparsity: np.ndarray
    max_weight: np.ndarray
    diversity: float
    collapsed: list[int] = field(default_factory=list)


@dataclass
class AttentionReport:
    layers: dict[str, LayerAttention]

    def __str__(self) -> str:
        rows = [("layer", "head", "entropy", "sparsity", "max weight", "collapsed")]
        for layer in self.layers.values():
            for h in range(layer.weights.shape[1]):
                rows.append((layer.name, str(h), f"{layer.entropy[h]:.3f}",
                             f"{layer.sparsity[h]:.2f}", f"{layer.max_weight[h]:.3f}",
                             "yes" if h in layer.collapsed else ""))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        for layer in self.layers.values():
            lines.append(f"{layer.name}: head diversity {layer.diversity:.3f}")
        return "\n".join(lines)


def head_statistics(weights: np.ndarray) -> LayerAttention:
    """Statistics of weights [B, H, Sq, Sk] (see the module docstring)."""
    w = weights.astype(np.float64)
    live = w.sum(-1) > 0  # (B, H, Sq): rows that attend something
    entropy_rows = -(w * np.log(np.where(w > 0, w, 1.0))).sum(-1)
    heads = w.shape[1]

    def per_head(values: np.ndarray) -> np.ndarray:
        out = np.zeros(heads)
        for h in range(heads):
            sel = live[:, h]
            out[h] = values[:, h][sel].mean() if sel.any() else 0.0
        return out

    entropy = per_head(entropy_rows)
    max_weight = per_head(w.max(-1))
    sparsity = (w < 0.01).mean(axis=(0, 2, 3))
    flat = w.transpose(1, 0, 2, 3).reshape(heads, -1)
    norms = np.linalg.norm(flat, axis=1)
    cos = flat @ flat.T / np.maximum(np.outer(norms, norms), 1e-12)
    pairs = cos[np.triu_indices(heads, 1)]
    diversity = float(1.0 - pairs.mean()) if pairs.size else 0.0
    collapsed = [h for h in range(heads) if max_weight[h] > 0.95 or entropy[h] < 0.1]
    return LayerAttention("", weights, entropy, sparsity, max_weight, diversity, collapsed)


def analyze(model: Any, params: Mapping[str, np.ndarray],
            feeds: Mapping[str, Any]) -> AttentionReport:
    """Run the reference interpreter and collect, per attention layer and head, the weights
    and their statistics. Returns an AttentionReport (print it for a table)."""
    from ._interpreter import evaluate

    layers: dict[str, LayerAttention] = {}
    with _capture() as captured:

        def observe(node: Any, name: str) -> None:
            if node.op in ATTENTION_OPS and captured:
                stats = head_statistics(captured.pop())
                stats.name = name
                layers[name] = stats
            captured.clear()

        evaluate(model, params, feeds, observer=observe)
    if not layers:
        raise ConfigError("analyze: the model has no attention layer")
    return AttentionReport(layers)


def plot_attention(report: AttentionReport, path: str | os.PathLike[str], *,
                   layer: str | None = None, batch: int = 0, heads: Sequence[int] | None = None,
                   tokens: Sequence[str] | None = None) -> str:
    """Write heat maps (one panel per head) of one layer's weights to a PNG; needs the `viz`
    extra (matplotlib). Returns the path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("plot_attention needs matplotlib: pip install 'attngraph[viz]'") \
            from None
    name = layer or next(iter(report.layers))
    if name not in report.layers:
        raise ConfigError(f"plot_attention: no layer {name!r}; layers are {list(report.layers)}")
    w = report.layers[name].weights[batch]  # (H, Sq, Sk)
    heads = list(range(w.shape[0])) if heads is None else list(heads)
    fig, axes = plt.subplots(1, len(heads), figsize=(3.2 * len(heads), 3.4), squeeze=False)
    for ax, h in zip(axes[0], heads):
        ax.imshow(w[h], cmap="viridis", vmin=0.0, vmax=max(float(w[h].max()), 1e-6))
        ax.set_title(f"{name} head {h}", fontsize=9)
        if tokens is not None:
            ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=7)
            ax.set_yticks(range(len(tokens)), tokens, fontsize=7)
        ax.set_xlabel("key")
        ax.set_ylabel("query")
    fig.tight_layout()
    path = os.fspath(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
