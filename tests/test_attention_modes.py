"""Memory-lean reference modes equal the standard one; memory_efficient holds no [Sq, Sk]."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from conftest import randn

import attngraph as ag


def model_with(**opts: object) -> ag.Model:
    x = ag.input("x", ("batch", "seq", 24))
    ctx = ag.input("ctx", ("batch", "ctx_seq", 24))
    mask = ag.input("mask", ("batch", 1, "seq", "ctx_seq"), "bool")
    y = ag.multi_head_attention(x, ctx, num_heads=4, num_kv_heads=2, mask=mask, **opts)
    return ag.Model([x, ctx, mask], y)


@pytest.mark.parametrize("mode", ["chunked", "memory_efficient"])
@pytest.mark.parametrize("opts", [{}, {"causal": True}, {"window": 3}, {"window": (2, 1)},
                                  {"softcap": 1.5, "causal": True}])
@pytest.mark.parametrize("chunk", [1, 4, 64])
def test_modes_equal_standard(mode: str, opts: dict, chunk: int) -> None:
    model = model_with(**opts)
    params = model.init(seed=3)
    mask = np.random.default_rng(1).random((2, 1, 9, 13)) > 0.25
    mask[1, 0, 4] = False  # a fully masked row
    feeds = {"x": randn(2, 9, 24, seed=1), "ctx": randn(2, 13, 24, seed=2), "mask": mask}
    standard = model.predict(params, feeds)["output"]
    lean = model.predict(params, feeds, attention=mode, chunk_size=chunk)["output"]
    np.testing.assert_allclose(lean, standard, atol=1e-5)


def test_additive_mask_and_padding_in_lean_modes() -> None:
    x = ag.input("x", ("batch", "seq", 16))
    kpm = ag.input("kpm", ("batch", "seq"), "bool")
    bias = ag.alibi_bias(x, num_heads=2)
    model = ag.Model([x, kpm], ag.multi_head_attention(x, num_heads=2, key_padding_mask=kpm,
                                                       mask=bias, causal=True))
    params = model.init()
    pad = np.ones((2, 11), bool)
    pad[1, :4] = False
    feeds = {"x": randn(2, 11, 16), "kpm": pad}
    standard = model.predict(params, feeds)["output"]
    for mode in ("chunked", "memory_efficient"):
        np.testing.assert_allclose(model.predict(params, feeds, attention=mode, chunk_size=3)
                                   ["output"], standard, atol=1e-5)


def test_memory_efficient_never_allocates_a_score_matrix() -> None:
    s, chunk = 1024, 32
    q = ag.input("q", (1, 1, s, 16))
    model = ag.Model(q, ag.scaled_dot_product_attention(q, q, q, causal=True))
    feeds = {"q": randn(1, 1, s, 16)}
    score_bytes = s * s * 4

    def peak(mode: str) -> int:
        tracemalloc.start()
        model.predict({}, feeds, attention=mode, chunk_size=chunk)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    assert peak("standard") > score_bytes  # the check can see a score matrix
    assert peak("memory_efficient") < score_bytes / 4


def test_bad_mode() -> None:
    model = model_with()
    with pytest.raises(ag.ConfigError, match="attention must be one of"):
        model.predict(model.init(), {}, attention="flash")
