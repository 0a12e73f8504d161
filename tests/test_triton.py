"""`ag.save_triton`: each config.pbtxt parses with Triton's own ModelConfig protobuf (from
tritonclient's grpc package) and matches the exported model's names, dims and types."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2  # the test extra installs tritonclient[grpc]

import attngraph as ag
from attngraph.triton import TRITON_TO_NUMPY


def encoder() -> ag.Model:
    x = ag.input("x", ("batch", "seq", 14))
    keep = ag.input("padding_mask", ("batch", "seq"), "bool")
    h = ag.transformer_block(x, num_heads=2, ffn_dim=9, key_padding_mask=keep, name="block")
    return ag.Model({"x": x, "padding_mask": keep},
                    {"hidden": h, "pooled": ag.mean_pool(h, name="pool")}, name="enc")


def tiny_llama() -> ag.Model:
    return ag.models.llama(vocab_size=31, hidden_size=24, intermediate_size=11,
                           num_hidden_layers=2, num_attention_heads=3, num_key_value_heads=1)


def parse(folder: str) -> Any:
    with open(os.path.join(folder, "config.pbtxt")) as f:
        return text_format.Parse(f.read(), model_config_pb2.ModelConfig())


def dtype_name(value: Any) -> str:
    return model_config_pb2.DataType.Name(value)


def assert_matches_model(config: Any, onnx_path: str, batched: bool) -> None:
    """Names, order, dims (-1 for dynamic, batch dim dropped when batched) and types."""
    session = ag.Session(onnx_path, ["CPUExecutionProvider"])
    for got, want in ((config.input, session.inputs), (config.output, session.outputs)):
        assert [t.name for t in got] == list(want)
        for t in got:
            shape = want[t.name].shape
            dims = [d if isinstance(d, int) else -1 for d in shape]
            assert list(t.dims) == (dims[1:] if batched else dims), t.name
            assert TRITON_TO_NUMPY[dtype_name(t.data_type)] == want[t.name].dtype, t.name


def test_encoder_repository(tmp_path) -> None:
    model = encoder()
    folder = ag.save_triton(model, model.init(seed=2), tmp_path / "repo", name="enc",
                            max_batch_size=6, instances=3, max_queue_delay_us=700)
    assert folder == os.path.join(tmp_path, "repo", "enc")
    assert sorted(os.listdir(folder)) == ["1", "config.pbtxt"]
    assert os.listdir(os.path.join(folder, "1")) == ["model.onnx"]
    config = parse(folder)
    assert config.name == "enc" and config.backend == "onnxruntime"
    assert config.max_batch_size == 6
    assert config.HasField("dynamic_batching")
    assert config.dynamic_batching.max_queue_delay_microseconds == 700
    assert len(config.instance_group) == 1
    assert config.instance_group[0].count == 3
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert [dtype_name(t.data_type) for t in config.input] == ["TYPE_FP32", "TYPE_BOOL"]
    assert [list(t.dims) for t in config.input] == [[-1, 14], [-1]]
    assert [list(t.dims) for t in config.output] == [[-1, 14], [14]]
    assert_matches_model(config, os.path.join(folder, "1", "model.onnx"), batched=True)


def test_cached_decoder_float16_gpu_no_batching(tmp_path) -> None:
    model = tiny_llama()
    folder = ag.save_triton(model, model.init(seed=1), tmp_path, name="llama.kv-1",
                            kv_cache=True, dtype="float16", kind="gpu",
                            dynamic_batching=False)
    config = parse(folder)
    assert not config.HasField("dynamic_batching")
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    names = [t.name for t in config.input]
    assert names == ["input_ids", "attention_mask", "past_key_values.0.key",
                     "past_key_values.0.value", "past_key_values.1.key",
                     "past_key_values.1.value"]
    past = {t.name: list(t.dims) for t in config.input}["past_key_values.1.value"]
    assert past[0] == 1 and past[2] == 8  # kv heads, head dim; the cache length is dynamic
    logits = config.output[0]
    assert logits.name == "logits" and dtype_name(logits.data_type) == "TYPE_FP16"
    assert list(logits.dims) == [-1, 31]
    assert_matches_model(config, os.path.join(folder, "1", "model.onnx"), batched=True)


def test_fixed_batch_needs_max_batch_size_zero(tmp_path) -> None:
    x = ag.input("x", (2, "seq", 6))
    model = ag.Model(x, {"y": ag.dense(x, 5, name="proj")}, name="fixed")
    params = model.init(seed=0)
    with pytest.raises(ag.ConfigError, match=r"input 'x' has shape \[2, -1, 6\].*"
                       r"max_batch_size=0"):
        ag.save_triton(model, params, tmp_path, name="fixed", dynamic_batching=False)
    assert not os.path.exists(tmp_path / "fixed" / "1" / "model.onnx")
    wide = ag.Model(x, {"y": ag.dense(x, 64, name="proj")}, name="wide")  # a 1.5 KiB kernel
    with pytest.raises(ag.ConfigError):  # its external data file is removed as well
        ag.save_triton(wide, wide.init(seed=0), tmp_path, name="wide", dynamic_batching=False,
                       external_data=True)
    assert os.listdir(tmp_path / "wide" / "1") == []
    folder = ag.save_triton(model, params, tmp_path, name="fixed", max_batch_size=0,
                            dynamic_batching=False)
    config = parse(folder)
    assert config.max_batch_size == 0
    assert [list(t.dims) for t in config.input] == [[2, -1, 6]]
    assert_matches_model(config, os.path.join(folder, "1", "model.onnx"), batched=False)


@pytest.mark.parametrize("options, message", [
    ({"name": "a/b"}, "name must be"),
    ({"name": "m", "max_batch_size": -1}, "max_batch_size must be an int >= 0"),
    ({"name": "m", "instances": 0}, "instances must be an int >= 1"),
    ({"name": "m", "kind": "tpu"}, "kind must be one of"),
    ({"name": "m", "max_batch_size": 0}, "dynamic_batching needs max_batch_size >= 1"),
    ({"name": "m", "kind": ["cpu"]}, r"kind must be one of \['cpu', 'gpu'\], given \['cpu'\]"),
    ({"name": "m", "instances": "2"}, "instances must be an int >= 1, given '2'"),
    ({"name": "m", "kv_cahce": True},
     r"unknown option \['kv_cahce'\]; it passes these to ag.export: \['target'"),
    ({"name": "m", "target": "tf"}, "target must be one of"),
    ({"name": "m", "repo": 5}, "repo must be a folder path.*given 5"),
    ({"name": "m", "model": "x"}, "model must be an ag.Model.*given str"),
    ({"name": "m", "params": [1]}, "params must be a mapping.*given list"),
])
def test_mistakes(tmp_path, options: dict[str, Any], message: str) -> None:
    """Bad arguments raise ConfigError before anything is written."""
    model = encoder()
    args = {"model": model, "params": model.init(seed=0), "repo": tmp_path, **options}
    with pytest.raises(ag.ConfigError, match=message):
        ag.save_triton(args.pop("model"), args.pop("params"), args.pop("repo"), **args)
    assert os.listdir(tmp_path) == []


def test_repository_keeps_other_models(tmp_path) -> None:
    model = encoder()
    params = model.init(seed=0)
    ag.save_triton(model, params, tmp_path, name="a")
    ag.save_triton(model, params, tmp_path, name="b", max_batch_size=2)
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]
    assert parse(str(tmp_path / "a")).max_batch_size == 8
    assert parse(str(tmp_path / "b")).max_batch_size == 2
    x = np.random.default_rng(0).standard_normal((3, 5, 14)).astype(np.float32)
    feeds = {"x": x, "padding_mask": np.ones((3, 5), bool)}
    got = ag.Session(str(tmp_path / "b" / "1" / "model.onnx")).run(feeds)
    np.testing.assert_allclose(got["hidden"], model.predict(params, feeds)["hidden"], atol=1e-4)


def test_cli_export_triton(tmp_path, capsys) -> None:
    from attngraph.cli import main

    path = tmp_path / "enc_model.py"
    path.write_text("import attngraph as ag\n\n"
                    "def build():\n"
                    "    x = ag.input('x', ('batch', 'seq', 10))\n"
                    "    return ag.Model(x, {'y': ag.dense(x, 3, name='proj')}, name='m')\n")
    repo = tmp_path / "repo"
    assert main(["export", str(path), "--triton", str(repo), "--max-batch-size", "5",
                 "--instances", "2", "--quantize", "int8"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {repo / 'enc_model'}: config.pbtxt, 1/model.onnx" in out
    assert f"attngraph serve {repo}" in out
    assert not (tmp_path / "enc_model.onnx").exists()  # only the repository was asked for
    config = parse(str(repo / "enc_model"))
    assert config.max_batch_size == 5 and config.instance_group[0].count == 2
    assert [list(t.dims) for t in config.input] == [[-1, 10]]
    assert_matches_model(config, str(repo / "enc_model" / "1" / "model.onnx"), batched=True)
    assert main(["export", str(path), "--triton", str(repo), "--name", "b/c"]) == 2
    assert "name must be" in capsys.readouterr().err
