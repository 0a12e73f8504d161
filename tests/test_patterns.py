"""Sparse patterns (strided, block-sparse) and mask helpers: each checked against a mask written
out by hand, on the reference and every target; each test first checks that the pattern
changes the output, so a target that dropped it would fail."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_parity, randn, run_target

import attngraph as ag

B, S, E, H = 2, 11, 12, 3


def hand_strided(sq: int, sk: int, stride: int, window: int, causal: bool) -> np.ndarray:
    allow = np.zeros((sq, sk), bool)
    for i in range(sq):
        p = sk - sq + i
        for j in range(sk):
            every_stride = (p - j) % stride == 0
            near = (0 <= p - j < window) if causal else (-window < p - j < window)
            allow[i, j] = (every_stride or near) and (j <= p or not causal)
    return allow


def hand_blocks(sq: int, sk: int, size: int, layout: list[list[int]], causal: bool) -> np.ndarray:
    allow = np.zeros((sq, sk), bool)
    for i in range(sq):
        p = sk - sq + i
        for j in range(sk):
            qb, kb = p // size, j // size
            if qb < len(layout) and kb < len(layout[0]) and layout[qb][kb]:
                allow[i, j] = j <= p or not causal
    return allow


def test_mask_helpers_by_hand() -> None:
    np.testing.assert_array_equal(ag.causal_mask(3), [[1, 0, 0], [1, 1, 0], [1, 1, 1]])
    np.testing.assert_array_equal(ag.window_mask(4, 2), [[1, 0, 0, 0], [1, 1, 0, 0],
                                                         [0, 1, 1, 0], [0, 0, 1, 1]])
    np.testing.assert_array_equal(ag.window_mask(3, (0, 1)), [[1, 1, 0], [0, 1, 1], [0, 0, 1]])
    np.testing.assert_array_equal(ag.strided_mask(9, 3, window=2),
                                  hand_strided(9, 9, 3, 2, True))
    np.testing.assert_array_equal(ag.strided_mask(9, 4, causal=False),
                                  hand_strided(9, 9, 4, 4, False))
    layout = [[1, 0, 1], [0, 1, 0], [1, 1, 1]]
    np.testing.assert_array_equal(ag.block_sparse_mask(8, 3, layout, causal=True),
                                  hand_blocks(8, 8, 3, layout, True))
    with pytest.raises(ag.ConfigError, match="window_mask.*window must be >= 1"):
        ag.window_mask(4, 0)
    with pytest.raises(ag.ConfigError, match="layout must be a 2-d array"):
        ag.block_sparse_mask(4, 2, [1, 0])
    with pytest.raises(ag.ConfigError, match="causal_mask: n must be a positive int"):
        ag.causal_mask(0)


def _pair(pattern: str, cross: bool, **opts: object) -> tuple[ag.Model, ag.Model]:
    """(model using the pattern builder, the same layer fed an explicit mask input)."""
    x = ag.input("x", ("batch", "seq", E))
    ctx = ag.input("c", ("batch", "kv", 5)) if cross else None
    src = x if ctx is None else ctx
    build = ag.strided_pattern if pattern == "strided" else ag.block_sparse_pattern
    allow = build(x, src, **opts)
    y = ag.multi_head_attention(x, ctx, num_heads=H, mask=allow, name="attn")
    inputs = [x] if ctx is None else [x, ctx]
    with_pattern = ag.Model(inputs, {"y": y, "allow": allow})
    m = ag.input("m", ("q", "k"), "bool")
    x2 = ag.input("x", ("batch", "seq", E))
    ctx2 = ag.input("c", ("batch", "kv", 5)) if cross else None
    y2 = ag.multi_head_attention(x2, ctx2, num_heads=H, mask=m, name="attn")
    explicit = ag.Model([x2, m] if ctx2 is None else [x2, ctx2, m], y2)
    return with_pattern, explicit


CASES = [
    ("strided", False, {"stride": 3, "window": 2, "causal": True}),
    ("strided", False, {"stride": 4, "window": 1, "causal": False}),
    ("strided", True, {"stride": 3, "causal": True}),
    ("blocks", False, {"block_size": 3, "layout": [[1, 0, 0, 1], [0, 1, 0, 0], [1, 0, 1, 0],
                                                   [0, 1, 1, 1]], "causal": False}),
    ("blocks", False, {"block_size": 4, "layout": [[1, 1, 0], [0, 1, 0], [1, 0, 1]],
                       "causal": True}),
    ("blocks", True, {"block_size": 2, "layout": np.eye(6, dtype=bool) | np.eye(6, k=1, dtype=bool),
                      "causal": False}),
]


@pytest.mark.parametrize("pattern,cross,opts", CASES)
def test_pattern_on_every_target_matches_hand_written_mask(target: str, pattern: str,
                                                           cross: bool, opts: dict) -> None:
    model, explicit = _pair(pattern, cross, **opts)
    sk = 13 if cross else S
    feeds = {"x": randn(B, S, E, seed=4)}
    if cross:
        feeds["c"] = randn(B, sk, 5, seed=5)
    if pattern == "strided":
        hand = hand_strided(S, sk, opts["stride"], opts.get("window", opts["stride"]),
                            opts["causal"])
    else:
        hand = hand_blocks(S, sk, opts["block_size"], np.asarray(opts["layout"]).tolist(),
                           opts["causal"])
    params = model.init(seed=2)
    expected = explicit.predict(params, {**feeds, "m": hand})["output"]
    unmasked = explicit.predict(params, {**feeds, "m": np.ones_like(hand)})["output"]
    assert np.abs(expected - unmasked).max() > 1e-2  # the pattern matters here
    ref = assert_parity(model, params, feeds, target)
    np.testing.assert_array_equal(ref["allow"][0, 0], hand)
    got = run_target(model, params, feeds, target)
    np.testing.assert_array_equal(got["allow"][0, 0], hand)
    np.testing.assert_allclose(got["y"], expected, atol=1e-4)


def test_pattern_follows_the_run_time_length(target: str) -> None:
    """One export, two sequence lengths: the mask is built from the run-time sizes."""
    model, _ = _pair("strided", False, stride=2, window=1, causal=True)
    params = model.init(seed=3)
    for n in (4, 9):
        got = run_target(model, params, {"x": randn(1, n, E, seed=n)}, target)
        np.testing.assert_array_equal(got["allow"][0, 0], hand_strided(n, n, 2, 1, True))


def test_pattern_errors() -> None:
    x = ag.input("x", ("batch", "seq", E))
    with pytest.raises(ag.ConfigError, match="strided_pattern 'sp': stride must be a positive"):
        ag.strided_pattern(x, stride=0, name="sp")
    with pytest.raises(ag.ConfigError, match="block_sparse_pattern: layout must be"):
        ag.block_sparse_pattern(x, block_size=2, layout=[[2, 0]])
    with pytest.raises(ag.ShapeError, match="query source"):
        ag.strided_pattern(ag.input("v", (3,)), stride=2)
