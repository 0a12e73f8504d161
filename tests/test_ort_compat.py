"""The in-memory adaptation for onnxruntime releases with known op faults (_export/ort_compat.py).

On any runtime the adaptation is forced on and the outputs must still equal the reference (the
rewrites are exact); on onnxruntime 1.23 (Python 3.10) the real faulty runtime is exercised.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import randn
from onnx import helper

import attngraph as ag
from attngraph._export import ort_compat

B, HQ, HKV, D = 2, 6, 2, 8  # D % 8 == 0: the ort target lowers windows to GroupQueryAttention


def sdpa(seq: int, **opts: object) -> ag.Model:
    q = ag.input("q", ("batch", HQ, seq, D))
    k = ag.input("k", ("batch", HKV, seq, D))
    v = ag.input("v", ("batch", HKV, seq, D))
    extra = {}
    inputs = [q, k, v]
    if opts.pop("with_mask", False):
        extra["mask"] = ag.input("mask", (seq, seq), "bool")
        inputs.append(extra["mask"])
    return ag.Model(inputs, ag.scaled_dot_product_attention(q, k, v, **extra, **opts))


def feeds(seq: int, with_mask: bool = False) -> dict[str, np.ndarray]:
    out = {"q": randn(B, HQ, seq, D, seed=1), "k": randn(B, HKV, seq, D, seed=2),
           "v": randn(B, HKV, seq, D, seed=3)}
    if with_mask:
        mask = np.random.default_rng(4).random((seq, seq)) > 0.3
        np.fill_diagonal(mask, True)
        out["mask"] = mask
    return out


def test_versions_map_to_faults() -> None:
    assert ort_compat.faults("1.23.2") == {"window", "gqa_mask"}
    assert ort_compat.faults("1.24.4") == {"gqa_mask"}
    assert ort_compat.faults("1.29.0") == set()
    assert ort_compat.faults("1.30.0.dev20260101+cpu") == set()


def test_window_rewrite_takes_one_key_off_group_query_attention() -> None:
    node = helper.make_node("GroupQueryAttention", ["q", "k", "v"], ["o"], domain="com.microsoft",
                            num_heads=HQ, kv_num_heads=HKV, local_window_size=5)
    graph = helper.make_graph([node], "g", [], [])
    model = helper.make_model(graph)
    assert ort_compat.adapt(model, {"window"})
    assert [a.i for a in model.graph.node[0].attribute if a.name == "local_window_size"] == [4]
    assert not ort_compat.adapt(helper.make_model(graph), set())


@pytest.mark.parametrize("force", [False, True])
def test_gqa_mask_rewrite_inside_the_window_scan_is_exact(force: bool, monkeypatch) -> None:
    """The ort window lowering runs the standard Attention op in a Scan body with Hq != Hkv."""
    if force:
        monkeypatch.setattr(ort_compat, "faults", lambda _v: {"gqa_mask"})
    model = sdpa(11, window=4, causal=True)
    f = feeds(11)
    proto = ag.export(model, {}, target="ort")
    if force:
        assert ort_compat.load_adapted(proto.SerializeToString(), {"gqa_mask"}) is not None
    got = ag.Session(proto, ["CPUExecutionProvider"]).run(f)["output"]
    np.testing.assert_allclose(got, model.predict({}, f)["output"], atol=1e-4)


@pytest.mark.parametrize("force", [False, True])
def test_gqa_mask_rewrite_is_exact(force: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if force:
        monkeypatch.setattr(ort_compat, "faults", lambda _v: {"gqa_mask"})
    model = sdpa(9, with_mask=True)
    f = feeds(9, with_mask=True)
    proto = ag.export(model, {}, target="onnx")
    if force:
        assert ort_compat.load_adapted(proto.SerializeToString(), {"gqa_mask"}) is not None
    got = ag.Session(proto, ["CPUExecutionProvider"]).run(f)["output"]
    np.testing.assert_allclose(got, model.predict({}, f)["output"], atol=1e-4)


def test_external_data_path_still_loads(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ort_compat, "faults", lambda _v: {"window", "gqa_mask"})
    x = ag.input("x", ("batch", 5, 12))
    model = ag.Model(x, ag.dense(x, 3000))
    params = model.init(seed=1)
    path = tmp_path / "big.onnx"
    ag.export(model, params, str(path), target="ort")
    f = {"x": randn(B, 5, 12, seed=5)}
    got = ag.Session(str(path), ["CPUExecutionProvider"]).run(f)
    np.testing.assert_allclose(got["output"], model.predict(params, f)["output"], atol=1e-4)
