"""Attention analysis: weights of every attention layer and statistics per head.

Statistics per layer and head, over batch items and query rows that attend something, counting
only the keys each row may attend (its causal / window / padding / mask allowance):
- entropy: mean of -sum_j w_j log w_j (nats); low means sharp attention;
- sparsity: share of attendable weights below 0.01 (masked positions are not counted);
- max_weight: mean of each row's largest weight;
- collapsed: max_weight > 0.95 or entropy < 0.1 (a head that looks at one key only);
- pattern: the head's dominant pattern (see `classify_heads`) and its strength in [0, 1].
Per layer, head diversity is 1 - the mean cosine similarity between the heads' weight maps
(0: all heads attend alike).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._errors import ConfigError
from ._heatmap import plot_attention
from ._table import render

_CAPTURE: contextvars.ContextVar[list[tuple[np.ndarray, np.ndarray | None]] | None] = \
    contextvars.ContextVar("attention_capture", default=None)
ATTENTION_OPS = ("multi_head_attention", "attention")
PATTERNS = ("self", "previous", "first", "local", "broad")
PATTERN_THRESHOLD = 0.5  # a specific pattern must hold half of the attention mass
LOCAL_BAND = 2  # "local": keys within 2 positions of the query
# The seed's remedies are "lower temperature, attention dropout, label smoothing". With DESIGN
# §4's temperature t (scale = 1/(t sqrt(D))), a lower t sharpens attention further, so the
# advice names the direction that softens a collapsed head instead.
COLLAPSE_ADVICE = ("consider a softening temperature t > 1 (scale=1/(t*sqrt(D))), attention "
                   "dropout or label smoothing (remedies at training time)")

__all__ = ["AttentionReport", "LayerAttention", "analyze", "classify_heads", "head_statistics",
           "plot_attention"]


def capturing() -> bool:
    """Whether an `analyze` call is collecting attention weights right now (the attention
    reference then computes and records full weights, whatever its attention mode)."""
    return _CAPTURE.get() is not None


def record(weights: np.ndarray, allow: np.ndarray | None = None) -> None:
    """Called by the attention reference with each layer's weights (and the keys each query
    row could attend) while analysing."""
    captured = _CAPTURE.get()
    if captured is not None:
        captured.append((weights, allow))


@contextlib.contextmanager
def _capture() -> Iterator[list[tuple[np.ndarray, np.ndarray | None]]]:
    captured: list[tuple[np.ndarray, np.ndarray | None]] = []
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
    pattern: list[str] = field(default_factory=list)
    strength: np.ndarray = field(default_factory=lambda: np.zeros(0))
    pattern_scores: dict[str, np.ndarray] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form: name, weights' shape [B, H, Sq, Sk], head diversity, and per
        head its entropy, sparsity, max weight, collapsed flag, pattern, strength and the
        score of every pattern (plain floats, bools and strings; the weights are left out)."""
        heads = [{"head": h, "entropy": float(self.entropy[h]),
                  "sparsity": float(self.sparsity[h]), "max_weight": float(self.max_weight[h]),
                  "collapsed": h in self.collapsed, "pattern": self.pattern[h],
                  "strength": float(self.strength[h]),
                  "pattern_scores": {k: float(v[h]) for k, v in self.pattern_scores.items()}}
                 for h in range(self.weights.shape[1])]
        return {"name": self.name, "shape": list(self.weights.shape),
                "head_diversity": self.diversity, "heads": heads}


