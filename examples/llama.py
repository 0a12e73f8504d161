"""A small Llama (RoPE, grouped-query attention, RMSNorm, SwiGLU).

    python examples/llama.py     # exports it for every target into exported/
"""

from __future__ import annotations

import numpy as np

import attngraph as ag

VOCAB = 97


def build() -> tuple[ag.Model, dict[str, np.ndarray]]:
    model = ag.models.llama(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    return model, model.init(seed=0)


def feeds(batch: int = 2, seq: int = 12) -> dict[str, np.ndarray]:
    return {"input_ids": np.random.default_rng(0).integers(0, VOCAB, (batch, seq))}


if __name__ == "__main__":
    from _export_util import export_example

    export_example("llama", build)
