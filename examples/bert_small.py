"""A small BERT-style bidirectional encoder: token + learned position embeddings, a padding
mask, post-norm transformer blocks and a masked mean pool.

    python examples/bert_small.py     # exports it for every target into exported/
"""

from __future__ import annotations

import numpy as np

import attngraph as ag

VOCAB, EMBED, HEADS, LAYERS, FFN, MAX_LEN = 101, 48, 6, 2, 96, 64


def build() -> tuple[ag.Model, dict[str, np.ndarray]]:
    ids = ag.input("input_ids", ("batch", "seq"), "int64")
    mask = ag.input("attention_mask", ("batch", "seq"), "bool")
    h = ag.embedding(ids, VOCAB, EMBED, name="embeddings.word")
    h = ag.positional_encoding(h, "learned", max_len=MAX_LEN, name="embeddings.position")
    h = ag.layer_norm(h, name="embeddings.norm")
    for i in range(LAYERS):
        h = ag.transformer_block(h, num_heads=HEADS, ffn_dim=FFN, key_padding_mask=mask,
                                 norm_position="post", name=f"encoder.{i}")
    pooled = ag.mean_pool(h, mask, name="pool")
    model = ag.Model([ids, mask], {"last_hidden_state": h, "pooled": pooled}, name="bert_small")
    return model, model.init(seed=0)


def feeds(batch: int = 2, seq: int = 9) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    mask = np.ones((batch, seq), bool)
    mask[-1, seq // 2:] = False  # right padding in the last sequence
    return {"input_ids": rng.integers(0, VOCAB, (batch, seq)), "attention_mask": mask}


if __name__ == "__main__":
    from _export_util import export_example

    export_example("bert_small", build)
