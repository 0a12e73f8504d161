"""The model zoo: every preset (small configs) against the reference on every target, with
one fused attention node per attention layer."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_parity, randn

import attngraph as ag
from attngraph import models
from attngraph._export._builder import all_nodes

FUSED = {"MultiHeadAttention", "GroupQueryAttention", "Attention"}
rng = np.random.default_rng(0)
IDS = rng.integers(0, 50, (2, 11))
MASK = np.ones((2, 11), np.int64)
MASK[1, 8:] = 0

PRESETS = {
    # name: (builder, feeds, number of attention layers)
    "sliding_window": (lambda: models.sliding_window(12, window_size=4, num_heads=2, head_dim=8,
                                                     ffn_dim=24),
                       {"input": randn(2, 11, 12)}, 2),
    "hybrid": (lambda: models.hybrid(12, lstm_hidden=10, num_heads=2, head_dim=8),
               {"input": randn(2, 11, 12)}, 1),
    "hybrid_mlp": (lambda: models.hybrid_mlp(12, lstm_hidden=10, lstm_layers=2, num_heads=2,
                                             head_dim=8, mlp_sizes=(9, 5)),
                   {"input": randn(2, 11, 12)}, 1),
    "gpt": (lambda: models.gpt(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=4),
            {"input_ids": IDS}, 2),
    "bert": (lambda: models.bert(vocab_size=50, hidden_size=24, num_hidden_layers=2,
                                 num_attention_heads=3, intermediate_size=40,
                                 max_position_embeddings=16),
             {"input_ids": IDS, "token_type_ids": (IDS > 25).astype(np.int64),
              "attention_mask": MASK}, 2),
    "llama": (lambda: models.llama(vocab_size=50, hidden_size=64, intermediate_size=72,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2),
              {"input_ids": IDS}, 2),
    "mistral": (lambda: models.mistral(vocab_size=50, hidden_size=64, intermediate_size=72,
                                       num_hidden_layers=2, num_attention_heads=4,
                                       num_key_value_heads=1, sliding_window=4),
                {"input_ids": IDS}, 2),
    "t5": (lambda: models.t5(vocab_size=50, d_model=32, d_kv=8, d_ff=40, num_layers=2,
                             num_decoder_layers=1, num_heads=4,
                             relative_attention_num_buckets=8,
                             relative_attention_max_distance=20),
           {"input_ids": IDS, "attention_mask": MASK, "decoder_input_ids": IDS[:, :7]}, 4),
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_parity_and_fused_nodes(name: str, target: str) -> None:
    build, feeds, n_attention = PRESETS[name]
    model = build()
    params = model.init(seed=1)
    assert_parity(model, params, feeds, target)
    if target != "decomposed":
        proto = ag.export(model, params, target=target)
        ops = [n.op_type for n in all_nodes(proto.graph)]  # windows: in a Scan body
        assert sum(op in FUSED for op in ops) == n_attention
        assert "Softmax" not in ops


def test_build_by_kind_and_edifice_helpers() -> None:
    assert models.recommended_defaults() == {"window_size": 60, "num_heads": 4, "head_dim": 64,
                                             "num_layers": 2, "ffn_dim": 256, "dropout": 0.1}
    assert models.output_size() == 256 and models.output_size(hidden_size=96) == 96
    model = models.build("attention", embed_dim=7)
    assert model.outputs["output"].shape == ("batch", 256)
    with pytest.raises(ag.ConfigError, match="unknown kind 'rnn'"):
        models.build("rnn")


def test_gpt_parameter_count_matches_gpt2_formula() -> None:
    """GPT-2's count for (V, P, E, L): V E + P E + L (12 E^2 + 13 E) + 2 E (tied head)."""
    v, p, e, n_layer = 50, 16, 32, 2
    model = models.gpt(vocab_size=v, n_positions=p, n_embd=e, n_layer=n_layer, n_head=4)
    total = sum(int(np.prod(s)) for s in model.param_shapes.values())
    assert total == v * e + p * e + n_layer * (12 * e * e + 13 * e) + 2 * e
    assert f"Total parameters: {total:,}" in model.summary()
