"""Edifice-style sliding-window attention model with Edifice's defaults (window 60,
4 heads x 64, 2 layers, ffn 256), returning [batch, hidden] from the last position.

    python examples/sliding_window.py     # exports it for every target into exported/
"""

from __future__ import annotations

import numpy as np

import attngraph as ag

EMBED_DIM = 32  # size of each input frame


def build() -> tuple[ag.Model, dict[str, np.ndarray]]:
    model = ag.models.sliding_window(EMBED_DIM)  # window_size=60, num_heads=4, head_dim=64 ...
    return model, model.init(seed=0)


def feeds(batch: int = 2, seq: int = 80) -> dict[str, np.ndarray]:
    """80 frames: longer than the window, so the window matters."""
    rng = np.random.default_rng(0)
    return {"input": rng.standard_normal((batch, seq, EMBED_DIM)).astype(np.float32)}


if __name__ == "__main__":
    from _export_util import export_example

    export_example("sliding_window", build)
