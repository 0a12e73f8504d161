"""Edifice-style hybrid: frames -> LSTM -> self-attention -> [batch, hidden] (small config).

    python examples/hybrid.py     # exports it for every target into exported/
"""

from __future__ import annotations

import numpy as np

import attngraph as ag

EMBED_DIM = 16


def build() -> tuple[ag.Model, dict[str, np.ndarray]]:
    model = ag.models.hybrid(EMBED_DIM, lstm_hidden=32, num_heads=4, head_dim=16)
    return model, model.init(seed=0)


def feeds(batch: int = 2, seq: int = 20) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"input": rng.standard_normal((batch, seq, EMBED_DIM)).astype(np.float32)}


if __name__ == "__main__":
    from _export_util import export_example

    export_example("hybrid", build)
