"""T5 relative-position buckets and ALiBi, fed to the fused attention node as a bias."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_parity, randn

import attngraph as ag
from attngraph.ops.position_bias import alibi_slopes, relative_buckets
from attngraph.position import alibi_bias, relative_position_bias


def test_t5_buckets_by_hand() -> None:
    rel = np.array([0, -1, 1, -7, -8, -20, 200, -500])
    got = relative_buckets(rel, True, 32, 128)
    # 16 buckets a side, 8 exact; 20 -> 8 + int(log(20/8) / log(16) * 8) = 10
    assert got.tolist() == [0, 1, 17, 7, 8, 10, 31, 15]
    causal = relative_buckets(np.array([0, -1, 5, -20, -1000]), False, 32, 128)
    # one side, 16 exact: 20 -> 16 + int(log(20/16) / log(8) * 16) = 17; future -> 0
    assert causal.tolist() == [0, 1, 0, 17, 31]


def test_alibi_slopes_match_the_paper() -> None:
    np.testing.assert_allclose(alibi_slopes(8), [2 ** -(i + 1) for i in range(8)])
    six = alibi_slopes(6)  # 4 of the power-of-two series, then every other one of 8's
    np.testing.assert_allclose(six, [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3])


@pytest.mark.parametrize("bidirectional", [True, False])
def test_shared_relative_bias_stack(target: str, bidirectional: bool) -> None:
    """One table shared by two layers (as in T5), on every target."""
    x = ag.input("x", ("batch", "seq", 48))
    bias = relative_position_bias(x, num_heads=6, num_buckets=8, max_distance=20,
                                  bidirectional=bidirectional, name="rel")
    h = x
    for i in range(2):
        h = ag.add(h, ag.multi_head_attention(h, num_heads=6, mask=bias, causal=not bidirectional,
                                              use_bias=False, name=f"l{i}"))
    model = ag.Model(x, h)
    assert [k for k in model.param_shapes if k.startswith("rel")] == ["rel.embeddings"]
    params = model.init(seed=5)
    params["rel.embeddings"] = randn(8, 6, seed=6)
    f = {"x": randn(2, 23, 48, seed=7)}
    plain = ag.Model(x, ag.multi_head_attention(x, num_heads=6, causal=not bidirectional,
                                                use_bias=False, name="l0"))
    sub = {k: v for k, v in params.items() if k.startswith("l0.")}
    with_bias = ag.Model([x], ag.multi_head_attention(x, num_heads=6, mask=bias, use_bias=False,
                                                      causal=not bidirectional, name="l0"))
    sub_b = {**sub, "rel.embeddings": params["rel.embeddings"]}
    assert np.abs(with_bias.predict(sub_b, f)["output"] - plain.predict(sub, f)["output"]).max() > 1e-3
    assert_parity(model, params, f, target)


def test_relative_bias_cross_lengths(target: str) -> None:
    q = ag.input("q", ("batch", "q_seq", 16))
    k = ag.input("k", ("batch", "kv_seq", 16))
    bias = relative_position_bias(q, k, num_heads=2, num_buckets=6, max_distance=9)
    model = ag.Model([q, k], ag.multi_head_attention(q, k, num_heads=2, mask=bias))
    params = model.init(seed=2)
    params[next(n for n in params if n.endswith("embeddings"))] = randn(6, 2, seed=3)
    assert_parity(model, params, {"q": randn(2, 5, 16), "k": randn(2, 12, 16, seed=1)}, target)


def test_alibi_causal(target: str) -> None:
    x = ag.input("x", ("batch", "seq", 48))
    model = ag.Model(x, ag.multi_head_attention(x, num_heads=6, causal=True,
                                                mask=alibi_bias(x, num_heads=6)))
    assert_parity(model, None, {"x": randn(2, 9, 48, seed=8) * 2}, target)


def test_bias_errors() -> None:
    x = ag.input("x", ("batch", "seq", 8))
    with pytest.raises(ag.ConfigError, match="num_buckets"):
        relative_position_bias(x, num_heads=2, num_buckets=2)
    with pytest.raises(ag.ConfigError, match="num_heads must be a positive int"):
        alibi_bias(x, num_heads=0)
