"""Edifice-style sliding-window attention model (Edifice's defaults: window 60, 4 heads x 64,
2 layers, ffn 256), returning [batch, hidden] from the last position.

    python examples/sliding_window.py     # exports it for every target into exported/
"""

from __future__ import annotations

import numpy as np

import attngraph as ag

EMBED_DIM = 32  # size of each input frame
WINDOW, HEADS, HEAD_DIM, LAYERS, FFN = 60, 4, 64, 2, 256


def build() -> tuple[ag.Model, dict[str, np.ndarray]]:
    frames = ag.input("frames", ("batch", "seq", EMBED_DIM))
    hidden = HEADS * HEAD_DIM
    h = ag.dense(frames, hidden, name="input_proj")
    h = ag.positional_encoding(h, "sinusoidal", name="pos")
    for i in range(LAYERS):
        h = ag.transformer_block(h, num_heads=HEADS, head_dim=HEAD_DIM, ffn_dim=FFN,
                                 window=WINDOW, norm_position="post", dropout=0.1,
                                 name=f"layers.{i}")
    out = ag.last_timestep(h, name="last")
    model = ag.Model(frames, {"hidden": out}, name="sliding_window")
    return model, model.init(seed=0)


def feeds(batch: int = 2, seq: int = 80) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"frames": rng.standard_normal((batch, seq, EMBED_DIM)).astype(np.float32)}


if __name__ == "__main__":
    from _export_util import export_example

    export_example("sliding_window", build)
