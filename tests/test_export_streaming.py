"""Export that streams its weights (DESIGN §8): the bytes written equal the in-memory model's,
parameters are read once and never copied whole, external data is content-named; and the
qualities of the written file (value_info, doc_string, names the user chose)."""

from __future__ import annotations

import os
import re
import tracemalloc

import numpy as np
import onnx
import pytest
from conftest import assert_parity, randn
from onnx import numpy_helper

import attngraph as ag
from attngraph._export import _weights

HF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "goldens", "hf")


def stack(width: int = 24) -> ag.Model:
    x = ag.input("x", ("batch", "seq", width))
    h = ag.multi_head_attention(ag.layer_norm(x, name="ln"), num_heads=3, num_kv_heads=1,
                                causal=True, rope=True, name="attn")
    h = ag.add(x, h, name="res")
    return ag.Model(x, ag.dense(h, 37, name="head"))


def decoder() -> ag.Model:
    ids = ag.input("input_ids", ("batch", "seq"), "int64")
    h = ag.embedding(ids, 53, 24, name="embed")
    h = ag.multi_head_attention(h, num_heads=3, num_kv_heads=1, causal=True, rope=True,
                                name="attn")
    return ag.Model(ids, ag.dense(h, 53, name="head"))


def initializers(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("kind", ["plain", "kv_cache", "streaming"])
@pytest.mark.parametrize("target", ag._registry.TARGETS)
def test_one_file_bytes_equal_the_in_memory_model(target: str, kind: str, dtype: str,
                                                  tmp_path) -> None:
    model = decoder() if kind != "plain" else stack()
    params = model.init(seed=4)
    opts = {"kv_cache": kind == "kv_cache", "streaming": kind == "streaming"}
    full = ag.export(model, params, target=target, dtype=dtype, **opts)
    path = tmp_path / "m.onnx"
    written = ag.export(model, params, path, target=target, dtype=dtype, **opts)
    assert path.read_bytes() == full.SerializeToString()
    assert os.listdir(tmp_path) == ["m.onnx"]
    # the returned proto points at the weights' bytes inside the file instead of holding them
    big = [t for t in written.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert big and all(t.external_data[0].value == "m.onnx" for t in big)
    onnx.load_external_data_for_model(written, str(tmp_path))
    got, want = initializers(written), initializers(full)
    assert list(got) == list(want) and all(np.array_equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("target", ag._registry.TARGETS)
def test_external_data_is_content_named_reproducible_and_replaced(target: str, tmp_path) -> None:
    model = stack()
    path = tmp_path / "m.onnx"
    full = ag.export(model, model.init(seed=1), target=target)
    ag.export(model, model.init(seed=1), path, target=target, external_data=True)
    first = sorted(os.listdir(tmp_path))
    assert len(first) == 2 and re.fullmatch(r"m\.onnx\.[0-9a-f]{16}\.data", first[1]), first
    onnx_bytes, data_bytes = path.read_bytes(), (tmp_path / first[1]).read_bytes()
    loaded = onnx.load(str(path))
    got, want = initializers(loaded), initializers(full)
    assert list(got) == list(want) and all(np.array_equal(got[k], want[k]) for k in want)
    onnx.checker.check_model(str(path), full_check=True)
    feeds = {"x": randn(2, 5, 24, seed=3)}
    np.testing.assert_allclose(ag.Session(str(path)).run(feeds)["output"],
                               model.predict(model.init(seed=1), feeds)["output"], atol=1e-4)
    # the same inputs again (a fresh build of the model): the same names and bytes
    ag.export(stack(), stack().init(seed=1), path, target=target, external_data=True)
    assert sorted(os.listdir(tmp_path)) == first
    assert path.read_bytes() == onnx_bytes and (tmp_path / first[1]).read_bytes() == data_bytes
    # other weights: another data file, and the old one is gone
    ag.export(model, model.init(seed=2), path, target=target, external_data=True)
    second = sorted(os.listdir(tmp_path))
    assert len(second) == 2 and second[1] != first[1]
    # back to one file: no data file left
    ag.export(model, model.init(seed=2), path, target=target)
    assert os.listdir(tmp_path) == ["m.onnx"]


class Counting(dict):
    """Parameters as memory maps of a file, counting every read."""

    def __init__(self, arrays: dict[str, np.ndarray], folder: str) -> None:
        mapped = {}
        for name, a in arrays.items():
            file = os.path.join(folder, name + ".bin")
            a.tofile(file)
            mapped[name] = np.memmap(file, a.dtype, "r", shape=a.shape)
        super().__init__(mapped)
        self.reads: dict[str, int] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        self.reads[name] = self.reads.get(name, 0) + 1
        return super().__getitem__(name)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_memory_mapped_params_are_read_once_and_never_copied_whole(dtype: str, tmp_path,
                                                                   monkeypatch) -> None:
    model = stack(width=288)  # kernels of 288 x 288 floats: 324 KiB each
    arrays = model.init(seed=6)
    folder = tmp_path / "params"
    folder.mkdir()
    params = Counting(arrays, str(folder))
    monkeypatch.setattr(_weights, "CHUNK", 4096)  # slices far smaller than one kernel
    tracemalloc.start()
    try:
        proto = ag.export(model, params, tmp_path / "m.onnx", dtype=dtype, external_data=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert params.reads == dict.fromkeys(arrays, 1)  # checked and written from one read
    kernel = 288 * 288 * np.dtype(dtype).itemsize
    assert peak < kernel, (peak, kernel)  # no whole converted copy of even one kernel
    loaded = initializers(onnx.load(str(tmp_path / "m.onnx")))
    for name, a in arrays.items():
        np.testing.assert_array_equal(loaded[name], a.astype(dtype))
    returned = {t.name: t for t in proto.graph.initializer}
    assert returned["head.kernel"].data_location == onnx.TensorProto.EXTERNAL


def test_a_checkpoint_exports_the_same_bytes_lazily_and_materialised(tmp_path) -> None:
    model, params = ag.models.hf.from_pretrained(os.path.join(HF, "llama"))
    copied = {k: np.array(params[k]) for k in params}
    for dtype in ("float32", "float16"):
        lazy, materialised = tmp_path / f"lazy.{dtype}.onnx", tmp_path / f"dict.{dtype}.onnx"
        ag.export(model, params, lazy, dtype=dtype, kv_cache=True)
        ag.export(model, copied, materialised, dtype=dtype, kv_cache=True)
        assert lazy.read_bytes() == materialised.read_bytes()


def test_progress_bar_on_request(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    model = stack()
    ag.export(model, model.init(), tmp_path / "m.onnx", progress=True)
    assert "export" in capsys.readouterr().err
    ag.export(model, model.init(), tmp_path / "m.onnx")  # not a terminal: quiet
    assert capsys.readouterr().err == ""
    with pytest.raises(ag.ExportError, match="progress must be"):
        ag.export(model, model.init(), tmp_path / "m.onnx", progress="yes")
    with pytest.raises(ag.ExportError, match="needs a path"):
        ag.export(model, model.init(), external_data=True)


# -- the written file: shapes for Netron, the summary, the user's names ----------------------

@pytest.mark.parametrize("target", ag._registry.TARGETS)
def test_value_info_gives_intermediate_shapes_and_doc_string_the_summary(target: str) -> None:
    model = stack()
    proto = ag.export(model, model.init(), target=target)
    infos = {v.name: v for v in proto.graph.value_info}
    produced = [o for n in proto.graph.node for o in n.output
                if o not in {x.name for x in proto.graph.output}]
    assert infos and set(infos) <= set(produced)
    with_shape = [v for v in infos.values() if v.type.tensor_type.HasField("shape")]
    assert with_shape
    ln = infos[next(o for n in proto.graph.node if n.name.startswith("ln/") for o in n.output)]
    dims = [d.dim_param or d.dim_value for d in ln.type.tensor_type.shape.dim]
    assert dims == ["batch", "seq", 24]
    if target == "decomposed":  # plain ONNX ops throughout: every produced tensor has a shape
        assert set(infos) == set(produced) and len(with_shape) == len(produced)
    assert model.summary().splitlines()[1] in proto.doc_string
    assert "attn" in proto.doc_string and target in proto.doc_string


@pytest.mark.parametrize("output", ["dense_0.kernel", "dense_0/MatMul", "dense_0.bias_1"])
def test_output_names_that_match_internal_names(output: str, target: str, tmp_path) -> None:
    x = ag.input("x", ("batch", 6))
    model = ag.Model(x, {output: ag.dense(x, 8), "other": ag.dense(x, 3)})
    params = model.init(seed=2)
    assert_parity(model, params, {"x": randn(2, 6, seed=1)}, target)
    ag.export(model, params, tmp_path / "m.onnx", target=target)
    outs = ag.Session(str(tmp_path / "m.onnx")).output_names
    assert outs == [output, "other"]


def test_an_output_named_like_an_input() -> None:
    x = ag.input("x", ("batch", 6))
    with pytest.raises(ag.ExportError, match="output 'x' has the name of an input"):
        ag.export(ag.Model(x, {"x": ag.dense(x, 8)}), ag.Model(x, {"x": ag.dense(x, 8)}).init())
    model = ag.Model(x, {"x": x, "y": ag.dense(x, 2)})  # the input itself passed through
    feeds = {"x": randn(2, 6, seed=1)}
    got = ag.Session(ag.export(model, model.init())).run(feeds)
    np.testing.assert_array_equal(got["x"], feeds["x"])
