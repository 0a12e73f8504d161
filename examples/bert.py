"""A small BERT encoder (segment embeddings, padding mask, post-norm, pooler).

    python examples/bert.py     # exports it for every target into exported/
"""

from __future__ import annotations

import numpy as np

import attngraph as ag

VOCAB = 101


def build() -> tuple[ag.Model, dict[str, np.ndarray]]:
    model = ag.models.bert(vocab_size=VOCAB, hidden_size=48, num_hidden_layers=2,
                           num_attention_heads=6, intermediate_size=96,
                           max_position_embeddings=64)
    return model, model.init(seed=0)


def feeds(batch: int = 2, seq: int = 9) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    mask = np.ones((batch, seq), np.int64)
    mask[-1, seq // 2:] = 0  # right padding in the last sequence
    return {"input_ids": rng.integers(0, VOCAB, (batch, seq)),
            "token_type_ids": (np.arange(seq) >= seq // 3).astype(np.int64)[None].repeat(batch, 0),
            "attention_mask": mask}


if __name__ == "__main__":
    from _export_util import export_example

    export_example("bert", build)
