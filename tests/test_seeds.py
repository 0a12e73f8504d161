"""The seeds' remaining features: get_attention, attention_module, process_sequence and the
parameter / KV-cache tables, each on the reference and every target."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_parity, randn, run_target

import attngraph as ag
from attngraph.ops._attention_math import attention_reference

# -- get_attention (002) ---------------------------------------------------------------------


@pytest.mark.parametrize("kind,groups,kv", [("mha", None, 6), ("mqa", None, 1), ("gqa", 3, 3)])
def test_get_attention_on_every_target(target: str, kind: str, groups: int | None,
                                       kv: int) -> None:
    layer = ag.get_attention(kind, embed_dim=18, num_heads=6, num_groups=groups,
                             apply_causal_mask=True, name="attn")
    x = ag.input("x", ("batch", "seq", 18))
    model = ag.Model(x, layer(x))
    assert model.param_shapes["attn.key.kernel"] == (18, kv * 3)
    feeds = {"x": randn(2, 5, 18, seed=7)}
    ref = assert_parity(model, None, feeds, target)["output"]
    # causal: the first position's output ignores every later token
    other = feeds["x"].copy()
    other[:, 1:] += 1.0
    again = model.predict(model.init(seed=1), {"x": other})["output"]
    np.testing.assert_allclose(again[:, 0], ref[:, 0], atol=1e-6)
    assert np.abs(again[:, 1:] - ref[:, 1:]).max() > 1e-3


def test_get_attention_validates_like_the_seed() -> None:
    with pytest.raises(ag.ConfigError, match="'gqa' needs num_groups"):
        ag.get_attention("gqa", embed_dim=16, num_heads=4)
    with pytest.raises(ag.ConfigError, match="num_groups=3 must divide num_heads=4"):
        ag.get_attention("gqa", embed_dim=16, num_heads=4, num_groups=3)
    with pytest.raises(ag.ConfigError, match="attention_type must be one of"):
        ag.get_attention("linear", embed_dim=16, num_heads=4)
    with pytest.raises(ag.ConfigError, match="num_heads=5 does not divide embed_dim=16"):
        ag.get_attention("mha", embed_dim=16, num_heads=5)
    with pytest.raises(ag.ConfigError, match="num_groups applies to attention_type='gqa' only"):
        ag.get_attention("mqa", embed_dim=16, num_heads=4, num_groups=2)
    with pytest.raises(ag.ConfigError, match=r"dropout must lie in \[0, 1\)"):
        ag.get_attention("mha", embed_dim=16, num_heads=4, dropout=1.0)
    layer = ag.get_attention("mha", embed_dim=16, num_heads=4, name="a")
    with pytest.raises(ag.ConfigError, match=r"expects input \[batch, seq, 16\].*"
                       r"ag.dense\(x, 16\).*test_seeds.py"):
        layer(ag.input("x", ("batch", "seq", 12)))


# -- attention_module (004) ------------------------------------------------------------------


def _module_model(separate: bool, **opts: object) -> ag.Model:
    q = ag.input("query", ("batch", "q_seq", 10))
    k = ag.input("key", ("batch", "kv_seq", 6))
    if separate:
        v = ag.input("value", ("batch", "kv_seq", 9))
        out = ag.attention_module(q, k, v, num_heads=3, key_dim=4, name="mod", **opts)
        return ag.Model([q, k, v], out)
    out = ag.attention_module(q, k, num_heads=3, key_dim=4, name="mod", **opts)
    return ag.Model([q, k], out)


def _module_feeds(separate: bool, sq: int = 5, sk: int = 7) -> dict[str, np.ndarray]:
    feeds = {"query": randn(2, sq, 10, seed=1), "key": randn(2, sk, 6, seed=2)}
    if separate:
        feeds["value"] = randn(2, sk, 9, seed=3)
    return feeds


@pytest.mark.parametrize("separate", [False, True])
@pytest.mark.parametrize("opts", [
    {},
    {"value_dim": 6, "activation": "gelu", "use_layer_norm": False},
    {"value_dim": 2, "use_residual": False, "use_bias": False, "causal": True},
    {"output_dim": 7, "use_residual": False, "return_attention_scores": True},
])
def test_attention_module_on_every_target(target: str, separate: bool, opts: dict) -> None:
    assert_parity(_module_model(separate, **opts), None, _module_feeds(separate), target)


def test_attention_module_by_hand() -> None:
    """Separate key/value widths, residual and norm, written out with numpy."""
    model = _module_model(True, value_dim=5, activation="relu", return_attention_scores=True)
    params = model.init(seed=3)
    for k in model.param_shapes:
        if k.endswith("bias"):
            params[k] = randn(*model.param_shapes[k], seed=len(k))
    f = _module_feeds(True)

    def proj(x: np.ndarray, sub: str, width: int) -> np.ndarray:
        y = x @ params[f"mod.{sub}.kernel"] + params[f"mod.{sub}.bias"]
        return y.reshape(*x.shape[:2], 3, width).transpose(0, 2, 1, 3)  # (B, H, S, width)

    out, weights = attention_reference(proj(f["query"], "query", 4), proj(f["key"], "key", 4),
                                       proj(f["value"], "value", 5))
    y = out.transpose(0, 2, 1, 3).reshape(2, 5, 15) @ params["mod.output.kernel"]
    y = np.maximum(y + params["mod.output.bias"], 0) + f["query"]
    mean, var = y.mean(-1, keepdims=True), y.var(-1, keepdims=True)
    y = (y - mean) / np.sqrt(var + 1e-5) * params["mod.norm.scale"] + params["mod.norm.bias"]
    got = model.predict(params, f)
    np.testing.assert_allclose(got["output_0"], y, atol=1e-5)
    np.testing.assert_allclose(got["output_1"], weights, atol=1e-6)
    assert model.param_shapes["mod.value.kernel"] == (9, 15)
    assert model.param_shapes["mod.output.kernel"] == (15, 10)


def test_attention_module_self_attention_is_one_node() -> None:
    q = ag.input("query", ("batch", "seq", 12))
    model = ag.Model(q, ag.attention_module(q, num_heads=3, key_dim=4, name="mod"))
    assert [n.op for n in model.nodes] == ["input", "multi_head_attention", "add", "layer_norm"]
    assert_parity(model, None, {"query": randn(2, 5, 12)}, "ort")


def test_attention_module_residual_mismatch_suggests_projection() -> None:
    q = ag.input("query", ("batch", "seq", 12))
    with pytest.raises(ag.ConfigError, match=r"attention_module 'm': use_residual=True adds "
                       r"the query \(width 12\) to the attention output \(width 8\).*"
                       r"ag.dense\(query, 8\).*output_dim=12.*use_residual=False"):
        ag.attention_module(q, num_heads=2, key_dim=4, output_dim=8, name="m")
    with pytest.raises(ag.ConfigError, match="activation must be one of"):
        ag.attention_module(q, num_heads=2, key_dim=4, activation="swish")


# -- process_sequence: one query against a memory, through the same layer --------------------


def test_process_sequence_matches_the_batched_layer_on_every_target(target: str) -> None:
    model = _module_model(True, value_dim=3, return_attention_scores=True)
    params = model.init(seed=5)
    rng = np.random.default_rng(9)
    query = rng.standard_normal(10).astype(np.float32)
    keys = [rng.standard_normal(6).astype(np.float32) for _ in range(4)]
    values = [rng.standard_normal(9).astype(np.float32) for _ in range(4)]
    out, scores = ag.process_sequence(model, params, query, keys, values,
                                      return_attention_scores=True)
    full = model.predict(params, {"query": query[None, None], "key": np.stack(keys)[None],
                                  "value": np.stack(values)[None]})
    np.testing.assert_allclose(out, full["output_0"][0, 0], atol=1e-6)
    assert scores.shape == (3, 4)
    np.testing.assert_allclose(scores.sum(-1), 1.0, atol=1e-5)
    session = ag.Session(ag.export(model, params, target=target), ["CPUExecutionProvider"])
    got = ag.process_sequence(model, params, query, keys, values, session=session)
    np.testing.assert_allclose(got, out, atol=1e-4)
    # a different memory gives a different answer: the keys are really read
    moved = ag.process_sequence(model, params, query, keys[::-1], values)
    assert np.abs(moved - out).max() > 1e-3


def test_process_sequence_with_keys_as_values() -> None:
    model = _module_model(False, use_layer_norm=False)
    params = model.init(seed=6)
    rng = np.random.default_rng(2)
    query, memory = rng.standard_normal(10), rng.standard_normal((3, 6))
    out = ag.process_sequence(model, params, query, memory)
    full = model.predict(params, {"query": query[None, None].astype(np.float32),
                                  "key": memory[None].astype(np.float32)})["output"]
    np.testing.assert_allclose(out, full[0, 0], atol=1e-6)
    with pytest.raises(ag.FeedError, match="leave values out"):
        ag.process_sequence(model, params, query, memory, memory)


def test_process_sequence_refuses_mismatched_widths() -> None:
    model = _module_model(True)
    params = model.init()
    q, k, v = np.zeros(10), [np.zeros(6)] * 2, [np.zeros(9)] * 2
    with pytest.raises(ag.FeedError, match=r"key\[1\]: expected a vector \[6\], given shape "
                       r"\(8,\); widths are never padded or truncated: project it to 6"):
        ag.process_sequence(model, params, q, [np.zeros(6), np.zeros(8)], v)
    with pytest.raises(ag.FeedError, match="3 vectors for 2 keys"):
        ag.process_sequence(model, params, q, k, [np.zeros(9)] * 3)
    with pytest.raises(ag.FeedError, match="pass values="):
        ag.process_sequence(model, params, q, k)
    with pytest.raises(ag.FeedError, match="NaN|non-finite|Inf"):
        ag.process_sequence(model, params, np.full(10, np.nan), k, v)
    with pytest.raises(ag.FeedError, match="outputs the scores"):
        ag.process_sequence(model, params, q, k, v, return_attention_scores=True)


# -- parameters and KV cache (002's tables) --------------------------------------------------


@pytest.mark.parametrize("d,h", [(512, 8), (96, 12)])
def test_costs_match_the_seed_formulas(d: int, h: int) -> None:
    g = 4
    mha = ag.attention_cost("mha", embed_dim=d, num_heads=h, use_bias=False)
    gqa = ag.attention_cost("gqa", embed_dim=d, num_heads=h, num_groups=g, use_bias=False)
    mqa = ag.attention_cost("mqa", embed_dim=d, num_heads=h, use_bias=False)
    assert mha.params == 4 * d * d
    assert gqa.params == d * d * (2 + 2 * g / h)
    assert mqa.params == 2 * d * d + 2 * d * (d // h)
    s = 4096
    for cost, kv in ((mha, h), (gqa, g), (mqa, 1)):
        assert cost.kv_cache_bytes(s) == 2 * kv * s * (d // h) * 4  # float32
        assert cost.kv_cache_bytes_per_token == 2 * kv * (d // h) * 4
    half = ag.attention_cost("gqa", embed_dim=d, num_heads=h, num_groups=g, dtype="float16")
    assert half.kv_cache_bytes(s) == 2 * g * s * (d // h) * 2
    assert half.params == gqa.params + d + 2 * g * (d // h) + d  # biases: q, k, v, out


@pytest.mark.parametrize("d,h", [(48, 6), (40, 4)])
def test_model_costs_and_summary_agree_with_the_formulas(d: int, h: int) -> None:
    x = ag.input("x", ("batch", "seq", d), "float16")
    y = ag.get_attention("mha", embed_dim=d, num_heads=h, name="mha")(x)
    y = ag.get_attention("gqa", embed_dim=d, num_heads=h, num_groups=2, name="gqa")(y)
    y = ag.multi_head_attention(y, num_heads=h, num_kv_heads=1, window=100, name="mqa")
    model = ag.Model(x, y)
    costs = ag.attention_cost(model)
    params = model.init()
    for name, cost in costs.items():
        assert cost.params == sum(v.size for k, v in params.items() if k.startswith(name + "."))
    dh = d // h
    assert costs["mha"].params == 4 * d * d + 4 * d  # + biases
    assert costs["gqa"].params == d * d * (2 + 2 * 2 / h) + 2 * d + 2 * 2 * dh
    assert [c.kv_cache_bytes_per_token for c in costs.values()] == [
        2 * h * dh * 2, 2 * 2 * dh * 2, 2 * 1 * dh * 2]  # float16: 2 bytes
    table = model.summary(context=4096)
    assert "kv bytes/token" in table
    row = next(line for line in table.splitlines() if line.startswith("| gqa "))
    assert f"| {2 * 2 * dh * 2:<14} |" in row
    total = 4096 * (2 * h * dh + 2 * 2 * dh) * 2 + 100 * 2 * dh * 2  # mqa holds its window
    assert f"KV cache at context 4,096: {total:,} bytes per sequence (float16" in table
    as32 = model.summary(context=10, dtype="float32")
    assert f"{10 * (2 * h * dh + 2 * 2 * dh + 2 * dh) * 4:,} bytes" in as32
    with pytest.raises(ag.ConfigError, match="context must be a positive int"):
        model.summary(context=0)


def test_cost_of_value_dim_and_cross_attention() -> None:
    x = ag.input("x", ("batch", "seq", 12))
    ctx = ag.input("c", ("batch", "kv", 5))
    model = ag.Model([x, ctx], ag.multi_head_attention(x, ctx, num_heads=3, num_kv_heads=1,
                                                       value_dim=7, use_bias=False, name="a"))
    cost = ag.attention_cost(model)["a"]
    assert cost.params == 12 * 12 + 5 * 4 + 5 * 7 + 21 * 12
    assert cost.kv_cache_bytes_per_token == (4 + 7) * 4


def test_run_target_is_the_shared_helper() -> None:
    """The separate key/value module lowers to one fused attention node per target."""
    model = _module_model(True)
    params = model.init()
    for target, op in (("ort", "MultiHeadAttention"), ("onnx", "Attention")):
        proto = ag.export(model, params, target=target)
        assert [n.op_type for n in proto.graph.node if n.op_type.endswith("Attention")] == [op]
    got = run_target(model, params, _module_feeds(True), "decomposed")["output"]
    assert got.shape == (2, 5, 10)


def test_unnamed_attention_module_gives_the_same_names_when_rebuilt() -> None:
    def build() -> ag.Model:
        q = ag.input("query", ("batch", "seq", 10))
        k = ag.input("key", ("batch", "kv", 6))
        v = ag.input("value", ("batch", "kv", 9))
        return ag.Model([q, k, v], ag.attention_module(q, k, v, num_heads=3, key_dim=4))

    assert build().param_shapes == build().param_shapes
