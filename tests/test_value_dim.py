"""`value_dim`: value heads wider or narrower than query/key heads, on every target."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_parity, randn

import attngraph as ag
from attngraph.ops._attention_math import attention_reference

CASES = [
    {"num_heads": 3, "head_dim": 8, "value_dim": 5},  # MHA, narrower values
    {"num_heads": 3, "head_dim": 8, "value_dim": 11, "causal": True},  # wider values
    {"num_heads": 4, "num_kv_heads": 2, "head_dim": 8, "value_dim": 6, "causal": True},
    {"num_heads": 4, "num_kv_heads": 1, "head_dim": 16, "value_dim": 24, "window": 3},  # MQA
    {"num_heads": 3, "head_dim": 8, "value_dim": 5, "softcap": 5.0},
]


def _model(cross: bool, **kw: object) -> ag.Model:
    x = ag.input("x", ("batch", "seq", 14))
    ctx = ag.input("c", ("batch", "kv", 9)) if cross else None
    kpm = ag.input("kpm", ("batch", "kv" if cross else "seq"), "bool")
    y = ag.multi_head_attention(x, ctx, key_padding_mask=kpm, name="attn", **kw)
    return ag.Model([x, kpm] + ([ctx] if cross else []), y)


def _feeds(cross: bool) -> dict[str, np.ndarray]:
    sk = 7 if cross else 5
    pad = np.ones((2, sk), bool)
    pad[1, -2:] = False
    feeds = {"x": randn(2, 5, 14), "kpm": pad}
    if cross:
        feeds["c"] = randn(2, sk, 9, seed=3)
    return feeds


@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("kw", CASES)
def test_value_dim_on_every_target(target: str, kw: dict, cross: bool) -> None:
    assert_parity(_model(cross, **kw), None, _feeds(cross), target)


def test_value_dim_params_and_reference_by_hand() -> None:
    model = _model(False, num_heads=3, num_kv_heads=1, head_dim=4, value_dim=7)
    shapes = model.param_shapes
    assert shapes["attn.value.kernel"] == (14, 7) and shapes["attn.key.kernel"] == (14, 4)
    assert shapes["attn.output.kernel"] == (21, 14) and shapes["attn.query.kernel"] == (14, 12)
    params = model.init(seed=4)
    feeds = _feeds(False)
    x, p = feeds["x"], params
    q = (x @ p["attn.query.kernel"]).reshape(2, 5, 3, 4).transpose(0, 2, 1, 3)
    k = (x @ p["attn.key.kernel"]).reshape(2, 5, 1, 4).transpose(0, 2, 1, 3)
    v = (x @ p["attn.value.kernel"]).reshape(2, 5, 1, 7).transpose(0, 2, 1, 3)
    out, _ = attention_reference(q, k, v, key_padding_mask=feeds["kpm"])
    expected = out.transpose(0, 2, 1, 3).reshape(2, 5, 21) @ p["attn.output.kernel"]
    got = model.predict(params, feeds)["output"]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_value_dim_lowering_choices() -> None:
    """onnxruntime's MultiHeadAttention and the standard Attention op take a value head size of
    their own; GroupQueryAttention does not, so grouped heads fall back to the standard op."""
    def fused(kw: dict, target: str) -> list[str]:
        model = _model(False, **kw)
        proto = ag.export(model, model.init(), target=target)
        return [n.op_type for n in proto.graph.node if n.op_type.endswith("Attention")]

    assert fused(CASES[0], "ort") == ["MultiHeadAttention"]
    grouped = {"num_heads": 4, "num_kv_heads": 2, "head_dim": 8, "causal": True}
    assert fused(grouped, "ort") == ["GroupQueryAttention"]
    assert fused(CASES[2], "ort") == ["Attention"]
    assert fused(CASES[2], "onnx") == ["Attention"]


def test_value_dim_errors_and_cache_refusal() -> None:
    x = ag.input("x", ("batch", "seq", 12))
    with pytest.raises(ag.ConfigError, match="value_dim must be a positive int, given 0"):
        ag.multi_head_attention(x, num_heads=3, value_dim=0)
    ids = ag.input("input_ids", ("batch", "seq"), "int64")
    h = ag.embedding(ids, 17, 12)
    h = ag.multi_head_attention(h, num_heads=3, value_dim=5, causal=True, name="attn")
    model = ag.Model(ids, {"logits": ag.dense(h, 17)})
    with pytest.raises(ag.UnsupportedError, match="attn.*value_dim=5 differs from head_dim=4"):
        ag.export(model, model.init(), kv_cache=True)


@pytest.mark.parametrize("kw", [
    {"num_heads": 3, "causal": True, "value_dim": 5},
    {"num_heads": 4, "num_kv_heads": 2, "head_dim": 8, "value_dim": 6, "window": 3},
    {"num_heads": 3, "causal": True, "value_dim": 7, "rope": True},
])
def test_value_dim_streams_in_chunks(target: str, kw: dict, tmp_path) -> None:
    """A step model keeps value states of value_dim: chunks give what predict gives."""
    x = ag.input("x", ("batch", "seq", 12))
    model = ag.Model(x, ag.multi_head_attention(x, name="attn", **kw))
    params = model.init(seed=1)
    frames = randn(2, 7, 12, seed=4)
    expected = model.predict(params, {"x": frames})["output"]
    path = str(tmp_path / "step.onnx")
    ag.export(model, params, path, streaming=True, target=target)
    stream = ag.Stream(path)
    got = np.concatenate([stream.step({"x": frames[:, i:i + 3]})["output"]
                          for i in range(0, 7, 3)], axis=1)
    np.testing.assert_allclose(got, expected, atol=1e-4)
