"""ag.analyze: per-layer, per-head weights and statistics; heat maps."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from conftest import randn

import attngraph as ag
from attngraph.analysis import AttentionReport, classify_heads, head_statistics


def test_statistics_by_hand() -> None:
    w = np.zeros((1, 2, 2, 4))
    w[0, 0] = 0.25  # uniform head: entropy log 4, nothing sparse
    w[0, 1, :, 2] = 1.0  # one-hot head: collapsed
    stats = head_statistics(w)
    np.testing.assert_allclose(stats.entropy, [np.log(4), 0.0], atol=1e-12)
    np.testing.assert_allclose(stats.sparsity, [0.0, 0.75])
    np.testing.assert_allclose(stats.max_weight, [0.25, 1.0])
    assert stats.collapsed == [1]
    assert 0 < stats.diversity <= 1


def test_analyze_model_layers_and_plot(tmp_path) -> None:
    model = ag.models.gpt(vocab_size=30, n_positions=16, n_embd=24, n_layer=2, n_head=3)
    ids = np.random.default_rng(0).integers(0, 30, (2, 7))
    report = ag.analyze(model, model.init(), {"input_ids": ids})
    assert list(report.layers) == ["h.0.attn", "h.1.attn"]
    w = report.layers["h.0.attn"].weights
    assert w.shape == (2, 3, 7, 7)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
    assert np.all(np.triu(w[0, 0], 1) == 0)  # causal
    assert "head diversity" in str(report)
    path = ag.plot_attention(report, tmp_path / "heat.png", tokens=[f"t{i}" for i in range(7)])
    from PIL import Image

    image = np.asarray(Image.open(path).convert("L"), dtype=float)
    assert image.shape[0] > 200 and image.shape[1] > 600
    assert image.std() > 10  # not blank


def test_analyze_memory_efficient_mode_does_not_hide_weights() -> None:
    x = ag.input("x", ("batch", "seq", 8))
    model = ag.Model(x, ag.multi_head_attention(x, num_heads=2, name="a"))
    report = ag.analyze(model, model.init(), {"x": randn(1, 5, 8)})
    assert report.layers["a"].weights.shape == (1, 2, 5, 5)


def test_analyze_needs_attention() -> None:
    x = ag.input("x", ("batch", 8))
    with pytest.raises(ag.ConfigError, match="no attention layer"):
        ag.analyze(ag.Model(x, ag.relu(x)), {}, {"x": randn(1, 8)})


# -- sparsity over attendable keys, pattern classes, collapse advice, JSON -------------------


def test_sparsity_counts_attendable_keys_only() -> None:
    """A uniform causal head: nothing it may attend is below 0.01, so sparsity is 0 (counting
    the masked upper triangle would give 0.43 for 7 tokens)."""
    n = 7
    allow = ag.causal_mask(n)
    w = (allow / allow.sum(-1, keepdims=True))[None, None]  # (1, 1, 7, 7)
    assert head_statistics(w, allow).sparsity[0] == 0.0
    assert head_statistics(w).sparsity[0] == pytest.approx(21 / 49)  # the old count
    x = ag.input("x", ("batch", "seq", 6))
    model = ag.Model(x, ag.multi_head_attention(x, num_heads=2, causal=True, name="a"))
    params = {k: np.zeros_like(v) for k, v in model.init().items()}  # uniform attention
    report = ag.analyze(model, params, {"x": randn(1, n, 6)})
    np.testing.assert_allclose(report.layers["a"].sparsity, 0.0)


def _synthetic(kind: str, n: int = 9, heads: int = 1) -> np.ndarray:
    """Causal weights [1, heads, n, n] of one pattern, with a little noise on the allowed keys."""
    rng = np.random.default_rng(len(kind))
    w = np.zeros((1, heads, n, n))
    for i in range(n):
        target = {"self": i, "previous": max(i - 1, 0), "first": 0}.get(kind)
        row = rng.uniform(0.0, 0.05, i + 1)
        if target is not None:
            row[target] += 1.0
        elif kind == "local":
            row[max(0, i - 2):i + 1] += 1.0
        else:  # broad
            row += 1.0
        w[0, :, i, :i + 1] = row / row.sum()
    return w


@pytest.mark.parametrize("kind", ["self", "previous", "first", "local", "broad"])
def test_pattern_classes_are_recognised_on_synthetic_weights(kind: str) -> None:
    w = _synthetic(kind)
    patterns, strength, scores = classify_heads(w, ag.causal_mask(9))
    assert patterns == [kind]
    assert strength[0] > 0.75
    others = [k for k in ("self", "previous", "first") if k != kind]
    assert all(scores[k][0] < 0.3 for k in others)


def test_patterns_per_head_in_one_layer_and_in_the_report() -> None:
    w = np.concatenate([_synthetic(k) for k in ("previous", "broad", "first")], axis=1)
    stats = head_statistics(w, ag.causal_mask(9))
    assert stats.pattern == ["previous", "broad", "first"]
    stats.name = "layer"
    report = AttentionReport({"layer": stats})
    text = str(report)
    for h, kind in enumerate(("previous", "broad", "first")):
        assert re.search(rf"^layer +{h} .* {kind} [01]\.\d\d", text, re.MULTILINE), text
    data = json.loads(json.dumps(report.to_dict()))
    heads = data["layers"][0]["heads"]
    assert [h["pattern"] for h in heads] == ["previous", "broad", "first"]
    assert heads[0]["pattern_scores"]["previous"] > 0.8 > heads[0]["pattern_scores"]["first"]


def test_collapse_warning_suggests_the_seed_remedies() -> None:
    w = _synthetic("broad", heads=2)
    w[0, 0] = 0.0
    w[0, 0, :, 0] = 1.0  # head 0 only ever looks at the first token
    stats = head_statistics(w, ag.causal_mask(9))
    stats.name = "blk"
    report = AttentionReport({"blk": stats})
    assert stats.collapsed == [0]
    (warning,) = report.warnings
    assert warning.startswith("blk: heads 0 collapsed")
    for remedy in ("temperature", "attention dropout", "label smoothing"):
        assert remedy in warning
    assert f"warning: {warning}" in str(report)
    assert report.to_dict()["warnings"] == [warning]


# -- heat maps: a layers x heads grid, one colour scale, a colour bar, token labels ---------


VIRIDIS_TOP, VIRIDIS_BOTTOM = (253, 231, 37), (68, 1, 84)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of each run of True in a 1-d mask."""
    edges = np.diff(np.concatenate([[0], mask.astype(int), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def _read(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from PIL import Image

    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=int)
    colourful = rgb.max(-1) - rgb.min(-1) > 60  # viridis is saturated; text, frames are grey
    ink = (rgb.max(-1) < 120) & ~colourful
    return rgb, colourful, ink


def test_heat_map_grid_colour_bar_and_labels(tmp_path) -> None:
    model = ag.models.gpt(vocab_size=30, n_positions=16, n_embd=20, n_layer=3, n_head=4)
    ids = np.random.default_rng(0).integers(0, 30, (1, 6))
    report = ag.analyze(model, model.init(), {"input_ids": ids})
    tokens = ["The", "cat", "sat", "on", "a", "mat"]
    path = ag.plot_attention(report, tmp_path / "grid.png", tokens=tokens)
    rgb, colourful, ink = _read(path)
    columns = _runs(colourful.any(axis=0))
    assert len(columns) == 4 + 1  # four heads and the colour bar
    *panels, bar = columns
    assert bar[1] - bar[0] < 0.5 * (panels[0][1] - panels[0][0])  # the bar is a thin strip
    rows = _runs(colourful[:, panels[0][0]:panels[0][1]].any(axis=1))
    assert len(rows) == 3  # three layers
    # the colour bar runs from viridis(0) at the bottom to viridis(1) at the top
    mid = (bar[0] + bar[1]) // 2
    bar_rows = np.flatnonzero(colourful[:, mid])
    top, bottom = rgb[bar_rows[1], mid], rgb[bar_rows[-2], mid]
    assert np.abs(top - VIRIDIS_TOP).max() < 40 and np.abs(bottom - VIRIDIS_BOTTOM).max() < 40
    # token labels: one ink column per key token below the bottom-left panel (past the tick
    # marks), one ink row per query token left of the top-left panel
    below = ink[rows[-1][1] + 9:rows[-1][1] + 30, panels[0][0]:panels[0][1]]
    assert len(_runs(below.any(axis=0))) == len(tokens)
    left = ink[rows[0][0]:rows[0][1], panels[0][0] - 22:panels[0][0] - 8]
    assert len(_runs(left.any(axis=1))) == len(tokens)
    # without tokens those bands hold no ink: what was counted are the labels
    _, colourful, bare = _read(ag.plot_attention(report, tmp_path / "bare.png"))
    first = _runs(colourful.any(axis=0))[0]
    rows = _runs(colourful[:, first[0]:first[1]].any(axis=1))
    assert not bare[rows[-1][1] + 9:rows[-1][1] + 30, first[0]:first[1]].any()


def test_heat_map_uses_one_colour_scale(tmp_path) -> None:
    """Layer "weak" never exceeds 0.4 while "sharp" reaches 1: on a shared scale no panel of
    "weak" shows the top colour (scaled separately, its largest weight would)."""
    sharp = head_statistics(_synthetic("self", n=6))
    weak_w = np.zeros((1, 1, 6, 6))
    weak_w[0, 0, :, :3] = 0.3
    weak_w[0, 0, :, 3] = 0.1
    weak = head_statistics(weak_w)
    report = AttentionReport({"sharp": sharp, "weak": weak})
    rgb, colourful, _ = _read(ag.plot_attention(report, tmp_path / "shared.png"))
    panel, _bar = _runs(colourful.any(axis=0))
    rows = _runs(colourful[:, panel[0]:panel[1]].any(axis=1))
    assert len(rows) == 2

    def has_top(r: tuple[int, int]) -> bool:
        block = rgb[r[0]:r[1], panel[0]:panel[1]]
        return bool((np.abs(block - VIRIDIS_TOP).max(-1) < 40).any())

    assert has_top(rows[0]) and not has_top(rows[1])


def test_heat_map_layers_with_different_head_counts(tmp_path) -> None:
    """Rows of 3 and 2 heads: the grid has 3 columns, the second row leaves its last cell empty."""
    wide = head_statistics(np.concatenate([_synthetic(k, n=5) for k in
                                           ("self", "first", "broad")], axis=1))
    narrow = head_statistics(np.concatenate([_synthetic(k, n=5) for k in
                                             ("previous", "local")], axis=1))
    report = AttentionReport({"wide": wide, "narrow": narrow})
    _, colourful, _ = _read(ag.plot_attention(report, tmp_path / "mixed.png"))
    *panels, _bar = _runs(colourful.any(axis=0))
    assert len(panels) == 3
    first_rows = _runs(colourful[:, panels[0][0]:panels[0][1]].any(axis=1))
    last_rows = _runs(colourful[:, panels[2][0]:panels[2][1]].any(axis=1))
    assert len(first_rows) == 2 and len(last_rows) == 1


def test_heat_map_errors(tmp_path) -> None:
    report = AttentionReport({"a": head_statistics(_synthetic("self", n=4))})
    with pytest.raises(ag.ConfigError, match="tokens has 3 labels for 4 positions"):
        ag.plot_attention(report, tmp_path / "x.png", tokens=["a", "b", "c"])
    with pytest.raises(ag.ConfigError, match="no layer"):
        ag.plot_attention(report, tmp_path / "x.png", layer="b")
    with pytest.raises(ag.ConfigError, match="head 3 is not a head of these layers"):
        ag.plot_attention(report, tmp_path / "x.png", heads=[3])
    assert not list(tmp_path.iterdir())


# -- head importance by ablation -------------------------------------------------------------


def _planted(dominant: tuple[str, int]) -> tuple[ag.Model, dict, dict]:
    """Two attention layers of 3 heads whose output kernels are zero except for one head's."""
    x = ag.input("x", ("batch", "seq", 12))
    h = ag.multi_head_attention(x, num_heads=3, causal=True, name="l0")
    h = ag.add(h, x)
    h = ag.multi_head_attention(h, num_heads=3, value_dim=5, name="l1")
    model = ag.Model(x, h)
    params = model.init(seed=3)
    for layer, dv in (("l0", 4), ("l1", 5)):
        kernel = params[f"{layer}.output.kernel"]
        for head in range(3):
            if (layer, head) != dominant:
                kernel[head * dv:(head + 1) * dv] = 0.0
    return model, params, {"x": randn(2, 5, 12, seed=8)}


@pytest.mark.parametrize("dominant", [("l1", 2), ("l1", 0)])
def test_head_importance_finds_the_planted_head(dominant: tuple[str, int]) -> None:
    model, params, feeds = _planted(dominant)
    ranking = ag.head_importance(model, params, feeds)
    assert len(ranking) == 6
    assert (ranking[0].layer, ranking[0].head) == dominant
    assert ranking[0].score > 1e-3 and all(r.score == 0.0 for r in ranking[1:])
    by_max = ag.head_importance(model, params, feeds, metric="max_abs", layers=["l1"])
    assert (by_max[0].layer, by_max[0].head) == dominant and len(by_max) == 3


def test_head_importance_with_a_loss() -> None:
    model, params, feeds = _planted(("l1", 1))
    target = model.predict(params, feeds)["output"]

    def loss(outputs: dict) -> float:
        return float(((outputs["output"] - target) ** 2).mean())

    ranking = ag.head_importance(model, params, feeds, metric=loss, layers=["l1"])
    assert ranking[0].head == 1 and ranking[0].score > 0
    with pytest.raises(ag.ConfigError, match="metric must be one of"):
        ag.head_importance(model, params, feeds, metric="kl")
    with pytest.raises(ag.ConfigError, match="layers must name attention layers"):
        ag.head_importance(model, params, feeds, layers=["nope"])


def test_head_importance_of_a_module_with_separate_key_and_value() -> None:
    """attention_module with separate inputs is dense layers around one `attention` node: its
    heads are ablated through the `{name}.output` projection."""
    q = ag.input("q", ("batch", "seq", 10))
    k = ag.input("k", ("batch", "kv", 6))
    v = ag.input("v", ("batch", "kv", 7))
    y = ag.attention_module(q, k, v, num_heads=3, key_dim=4, value_dim=5, use_residual=False,
                            use_layer_norm=False, name="mem")
    model = ag.Model([q, k, v], y)
    params = model.init(seed=2)
    params["mem.output.kernel"][:5] = 0.0  # heads 0 and 2 add nothing
    params["mem.output.kernel"][10:] = 0.0
    feeds = {"q": randn(2, 4, 10, seed=1), "k": randn(2, 6, 6, seed=2),
             "v": randn(2, 6, 7, seed=3)}
    ranking = ag.head_importance(model, params, feeds)
    assert (ranking[0].layer, ranking[0].head) == ("mem", 1)
    assert ranking[0].score > 1e-3 and ranking[1].score == ranking[2].score == 0.0
