"""A small T5 (encoder-decoder, relative-position buckets, cross-attention).

    python examples/t5.py     # exports it for every target into exported/
"""

from __future__ import annotations

import numpy as np

import attngraph as ag

VOCAB = 97


def build() -> tuple[ag.Model, dict[str, np.ndarray]]:
    model = ag.models.t5(vocab_size=VOCAB, d_model=48, d_kv=8, d_ff=96, num_layers=2,
                         num_heads=6, relative_attention_num_buckets=16,
                         relative_attention_max_distance=32)
    return model, model.init(seed=0)


def feeds(batch: int = 2, seq: int = 10, dec_seq: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    mask = np.ones((batch, seq), np.int64)
    mask[-1, 7:] = 0
    return {"input_ids": rng.integers(0, VOCAB, (batch, seq)), "attention_mask": mask,
            "decoder_input_ids": rng.integers(0, VOCAB, (batch, dec_seq))}


if __name__ == "__main__":
    from _export_util import export_example

    export_example("t5", build)