@dataclass
class AttentionReport:
    """What `analyze` found: layer name -> LayerAttention (weights [B, H, Sq, Sk] and per-head
    statistics), in the order the layers run. `str(report)` is a table with one row per layer
    and head, `warnings` names collapsed heads, `to_dict()` gives JSON, and
    `ag.plot_attention(report, path)` draws heat maps."""

    layers: dict[str, LayerAttention]

    @property
    def warnings(self) -> list[str]:
        """One line per layer with collapsed heads, with what to try."""
        return [f"{layer.name}: heads {', '.join(map(str, layer.collapsed))} collapsed "
                f"(attention on one key); {COLLAPSE_ADVICE}"
                for layer in self.layers.values() if layer.collapsed]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form: per layer and head, every statistic; and the warnings."""
        return {"layers": [layer.to_dict() for layer in self.layers.values()],
                "warnings": self.warnings}

    def __str__(self) -> str:
        rows = [("layer", "head", "entropy", "sparsity", "max weight", "pattern", "collapsed")]
        for layer in self.layers.values():
            for h in range(layer.weights.shape[1]):
                rows.append((layer.name, str(h), f"{layer.entropy[h]:.3f}",
                             f"{layer.sparsity[h]:.2f}", f"{layer.max_weight[h]:.3f}",
                             f"{layer.pattern[h]} {layer.strength[h]:.2f}",
                             "yes" if h in layer.collapsed else ""))
        lines = [render(rows[0], rows[1:])]
        for layer in self.layers.values():
            lines.append(f"{layer.name}: head diversity {layer.diversity:.3f}")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def classify_heads(weights: np.ndarray, allow: np.ndarray | None = None
                   ) -> tuple[list[str], np.ndarray, dict[str, np.ndarray]]:
    """Each head's dominant pattern with its strength, from weights [B, H, Sq, Sk].

    Query row i sits at absolute position p = Sk - Sq + i. For "self" (j = p, the diagonal),
    "previous" (j = p - 1), "first" (j = 0, a sink) and "local" (|j - p| <= 2), a row's score is
    its attention mass m on those keys measured against chance: (m - c) / (1 - c), where c is
    the share of the row's attendable keys in the set (what uniform attention would give),
    clipped at 0. Rows where the set holds no attendable key, or all of them, say nothing and
    are skipped. A head's score is the mean over batch items and rows. The pattern is the
    strongest of self / previous / first scoring at least 0.5, else "local" if it scores 0.5,
    else "broad", whose strength is the mean entropy relative to its maximum
    log(attendable keys).

    Returns (pattern per head, strength per head, {pattern: score per head}).
    """
    w = weights.astype(np.float64)
    _, heads, sq, sk = w.shape
    allow_b = np.ones(w.shape, bool) if allow is None else np.broadcast_to(allow, w.shape)
    p = np.arange(sq) + (sk - sq)  # (Sq,) absolute query positions
    j = np.arange(sk)
    live = w.sum(-1) > 0  # (B, H, Sq)
    offsets = j[None, :] - p[:, None]  # (Sq, Sk): j - p
    sets = {"self": offsets == 0, "previous": offsets == -1,
            "first": np.broadcast_to(j[None, :] == 0, offsets.shape),
            "local": np.abs(offsets) <= LOCAL_BAND}
    count = allow_b.sum(-1)  # (B, H, Sq) attendable keys
    scores = {}
    for kind, keys in sets.items():
        inside = (allow_b & keys).sum(-1)  # (B, H, Sq)
        chance = inside / np.maximum(count, 1)
        mass = (w * keys).sum(-1)
        lift = np.clip((mass - chance) / np.where(chance < 1, 1 - chance, 1), 0.0, 1.0)
        scores[kind] = _mean_live(lift, live & (inside > 0) & (inside < count))
    ent = -(w * np.log(np.where(w > 0, w, 1.0))).sum(-1)
    scores["broad"] = _mean_live(ent / np.log(np.maximum(count, 2)), live & (count > 1))
    patterns, strength = [], np.zeros(heads)
    for h in range(heads):
        specific = max(("self", "previous", "first"), key=lambda k: scores[k][h])
        if scores[specific][h] >= PATTERN_THRESHOLD:
            kind = specific
        elif scores["local"][h] >= PATTERN_THRESHOLD:
            kind = "local"
        else:
            kind = "broad"
        patterns.append(kind)
        strength[h] = scores[kind][h]
    return patterns, strength, scores


def _mean_live(values: np.ndarray, live: np.ndarray) -> np.ndarray:
    """Mean per head (axis 1) over the (batch, row) entries where `live`."""
    out = np.zeros(values.shape[1])
    for h in range(values.shape[1]):
        sel = live[:, h]
        out[h] = values[:, h][sel].mean() if sel.any() else 0.0
    return out


def head_statistics(weights: np.ndarray, allow: np.ndarray | None = None) -> LayerAttention:
    """Statistics of weights [B, H, Sq, Sk] (see the module docstring). allow: bool,
    broadcastable to the weights, True where a key was attendable (default: every key)."""
    w = weights.astype(np.float64)
    allow_b = np.ones(w.shape, bool) if allow is None else np.broadcast_to(allow, w.shape)
    live = w.sum(-1) > 0  # (B, H, Sq): rows that attend something
    entropy = _mean_live(-(w * np.log(np.where(w > 0, w, 1.0))).sum(-1), live)
    max_weight = _mean_live(w.max(-1), live)
    attendable = allow_b.sum(axis=(0, 2, 3))
    small = ((w < 0.01) & allow_b).sum(axis=(0, 2, 3))
    sparsity = np.where(attendable > 0, small / np.maximum(attendable, 1), 0.0)
    heads = w.shape[1]
    flat = w.transpose(1, 0, 2, 3).reshape(heads, -1)
    norms = np.linalg.norm(flat, axis=1)
    cos = flat @ flat.T / np.maximum(np.outer(norms, norms), 1e-12)
    pairs = cos[np.triu_indices(heads, 1)]
    diversity = float(1.0 - pairs.mean()) if pairs.size else 0.0
    collapsed = [h for h in range(heads) if max_weight[h] > 0.95 or entropy[h] < 0.1]
    pattern, strength, scores = classify_heads(weights, allow)
    return LayerAttention("", weights, entropy, sparsity, max_weight, diversity, collapsed,
                          pattern, strength, scores)


def analyze(model: Any, params: Mapping[str, np.ndarray],
            feeds: Mapping[str, Any]) -> AttentionReport:
    """Run the reference interpreter and collect, per attention layer and head, the weights
    and their statistics. Returns an AttentionReport (print it for a table, `to_dict()` for
    JSON, `ag.plot_attention` for heat maps)."""
    from ._checks import require_model
    from ._errors import caller_location
    from ._interpreter import evaluate

    require_model(model, "analyze", caller_location())
    layers: dict[str, LayerAttention] = {}
    with _capture() as captured:

        def observe(node: Any, name: str) -> None:
            if node.op in ATTENTION_OPS and captured:
                stats = head_statistics(*captured.pop())
                stats.name = name
                layers[name] = stats
            captured.clear()

        evaluate(model, params, feeds, observer=observe)
    if not layers:
        raise ConfigError("analyze: the model has no attention layer")
    return AttentionReport(layers)
