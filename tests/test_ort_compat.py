"""The in-memory adaptation for onnxruntime releases with known op faults (_export/ort_compat.py).

Forced on (any runtime), every rewrite must still equal the reference: the rewrites are exact.
On a runtime that has the fault (onnxruntime 1.23.2, the one Python 3.10 gets), the same models
run without the adaptation must differ from the reference: the adaptation is what fixes them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import randn
from onnx import helper

import attngraph as ag
from attngraph._export import ort_compat

B, HQ, HKV, D = 2, 6, 2, 8  # D % 8 == 0: the ort target lowers windows to GroupQueryAttention
ALL = {"window", "gqa_mask", "softcap", "dead_rows"}


def sdpa(seq: int, hkv: int = HKV, with_mask: bool = False, **opts: object) -> ag.Model:
    q = ag.input("q", ("batch", HQ, seq, D))
    k = ag.input("k", ("batch", hkv, seq, D))
    v = ag.input("v", ("batch", hkv, seq, D))
    # a mask per query head: onnxruntime < 1.29 wants it per key/value head
    extra = {"mask": ag.input("mask", (HQ, seq, seq), "bool")} if with_mask else {}
    return ag.Model([q, k, v, *extra.values()],
                    ag.scaled_dot_product_attention(q, k, v, **extra, **opts))


def sdpa_feeds(seq: int, hkv: int = HKV, with_mask: bool = False) -> dict[str, np.ndarray]:
    out = {"q": randn(B, HQ, seq, D, seed=1), "k": randn(B, hkv, seq, D, seed=2),
           "v": randn(B, hkv, seq, D, seed=3)}
    if with_mask:
        mask = np.random.default_rng(4).random((HQ, seq, seq)) > 0.3
        mask[:, np.arange(seq), np.arange(seq)] = True
        mask[1, 2] = False  # a query row that sees no key: zeros
        out["mask"] = mask
    return out


def mha(seq: int, **opts: object) -> tuple[ag.Model, dict[str, np.ndarray]]:
    x = ag.input("x", ("batch", "seq", 21))
    kpm = ag.input("kpm", ("batch", "seq"), "bool")
    model = ag.Model([x, kpm], ag.multi_head_attention(x, num_heads=3, key_padding_mask=kpm,
                                                       **opts))
    pad = np.ones((B, seq), bool)
    pad[1, :3] = False
    return model, {"x": randn(B, seq, 21, seed=5), "kpm": pad}


# (fault, target, export options, model and feeds): each case meets its fault on the old runtime
CASES: dict[str, tuple[str, str, dict, Callable[[], tuple[ag.Model, dict]]]] = {
    "gqa_mask": ("gqa_mask", "onnx", {},
                 lambda: (sdpa(9, with_mask=True), sdpa_feeds(9, with_mask=True))),
    "softcap_mask": ("softcap", "onnx", {}, lambda: mha(7, softcap=1.5, num_kv_heads=3)),
    "softcap_causal": ("softcap", "onnx", {}, lambda: mha(7, softcap=1.5, causal=True)),
    "dead_rows_blocked": ("dead_rows", "ort", {},  # blocks of a window hold rows with no key
                          lambda: mha(11, window=3, causal=True, num_kv_heads=1)),
    "window": ("window", "ort", {"window_impl": "direct"},
               lambda: (sdpa(11, window=4, causal=True), sdpa_feeds(11))),
}


def run(case: str, found: set[str], monkeypatch: pytest.MonkeyPatch) -> tuple[np.ndarray, ...]:
    """(onnxruntime's output with the adaptation for `found`, the reference's output)."""
    _, target, options, make = CASES[case]
    model, feeds = make()
    params = model.init(seed=1)
    proto = ag.export(model, params, target=target, **options)
    monkeypatch.setattr(ort_compat, "faults", lambda _version: found)
    got = ag.Session(proto, ["CPUExecutionProvider"]).run(feeds)["output"]
    return got, model.predict(params, feeds)["output"]


def test_versions_map_to_faults() -> None:
    assert ort_compat.faults("1.23.2") == ALL
    assert ort_compat.faults("1.24.4") == ALL - {"window"}
    assert ort_compat.faults("1.29.0") == set()
    assert ort_compat.faults("1.30.0.dev20260101+cpu") == set()


@pytest.mark.parametrize("case", [c for c in CASES if c != "window"])
def test_forced_rewrite_equals_the_reference(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = CASES[case][3]()
    proto = ag.export(model, model.init(seed=1), target=CASES[case][1], **CASES[case][2])
    adapted = ort_compat.load_adapted(proto.SerializeToString(), ALL)
    assert adapted is not None, "the case must meet the rewrite"
    nodes = [n.op_type for g in ort_compat._graphs(onnx.load_from_string(adapted).graph)
             for n in g.node]
    assert "Attention" not in nodes and "Softmax" in nodes
    got, ref = run(case, ALL, monkeypatch)
    np.testing.assert_allclose(got, ref, atol=1e-4)


def test_forced_window_rewrite_takes_exactly_one_key_off(monkeypatch) -> None:
    """On a runtime without the fault the rewrite must equal the reference's window - 1."""
    real = ort_compat.faults(ort.__version__)
    got, ref = run("window", {"window"}, monkeypatch)
    narrower = sdpa(11, window=3, causal=True).predict({}, sdpa_feeds(11))["output"]
    assert np.abs(narrower - ref).max() > 1e-2
    # the faulty runtime adds the key back: exact; a correct one attends one key fewer
    np.testing.assert_allclose(got, ref if "window" in real else narrower, atol=1e-4)


