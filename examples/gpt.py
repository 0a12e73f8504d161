"""A small GPT-2 (tied LM head, learned positions, pre-norm causal blocks).

    python examples/gpt.py     # exports it for every target into exported/
"""

from __future__ import annotations

import numpy as np

import attngraph as ag

VOCAB = 97


def build() -> tuple[ag.Model, dict[str, np.ndarray]]:
    model = ag.models.gpt(vocab_size=VOCAB, n_positions=64, n_embd=64, n_layer=2, n_head=4)
    return model, model.init(seed=0)


def feeds(batch: int = 2, seq: int = 12) -> dict[str, np.ndarray]:
    return {"input_ids": np.random.default_rng(0).integers(0, VOCAB, (batch, seq))}


if __name__ == "__main__":
    from _export_util import export_example

    export_example("gpt", build)
