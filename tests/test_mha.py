"""multi_head_attention (projections + attention, one node) on every target."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_parity, randn

import attngraph as ag

B, S, E = 2, 7, 30


def mha_model(num_heads: int = 6, ctx_len: object = None, ctx_dim: int = 14, kpm: bool = False,
              **opts: object) -> ag.Model:
    x = ag.input("x", ("batch", "seq", E))
    inputs = [x]
    ctx = None
    if ctx_len is not None:
        ctx = ag.input("ctx", ("batch", "ctx_seq", ctx_dim))
        inputs.append(ctx)
    extra = {}
    if kpm:
        extra["key_padding_mask"] = ag.input("kpm", ("batch", "ctx_seq" if ctx else "seq"), "bool")
        inputs.append(extra["key_padding_mask"])
    y = ag.multi_head_attention(x, ctx, num_heads=num_heads, name="attn", **extra, **opts)
    return ag.Model(inputs, y)


def feeds(ctx_len: int | None = None, ctx_dim: int = 14) -> dict[str, np.ndarray]:
    f = {"x": randn(B, S, E, seed=11)}
    if ctx_len is not None:
        f["ctx"] = randn(B, ctx_len, ctx_dim, seed=12)
    return f


@pytest.mark.parametrize("kv", [None, 1, 3])
@pytest.mark.parametrize("causal", [False, True])
def test_self_attention_mha_mqa_gqa(target: str, kv: int | None, causal: bool) -> None:
    assert_parity(mha_model(num_kv_heads=kv, causal=causal), None, feeds(), target)


@pytest.mark.parametrize("kv", [None, 2])
def test_sliding_window_self_attention(target: str, kv: int | None) -> None:
    assert_parity(mha_model(num_kv_heads=kv, window=3), None, feeds(), target)


def test_cross_attention_other_length_and_dim(target: str) -> None:
    assert_parity(mha_model(ctx_len=9), None, feeds(ctx_len=9), target)


def test_cross_attention_gqa_with_padding(target: str) -> None:
    f = feeds(ctx_len=4)
    f["kpm"] = np.array([[1, 1, 1, 0], [1, 0, 0, 0]], bool)
    assert_parity(mha_model(ctx_len=4, kpm=True, num_kv_heads=2), None, f, target)


def test_causal_cross_attention_is_bottom_right(target: str) -> None:
    """Sq=7 queries over Sk=9 keys: query i attends keys j <= 2 + i."""
    assert_parity(mha_model(ctx_len=9, causal=True), None, feeds(ctx_len=9), target)


def test_self_attention_padding_causal_softcap(target: str) -> None:
    f = feeds()
    f["kpm"] = np.ones((B, S), bool)
    f["kpm"][1, :2] = False
    model = mha_model(kpm=True, causal=True, num_kv_heads=2, softcap=3.0)
    assert_parity(model, None, f, target)


def test_head_dim_out_dim_no_bias(target: str) -> None:
    model = mha_model(num_heads=4, head_dim=5, out_dim=11, use_bias=False)
    assert model.outputs["output"].shape == ("batch", "seq", 11)
    assert "attn.query.bias" not in model.param_shapes
    assert model.param_shapes["attn.query.kernel"] == (E, 20)
    assert_parity(model, None, feeds(), target)


def test_return_weights(target: str) -> None:
    x = ag.input("x", ("batch", "seq", E))
    y, w = ag.multi_head_attention(x, num_heads=3, causal=True, return_weights=True)
    model = ag.Model(x, {"y": y, "weights": w})
    ref = assert_parity(model, None, feeds(), target)
    np.testing.assert_allclose(ref["weights"].sum(-1), 1.0, atol=1e-5)
    assert np.all(np.triu(ref["weights"][0, 0], 1) == 0)


ROUTES = [  # (options, embed, heads, the fused op the "ort" target should pick)
    ({"causal": True}, 48, 6, "GroupQueryAttention"),
    ({"window": 3}, 48, 6, "GroupQueryAttention"),
    ({"num_kv_heads": 2}, 48, 6, "Attention"),  # GroupQueryAttention is causal only
    ({"softcap": 2.0, "window": (2, 1)}, 48, 6, "Attention"),
    ({}, 48, 6, "MultiHeadAttention"),
    ({"window": (1, 2)}, 48, 6, "MultiHeadAttention"),
    ({"causal": True}, 30, 6, "MultiHeadAttention"),  # head_size 5: no GQA
    ({"num_kv_heads": 2, "causal": True}, 30, 6, "Attention"),
    ({"softcap": 2.0}, 30, 6, "Attention"),
]


@pytest.mark.parametrize("opts,embed,heads,op", ROUTES)
def test_ort_routing_and_parity(opts: dict, embed: int, heads: int, op: str) -> None:
    """Each route of the "ort" target, with padding so masks and dead rows are exercised."""
    x = ag.input("x", ("batch", "seq", embed))
    kpm = ag.input("kpm", ("batch", "seq"), "bool")
    model = ag.Model([x, kpm], ag.multi_head_attention(x, num_heads=heads, key_padding_mask=kpm,
                                                       **opts))
    # The routes of the direct form; windows default to the blocked form (test_window_blocked)
    proto = ag.export(model, model.init(), target="ort", window_impl="direct")
    fused = [n.op_type for n in proto.graph.node if n.op_type in
             ("GroupQueryAttention", "MultiHeadAttention", "Attention")]
    assert fused == [op]
    pad = np.ones((B, S), bool)
    pad[1, :3] = False  # left padding: with causal, the first rows of batch 1 see nothing
    f = {"x": randn(B, S, embed, seed=13), "kpm": pad}
    ref = assert_parity(model, None, f, "ort")["output"]
    if opts.get("causal") or isinstance(opts.get("window"), int):
        assert np.all(ref[1, :3] == 0)


@pytest.mark.parametrize("embed,heads,kv,rotary_dim,interleaved", [
    (64, 4, 2, None, False),   # head 16: fused into GroupQueryAttention on "ort"
    (64, 4, 2, None, True),
    (48, 6, 6, 6, False),      # partial rotary, head 8: applied before the attention node
    (30, 6, 3, 4, True),       # head 5 (odd), interleaved partial
])
def test_rope(target: str, embed: int, heads: int, kv: int, rotary_dim: int | None,
              interleaved: bool) -> None:
    x = ag.input("x", ("batch", "seq", embed))
    y = ag.multi_head_attention(x, num_heads=heads, num_kv_heads=kv, causal=True, rope=True,
                                rotary_dim=rotary_dim, rope_interleaved=interleaved)
    model = ag.Model(x, y)
    f = {"x": randn(B, S, embed, seed=14)}
    no_rope = ag.Model(x, ag.multi_head_attention(x, num_heads=heads, num_kv_heads=kv,
                                                  causal=True, name=y.node.name))
    params = model.init(seed=3)
    assert np.abs(model.predict(params, f)["output"] - no_rope.predict(params, f)["output"]
                  ).max() > 1e-3
    assert_parity(model, params, f, target)


def test_rope_reference_by_hand() -> None:
    """Position p turns pair (x0, x_{r/2}) of a half-split head by p * base^0 = p radians."""
    from attngraph.ops._rope import rope_reference

    x = np.zeros((1, 1, 3, 4), np.float32)
    x[..., 0] = 1.0
    out = rope_reference(x, 4, 10000.0, interleaved=False)
    np.testing.assert_allclose(out[0, 0, :, 0], np.cos([0, 1, 2]), atol=1e-6)
    np.testing.assert_allclose(out[0, 0, :, 2], np.sin([0, 1, 2]), atol=1e-6)
    out_i = rope_reference(x, 4, 10000.0, interleaved=True)
    np.testing.assert_allclose(out_i[0, 0, :, 1], np.sin([0, 1, 2]), atol=1e-6)


def test_qk_layernorm(target: str) -> None:
    x = ag.input("x", ("batch", "seq", 48))
    model = ag.Model(x, ag.multi_head_attention(x, num_heads=6, qk_layernorm=True, causal=True,
                                                rope=True, name="attn"))
    params = model.init(seed=4)
    params["attn.q_norm.scale"] = np.linspace(0.5, 2, 8).astype(np.float32)
    params["attn.k_norm.bias"] = np.linspace(-1, 1, 8).astype(np.float32)
    assert_parity(model, params, {"x": randn(B, S, 48, seed=15) * 3}, target)
