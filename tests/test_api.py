"""The public surface: a snapshot of names, golden dumps of lowered graphs, big models."""

from __future__ import annotations

import os
import re

import numpy as np
import onnx
import pytest

import attngraph as ag

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")

PUBLIC = ["AttnGraphError", "ConfigError", "ExportError", "FeedError", "GraphError", "Model", "ParamError", "RuntimeFailure", "Session", "ShapeError", "TensorType", "UnsupportedError", "ValidationReport", "Value", "__version__", "AttentionReport", "add", "alibi_bias", "analyze", "plot_attention", "concatenate", "dense", "dropout", "embedding", "export", "feed_forward", "gelu", "generate", "generate_stream", "gru", "input", "last_timestep", "layer_norm", "load_params", "lstm", "models", "mean_pool", "multi_head_attention", "multiply", "positional_encoding", "relative_position_bias", "relu", "rms_norm", "save_params", "scale", "scaled_dot_product_attention", "sigmoid", "silu", "softmax", "tanh", "tied_projection", "timestep", "transformer_block", "validate"]
PUBLIC += ["block_sparse_mask", "block_sparse_pattern", "causal_mask", "strided_mask",
           "strided_pattern", "window_mask", "AttentionCost", "attention_cost",
           "attention_module", "get_attention", "process_sequence", "HeadImportance",
           "head_importance"]
PUBLIC += ["save_genai"]
PUBLIC += ["Stream"]
PUBLIC += ["save_triton"]


def test_public_api_snapshot() -> None:
    assert sorted(ag.__all__) == sorted(PUBLIC)
    for name in PUBLIC:
        assert hasattr(ag, name), name


def dump(proto: onnx.ModelProto) -> str:
    """One line per node: name, op (with domain), inputs -> outputs, sorted attributes; the
    nodes of a subgraph (a Scan body) follow their node, indented."""
    lines = [f"opsets: {sorted((o.domain or 'ai.onnx', o.version) for o in proto.opset_import)}"]
    _dump_nodes(proto.graph, lines, "")
    return "\n".join(lines) + "\n"


def _dump_nodes(graph: onnx.GraphProto, lines: list[str], indent: str) -> None:
    for n in graph.node:
        attrs = ", ".join(f"{a.name}={onnx.helper.get_attribute_value(a)!r}"
                          for a in sorted(n.attribute, key=lambda a: a.name)
                          if a.type != onnx.AttributeProto.GRAPH)
        op = f"{n.domain}.{n.op_type}" if n.domain else n.op_type
        lines.append(f"{indent}{n.name}: {op}({', '.join(n.input)}) -> {', '.join(n.output)}"
                     + (f" [{attrs}]" if attrs else ""))
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                body = a.g
                lines.append(f"{indent}  {a.name}({', '.join(i.name for i in body.input)}) -> "
                             f"{', '.join(o.name for o in body.output)}:")
                _dump_nodes(body, lines, indent + "    ")


def golden_model() -> ag.Model:
    x = ag.input("x", ("batch", "seq", 32))
    kpm = ag.input("kpm", ("batch", "seq"), "bool")
    y = ag.multi_head_attention(x, num_heads=4, num_kv_heads=2, window=5, key_padding_mask=kpm,
                                name="attn")
    return ag.Model([x, kpm], y)


def cached_model() -> ag.Model:
    ids = ag.input("input_ids", ("batch", "seq"), "int64")
    h = ag.embedding(ids, 11, 32, name="embed")
    h = ag.multi_head_attention(h, num_heads=4, num_kv_heads=2, causal=True, window=6,
                                rope=True, name="attn")
    return ag.Model(ids, ag.dense(h, 11, name="head"))


@pytest.mark.parametrize("kv_cache", [False, True], ids=["plain", "kv_cache"])
@pytest.mark.parametrize("target", ["ort", "onnx", "decomposed"])
def test_golden_graph_dumps(target: str, kv_cache: bool) -> None:
    """Lowered graphs are reviewed as text; regenerate with AG_UPDATE_GOLDEN=1."""
    model = cached_model() if kv_cache else golden_model()
    text = dump(ag.export(model, model.init(), target=target, kv_cache=kv_cache))
    stem = "gqa_window_rope_cache" if kv_cache else "gqa_window_padding"
    check_golden(text, f"{stem}.{target}.txt")


def test_golden_graph_dump_copying_cache() -> None:
    """The "ort" cached export in its copying form (share_buffer=False): GroupQueryAttention
    with the [B, 1, S, T] bias that holds the window and padding."""
    model = cached_model()
    text = dump(ag.export(model, model.init(), target="ort", kv_cache=True, share_buffer=False))
    check_golden(text, "gqa_window_rope_cache_copying.ort.txt")


def check_golden(text: str, name: str) -> None:
    path = os.path.join(GOLDEN, name)
    if os.environ.get("AG_UPDATE_GOLDEN"):
        os.makedirs(GOLDEN, exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    with open(path) as f:
        assert text == f.read(), f"lowering changed; review and regenerate {path}"


def test_big_models_use_external_data(tmp_path, monkeypatch) -> None:
    import attngraph._export as export_module

    monkeypatch.setattr(export_module, "_EXTERNAL_DATA_THRESHOLD", 1000)
    x = ag.input("x", ("batch", 16))
    model = ag.Model(x, ag.dense(x, 64, name="big"))
    params = model.init()
    with pytest.raises(ag.ExportError, match="pass a path"):
        ag.export(model, params)
    path = tmp_path / "big.onnx"
    ag.export(model, params, path)
    names = sorted(os.listdir(tmp_path))
    assert len(names) == 2 and names[0] == "big.onnx", names
    assert re.fullmatch(r"big\.onnx\.[0-9a-f]{16}\.data", names[1]), names
    assert (tmp_path / names[1]).stat().st_size >= 16 * 64 * 4
    feeds = {"x": np.ones((2, 16), np.float32)}
    got = ag.Session(str(path), ["CPUExecutionProvider"]).run(feeds)["output"]
    np.testing.assert_allclose(got, model.predict(params, feeds)["output"], atol=1e-5)


LAYER_BUILDERS = ["add", "concatenate", "dense", "dropout", "embedding", "gelu", "input",
                  "last_timestep", "layer_norm", "mean_pool", "multi_head_attention", "multiply",
                  "positional_encoding", "relu", "rms_norm", "scale",
                  "scaled_dot_product_attention", "sigmoid", "silu", "softmax", "tanh",
                  "tied_projection", "timestep"]


def test_layers_module_keeps_every_builder_in_a_small_file() -> None:
    """attngraph.layers offers every builder (the attention ones from their own module), the
    same objects as ag.*, and stays under STYLE's ~400 lines."""
    import inspect

    from attngraph import layers

    assert sorted(layers.__all__) == LAYER_BUILDERS
    for name in LAYER_BUILDERS:
        assert getattr(layers, name) is getattr(ag, name), name
    with open(inspect.getsourcefile(layers)) as f:  # type: ignore[arg-type]
        assert len(f.readlines()) <= 400