def test_window_of_one_in_a_shared_buffer_is_refused_where_the_fault_is() -> None:
    """A window of 1 has no rewrite (0 means no window). The copying form's attention_bias
    holds the window, so it passes; the shared-buffer form is refused on a faulty runtime and
    exact on a correct one."""
    from attngraph._decode import cache_layers, empty_past

    model = ag.models.mistral(vocab_size=50, hidden_size=32, intermediate_size=16,
                              num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                              sliding_window=1)
    params = model.init(seed=0)
    shared = ag.export(model, params, kv_cache=True)
    assert {m.key: m.value for m in shared.metadata_props}["attngraph.share_buffer"] == "true"
    with pytest.raises(ag.UnsupportedError, match=r"window of 1 .*share_buffer=False"):
        ort_compat.adapt(shared, {"window"})
    assert not ort_compat.adapt(ag.export(model, params, kv_cache=True, share_buffer=False),
                                {"window"})
    ids = np.random.default_rng(0).integers(0, 50, (1, 6))
    feeds = {"input_ids": ids, "attention_mask": np.ones((1, 6), np.int64),
             **empty_past(cache_layers(model), 1)}
    if "window" in ort_compat.faults(ort.__version__):
        with pytest.raises(ag.UnsupportedError, match="window of 1"):
            ag.Session(shared)
    else:
        np.testing.assert_allclose(ag.Session(shared).run(feeds)["logits"],
                                   model.predict(params, {"input_ids": ids})["logits"],
                                   atol=1e-4)


@pytest.mark.parametrize("case", list(CASES))
def test_the_fault_is_real_and_the_adaptation_fixes_it(case: str, monkeypatch) -> None:
    fault = CASES[case][0]
    real = ort_compat.faults(ort.__version__)
    if fault not in real:
        pytest.skip(f"onnxruntime {ort.__version__} does not have the {fault!r} fault")
    try:  # the adaptation off: a wrong answer, NaN, or the model refused
        broken, ref = run(case, set(), monkeypatch)
        assert np.isnan(broken).any() or np.abs(broken - ref).max() > 1e-3
    except ag.AttnGraphError as exc:
        assert "onnxruntime says" in str(exc)
    fixed, ref = run(case, real, monkeypatch)
    np.testing.assert_allclose(fixed, ref, atol=1e-4)


def test_cache_inputs_and_outputs_keep_their_meaning() -> None:
    """The standard op with past_key / past_value and a mask: present outputs and the output."""
    t, p = 4, 5  # new tokens, then a cache of p
    node = helper.make_node("Attention", ["q", "k", "v", "mask", "pk", "pv"],
                            ["out", "present_k", "present_v"], q_num_heads=HQ,
                            kv_num_heads=HKV, softcap=2.0, scale=0.3)
    f32, bl = onnx.TensorProto.FLOAT, onnx.TensorProto.BOOL
    vi = helper.make_tensor_value_info
    graph = helper.make_graph([node], "g", [
        vi("q", f32, [B, t, HQ * D]), vi("k", f32, [B, t, HKV * D]), vi("v", f32, [B, t, HKV * D]),
        vi("mask", bl, [B, 1, t, p + t]), vi("pk", f32, [B, HKV, p, D]),
        vi("pv", f32, [B, HKV, p, D])], [vi(n, f32, None) for n in node.output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=10)
    mask = np.random.default_rng(6).random((B, 1, t, p + t)) > 0.4
    mask[1, 0, 1] = False  # a row without keys
    feeds = {"q": randn(B, t, HQ * D, seed=1), "k": randn(B, t, HKV * D, seed=2),
             "v": randn(B, t, HKV * D, seed=3), "mask": mask, "pk": randn(B, HKV, p, D, seed=4),
             "pv": randn(B, HKV, p, D, seed=5)}
    adapted = ort_compat.load_adapted(model.SerializeToString(), ALL)
    assert adapted is not None
    got = ag.Session(adapted, ["CPUExecutionProvider"]).run(feeds)
    # numpy: DESIGN §4 on the concatenated cache
    heads = lambda x, h: x.reshape(B, -1, h, D).transpose(0, 2, 1, 3)
    k = np.concatenate([feeds["pk"], heads(feeds["k"], HKV)], 2)
    v = np.concatenate([feeds["pv"], heads(feeds["v"], HKV)], 2)
    np.testing.assert_allclose(got["present_k"], k, atol=1e-6)
    np.testing.assert_allclose(got["present_v"], v, atol=1e-6)
    kr, vr = np.repeat(k, HQ // HKV, 1), np.repeat(v, HQ // HKV, 1)
    scores = 2.0 * np.tanh(heads(feeds["q"], HQ) @ kr.transpose(0, 1, 3, 2) * 0.3 / 2.0)
    scores = np.where(mask, scores, -np.inf)
    with np.errstate(invalid="ignore"):
        w = np.exp(scores - scores.max(-1, keepdims=True))
        w = np.nan_to_num(w / w.sum(-1, keepdims=True))
    want = (w @ vr).transpose(0, 2, 1, 3).reshape(B, t, HQ * D)
    np.testing.assert_allclose(got["out"], want, atol=1e-5)
    assert np.all(got["out"][1, 1] == 0)


def test_external_data_path_still_loads(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, feeds = mha(7, softcap=1.5, num_kv_heads=3)
    params = model.init(seed=1)
    path = tmp_path / "big.onnx"
    ag.export(model, params, str(path), target="onnx", external_data=True)
    assert any(p.name != "big.onnx" for p in tmp_path.iterdir()), "weights beside the file"
    monkeypatch.setattr(ort_compat, "faults", lambda _v: ALL)
    assert ort_compat.load_adapted(str(path), ALL) is not None
    got = ag.Session(str(path), ["CPUExecutionProvider"]).run(feeds)
    np.testing.assert_allclose(got["output"], model.predict(params, feeds)["output"], atol=1e-4)
