"""A small GPT-style causal language model: token + learned position embeddings, pre-norm
causal transformer blocks, a final norm and an LM head.

    python examples/gpt_small.py     # exports it for every target into exported/
"""

from __future__ import annotations

import numpy as np

import attngraph as ag

VOCAB, EMBED, HEADS, LAYERS, FFN, MAX_LEN = 97, 64, 4, 2, 128, 64


def build() -> tuple[ag.Model, dict[str, np.ndarray]]:
    ids = ag.input("input_ids", ("batch", "seq"), "int64")
    h = ag.embedding(ids, VOCAB, EMBED, name="wte")
    h = ag.positional_encoding(h, "learned", max_len=MAX_LEN, name="wpe")
    for i in range(LAYERS):
        h = ag.transformer_block(h, num_heads=HEADS, ffn_dim=FFN, causal=True,
                                 activation="gelu", name=f"h.{i}")
    logits = ag.dense(ag.layer_norm(h, name="ln_f"), VOCAB, use_bias=False, name="lm_head")
    model = ag.Model(ids, {"logits": logits}, name="gpt_small")
    return model, model.init(seed=0)


def feeds(batch: int = 2, seq: int = 12) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"input_ids": rng.integers(0, VOCAB, (batch, seq))}


if __name__ == "__main__":
    from _export_util import export_example

    export_example("gpt_small", build)
