"""ag.analyze: per-layer, per-head weights and statistics; heat maps."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import randn

import attngraph as ag
from attngraph.analysis import head_statistics


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
