"""Qualities of exported files (DESIGN §5): fused nodes, checker, dynamic dims, names,
metadata, atomic and reproducible writes, float16."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
from conftest import randn

import attngraph as ag
from attngraph._export._builder import all_nodes

FUSED = {"MultiHeadAttention", "GroupQueryAttention", "Attention"}


def stack(n_layers: int = 3, **opts: object) -> ag.Model:
    x = ag.input("x", ("batch", "seq", 24))
    h = ag.positional_encoding(x)
    for i in range(n_layers):
        a = ag.multi_head_attention(ag.layer_norm(h, name=f"enc.{i}.ln"), num_heads=4,
                                    name=f"enc.{i}.attn", **opts)
        h = ag.add(h, a, name=f"enc.{i}.res")
    return ag.Model(x, ag.dense(h, 5, name="head"))


@pytest.mark.parametrize("opts", [{}, {"causal": True}, {"window": 3},
                                  {"num_kv_heads": 2, "causal": True},
                                  {"num_kv_heads": 1, "window": (2, 1)}])
@pytest.mark.parametrize("target", ["ort", "onnx"])
def test_one_fused_node_per_attention_layer_and_no_softmax(target: str, opts: dict) -> None:
    proto = ag.export(stack(3, **opts), stack(3, **opts).init(), target=target)
    ops = [n.op_type for n in all_nodes(proto.graph)]  # windows: the node is in a Scan body
    assert sum(op in FUSED for op in ops) == 3, ops
    assert "Softmax" not in ops


def test_decomposed_uses_opset_17_primitives_only() -> None:
    proto = ag.export(stack(2, causal=True), stack(2, causal=True).init(), target="decomposed")
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", 17)]
    ops = {n.op_type for n in proto.graph.node}
    assert not ops & FUSED and "Softmax" in ops


@pytest.mark.parametrize("target", ag._registry.TARGETS)
def test_one_file_runs_at_two_batches_and_two_lengths(target: str, tmp_path) -> None:
    model = stack(2, causal=True)
    params = model.init()
    path = tmp_path / "m.onnx"
    ag.export(model, params, path, target=target)
    sess = ag.Session(str(path), ["CPUExecutionProvider"])
    for batch, seq in ((1, 5), (3, 5), (1, 11), (3, 11)):
        feeds = {"x": randn(batch, seq, 24, seed=batch * seq)}
        got = sess.run(feeds)["output"]
        np.testing.assert_allclose(got, model.predict(params, feeds)["output"], atol=1e-4)


def test_checker_names_metadata(tmp_path) -> None:
    model = stack(1)
    proto = ag.export(model, model.init(), target="ort")
    onnx.checker.check_model(proto, full_check=True)
    inits = {t.name for t in proto.graph.initializer}
    assert {"enc.0.attn.query.kernel", "enc.0.attn.output.bias", "head.kernel",
            "enc.0.ln.scale"} <= inits
    assert any(n.name.startswith("enc.0.attn/") for n in proto.graph.node)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["attngraph.target"] == "ort" and meta["attngraph.version"] == ag.__version__
    config = json.loads(meta["attngraph.config"])
    assert [layer["name"] for layer in config["layers"]][:2] == ["x", "positional_encoding_0"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", "seq", 24]


@pytest.mark.parametrize("target", ag._registry.TARGETS)
def test_same_input_same_bytes(target: str, tmp_path) -> None:
    a, b = stack(2, window=3), stack(2, window=3)  # two separate builds of the same model
    ag.export(a, a.init(seed=3), tmp_path / "a.onnx", target=target)
    ag.export(b, b.init(seed=3), tmp_path / "b.onnx", target=target)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_failed_export_leaves_existing_file_untouched(tmp_path) -> None:
    model = stack(1)
    path = tmp_path / "m.onnx"
    path.write_bytes(b"previous")
    with pytest.raises(ag.ParamError):
        ag.export(model, {}, path)
    assert path.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["m.onnx"]


@pytest.mark.parametrize("target", ag._registry.TARGETS)
def test_float16_export_validates_with_fp16_tolerance(target: str) -> None:
    model = stack(2, num_kv_heads=2, causal=True)
    feeds = {"x": randn(2, 6, 24)}
    report = ag.validate(model, model.init(), feeds, targets=(target,), dtype="float16")
    assert report.passed, str(report)
    proto = ag.export(model, model.init(), target=target, dtype="float16")
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16


def test_validate_report_is_readable() -> None:
    model = stack(1)
    report = ag.validate(model, model.init(), {"x": randn(2, 4, 24)})
    text = str(report)
    assert report.passed and "PASSED" in text
    assert {"ort", "onnx", "decomposed"} <= {c.target for c in report.checks}
