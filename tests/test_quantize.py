"""Weight quantization with onnxruntime's tools: export(quantize=...), validate's report."""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import onnx
import pytest

import attngraph as ag
from attngraph._validate import Check, compare_quantized

VOCAB = 301


def tiny_llama() -> ag.Model:
    return ag.models.llama(vocab_size=VOCAB, hidden_size=96, intermediate_size=160,
                           num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2)


@pytest.fixture(scope="module")
def llama() -> tuple[ag.Model, dict[str, np.ndarray], np.ndarray]:
    model = tiny_llama()
    ids = np.random.default_rng(3).integers(0, VOCAB, (2, 9))
    return model, model.init(seed=1), ids


def float_matmul_weights(proto: onnx.ModelProto) -> list[str]:
    inits = {t.name for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    return [n.name for n in proto.graph.node if n.op_type == "MatMul" and n.input[1] in inits]


def test_int4_uses_matmulnbits_blocks_of_32(llama, target, tmp_path) -> None:
    model, params, ids = llama
    plain = ag.export(model, params, target=target)
    weights = float_matmul_weights(plain)
    assert len(weights) == 15  # 2 x (packed or separate q/k/v + out + 3 MLP) + lm_head ...
    path = str(tmp_path / "q4.onnx")
    proto = ag.export(model, params, path, target=target, quantize="int4")
    nbits = [n for n in proto.graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == len(weights) and float_matmul_weights(proto) == []
    for n in nbits:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        assert attrs["bits"] == 4 and attrs["block_size"] == 32 and n.domain == "com.microsoft"
    assert {p.key: p.value for p in proto.metadata_props}["attngraph.quantize"] == "int4"
    got = ag.Session(path).run({"input_ids": ids})["logits"]
    ref = model.predict(params, {"input_ids": ids})["logits"]
    rms = np.sqrt(np.mean((got - ref) ** 2)) / np.sqrt(np.mean(ref**2))
    assert 1e-3 < rms < 0.25  # quantized: not exact, but close


def test_int8_dynamic_quantization(llama) -> None:
    model, params, ids = llama
    proto = ag.export(model, params, quantize="int8")
    ops = Counter(n.op_type for n in proto.graph.node)
    assert ops["MatMulInteger"] == 15 and ops["DynamicQuantizeLinear"] > 0
    assert float_matmul_weights(proto) == []
    int8 = [t for t in proto.graph.initializer  # weights, not their zero points
            if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2]
    assert len(int8) == 15
    got = ag.Session(proto).run({"input_ids": ids})["logits"]
    ref = model.predict(params, {"input_ids": ids})["logits"]
    rms = np.sqrt(np.mean((got - ref) ** 2)) / np.sqrt(np.mean(ref**2))
    assert 1e-4 < rms < 0.05


def test_sizes(llama, tmp_path) -> None:
    model, params, _ = llama
    sizes = {}
    for mode in (None, "int8", "int4"):
        path = str(tmp_path / f"{mode}.onnx")
        ag.export(model, params, path, quantize=mode)
        sizes[mode] = os.path.getsize(path)
    # the embedding (301 x 96) stays float; every MatMul weight shrinks
    assert sizes["int4"] < sizes["int8"] < 0.5 * sizes[None]


def test_validate_reports_quantized_error(llama) -> None:
    model, params, ids = llama
    report = ag.validate(model, params, {"input_ids": ids}, ["ort", "decomposed"],
                         quantize="int4")
    assert report.passed and report.quantize == "int4"
    text = str(report)
    assert "rms err <= 0.25*rms(ref)" in text
    assert "validation (float32, int4 weights vs the float32 reference): PASSED" in text
    assert len(report.checks) == 2 and all(c.note.startswith("rms err 0.") for c in report.checks)
    # every MatMul with a weight (2 layers x 7, and the head) became MatMulNBits
    assert report.matmuls == {"ort": 15, "decomposed": 15}
    assert "int4's grid alone explains <= 0.31 here (0.081 per quantized MatMul x sqrt(15))" \
        in text
    assert "the accuracy int4 weights are held to" in text
    plain = ag.validate(model, params, {"input_ids": ids}, ["ort"])
    assert plain.checks[0].max_abs < 1e-4 < report.checks[0].max_abs


def test_quantized_rule_fails_on_a_large_error() -> None:
    ref = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    base = Check("ort", "y", 0.0, 0.0, 0.0, 0.0, True)
    assert compare_quantized(base, ref * 1.1, ref, "int4").passed  # rms err 0.1
    bad = compare_quantized(base, ref * 1.3, ref, "int4")  # rms err 0.3
    assert not bad.passed and bad.note == "rms err 0.300*rms(ref) > 0.25*rms(ref)"
    # with the export's quantized MatMul count: is the error what int4's grid explains?
    deep = compare_quantized(base, ref * 1.3, ref, "int4", 25)  # grid: 0.081 * 5 = 0.405
    assert not deep.passed and deep.note.endswith(
        "int4's grid alone explains <= 0.41 here (0.081 per quantized MatMul x sqrt(25)): "
        "the error is the grid's")
    shallow = compare_quantized(base, ref * 1.3, ref, "int4", 4)  # grid: 0.162 < 0.3
    assert "0.16 here" in shallow.note and shallow.note.endswith("look for a defect")
    assert "FAIL: rms err 0.300*rms(ref) > 0.25*rms(ref); int4's grid" in shallow.verdict()
    assert not compare_quantized(base, ref * 1.1, ref, "int8").passed  # 0.1 > 0.05


def test_cached_decoder_quantized_greedy_tokens(llama) -> None:
    model, params, _ = llama
    prompt = np.random.default_rng(5).integers(0, VOCAB, (1, 6))
    fp32 = ag.Session(ag.export(model, params, kv_cache=True))
    q8 = ag.Session(ag.export(model, params, kv_cache=True, quantize="int8"))
    want = ag.generate(fp32, prompt, 8)
    got = ag.generate(q8, prompt, 8)
    assert got.shape == want.shape
    assert (got == want).mean() >= 0.5  # int8: mostly the same greedy tokens


def test_mistakes(llama) -> None:
    model, params, ids = llama
    with pytest.raises(ag.ExportError, match=r"quantize must be one of \['int8', 'int4'\]"):
        ag.export(model, params, quantize="int3")
    with pytest.raises(ag.ExportError, match="quantize goes with dtype='float32'"):
        ag.validate(model, params, {"input_ids": ids}, ["ort"], dtype="float16",
                    quantize="int8")
    with pytest.raises(ag.ExportError, match="quantize='int8' .* needs dtype='float32'"):
        ag.export(model, params, dtype="float16", quantize="int8")
    from attngraph.quantize import quantize_proto

    with pytest.raises(ag.ExportError, match="block_size must be a power of two"):
        quantize_proto(ag.export(model, params), "int4", block_size=24)


def test_int4_without_its_quantizer_says_which_extra(llama, monkeypatch) -> None:
    """onnxruntime's int4 quantizer imports onnx-ir; without it the user gets our error."""
    import builtins

    model, params, _ids = llama
    real_import = builtins.__import__

    def no_quantizer(name: str, *args: object, **kwargs: object) -> object:
        if name.startswith("onnxruntime.quantization.matmul_nbits_quantizer"):
            raise ModuleNotFoundError("No module named 'onnx_ir'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_quantizer)
    with pytest.raises(ag.ExportError, match=r"attngraph\[quantize\]"):
        ag.export(model, params, quantize="int4")


LM_FILE = '''
import attngraph as ag

def build():
    model = ag.models.llama(vocab_size=301, hidden_size=96, intermediate_size=160,
                            num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2)
    return model, {k: v * 3 if v.ndim == 2 else v for k, v in model.init(seed=3).items()}
'''


def test_cli_export_and_generate_report_agreement(tmp_path, capsys) -> None:
    from attngraph.cli import main

    path = tmp_path / "lm.py"
    path.write_text(LM_FILE)
    out = tmp_path / "lm4.onnx"
    assert main(["export", str(path), "-o", str(out), "--kv-cache", "--quantize", "int4"]) == 0
    assert "int4 weights" in capsys.readouterr().out
    ops = Counter(n.op_type for n in onnx.load(str(out)).graph.node)
    assert ops["MatMulNBits"] == 15 and ops["MatMul"] == 0
    fp32 = tmp_path / "lm.onnx"
    assert main(["export", str(path), "-o", str(fp32), "--kv-cache"]) == 0
    capsys.readouterr()
    # quantized from the float32 file here; tokens on stdout, the agreement on stderr
    assert main(["generate", str(fp32), "--prompt", "5 17 3", "--prompt", "9 2",
                 "-n", "10", "--quantize", "int8"]) == 0
    captured = capsys.readouterr()
    rows = [line.split() for line in captured.out.splitlines()]
    assert [len(r) for r in rows] == [13, 12]
    line = next(x for x in captured.err.splitlines() if x.startswith("greedy agreement"))
    same, total = (int(v) for v in line.split(": ")[1].split(" ")[0].split("/"))
    assert total == 20 and line.startswith("greedy agreement of int8 with float32: ")
    # the count is what comparing with the float32 decoder's own tokens gives
    want = ag.generate(ag.Session(str(fp32)), np.array([[5, 17, 3], [0, 9, 2]]), 10,
                       attention_mask=np.array([[1, 1, 1], [0, 1, 1]]))[:, 3:]
    got = np.array([[int(t) for t in rows[0][3:]], [int(t) for t in rows[1][2:]]])
    assert same == int((got == want).sum())
    assert main(["generate", str(path), "--prompt", "5 17 3", "-n", "4", "--quantize", "int4",
                 "--temperature", "0.7"]) == 2
    assert "leave --temperature 0" in capsys.readouterr().err
