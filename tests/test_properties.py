"""Invariants checked with hypothesis on the reference (and one fused target)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import attngraph as ag
from attngraph.ops._attention_math import attention_reference, merge_heads, split_heads


@settings(max_examples=30, deadline=None)
@given(b=st.integers(1, 3), s=st.integers(1, 6), h=st.integers(1, 4), d=st.integers(1, 5),
       seed=st.integers(0, 1000))
def test_split_merge_heads_roundtrip(b: int, s: int, h: int, d: int, seed: int) -> None:
    x = np.random.default_rng(seed).standard_normal((b, s, h * d)).astype(np.float32)
    assert np.array_equal(merge_heads(split_heads(x, h)), x)


@settings(max_examples=30, deadline=None)
@given(s=st.integers(2, 9), cut=st.integers(1, 8), window=st.one_of(st.none(), st.integers(1, 5)),
       seed=st.integers(0, 1000))
def test_causal_outputs_ignore_future_tokens(s: int, cut: int, window: int | None,
                                             seed: int) -> None:
    cut = min(cut, s - 1)
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((1, 2, s, 4)).astype(np.float32) for _ in range(3))
    out, _ = attention_reference(q, k, v, causal=True, window=window)
    k2, v2 = k.copy(), v.copy()
    k2[:, :, cut:] += 5.0  # change only the future of position cut-1
    v2[:, :, cut:] -= 3.0
    out2, _ = attention_reference(q, k2, v2, causal=True, window=window)
    np.testing.assert_allclose(out[:, :, :cut], out2[:, :, :cut], atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(sq=st.integers(1, 6), sk=st.integers(1, 6), seed=st.integers(0, 1000),
       causal=st.booleans(), p=st.floats(0.0, 1.0))
def test_weights_rows_sum_to_one_or_zero(sq: int, sk: int, seed: int, causal: bool,
                                         p: float) -> None:
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((2, 3, sq, 4)).astype(np.float32)
    k, v = (rng.standard_normal((2, 3, sk, 4)).astype(np.float32) for _ in range(2))
    mask = rng.random((2, 1, sq, sk)) < p
    out, w = attention_reference(q, k, v, mask=mask, causal=causal)
    sums = w.sum(-1)
    assert np.all(np.isclose(sums, 1.0, atol=1e-5) | (sums == 0))
    assert not np.isnan(out).any()
    assert np.all(out[sums == 0] == 0)


@settings(max_examples=8, deadline=None)
@given(s=st.integers(1, 9), seed=st.integers(0, 100), window=st.integers(1, 6))
def test_fused_window_matches_reference_at_any_length(s: int, seed: int, window: int) -> None:
    x = ag.input("x", ("batch", "seq", 16))
    model = ag.Model(x, ag.multi_head_attention(x, num_heads=2, window=window))
    params = model.init(seed=seed)
    feeds = {"x": np.random.default_rng(seed).standard_normal((1, s, 16)).astype(np.float32)}
    got = ag.Session(ag.export(model, params, target="ort"), ["CPUExecutionProvider"]).run(feeds)
    np.testing.assert_allclose(got["output"], model.predict(params, feeds)["output"], atol=1e-4)
