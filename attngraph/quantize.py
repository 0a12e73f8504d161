"""Weight quantization of exported models with onnxruntime's own quantization tools.

    int4  every MatMul whose weight is an initializer becomes onnxruntime's `MatMulNBits`
          (com.microsoft): 4-bit weights in blocks of `block_size` (32) along the reduced axis,
          one float scale and a 4-bit zero point per block; activations stay float.
    int8  onnxruntime's dynamic quantization of the MatMuls: int8 weights with a scale per output
          channel; activations are quantized to uint8 on the fly for each run.

Embeddings (Gather), norms and attention are left in float. A quantized model runs in
onnxruntime only (contrib ops / integer MatMuls).

This module imports `onnxruntime.quantization` (and, through it, onnx): the quantizers are
onnxruntime's own code and work on ONNX protos, so they cannot sit behind `runtime.py`'s
session API; this is the one place outside `runtime.py` / `_export/` that imports them.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import tempfile
from collections.abc import Iterator
from typing import Any

from ._errors import ExportError

MODES = ("int8", "int4")
DEFAULT_BLOCK_SIZE = 32
# onnxruntime's MatMulNBits accuracy_level: 4 = int8 arithmetic on blocks of activations
# (the CPU kernel's fast path), 0 = float arithmetic on dequantized weights
DEFAULT_ACCURACY_LEVEL = 4
# The quantization grid's own error in one MatMul: rms(x @ Wq - x @ W) / rms(x @ W) for Gaussian
# weights and activations, with each mode's scheme emulated in numpy (int4: asymmetric, 16
# levels over each block of 32; int8: symmetric per output channel, activations uint8 per
# tensor). Errors of independent MatMuls add in quadrature, so the grid alone explains up to
# GRID_ERROR * sqrt(n) over n quantized MatMuls: measured 0.19 for int4 on a 2-layer random
# Llama (bound 0.31, n=15), 0.57 on the 22-layer TinyLlama shape (bound 1.01, n=155).
GRID_ERROR = {"int8": 0.013, "int4": 0.081}
# rms(error) / rms(reference) per output that `ag.validate(..., quantize=...)` accepts: about
# three MatMuls' worth of the grid's error (0.24 / 0.039, rounded up). It is a claim about
# accuracy, not about depth: a model passes when quantization error did not compound far
# beyond that. Deep models on random weights fail it (their errors compound over every layer);
# the report then says whether the
# error is what the grid explains (a correct export that loses this much accuracy) or more (a
# defect).
TOLERANCES = {"int8": 0.05, "int4": 0.25}
# onnxruntime ops that hold quantized MatMul weights after int4 / int8 quantization
QUANTIZED_MATMULS = ("MatMulNBits", "MatMulInteger", "MatMulIntegerToFloat",
                     "DynamicQuantizeMatMul")

def check_mode(mode: Any, where: str) -> None:
    """Raise ExportError unless `mode` is one of MODES."""
    if mode not in MODES:
        raise ExportError(f"{where}: quantize must be one of {list(MODES)} or None, "
                          f"given {mode!r}")


def quantized_matmuls(proto: Any) -> int:
    """How many MatMuls of an exported ONNX proto hold quantized weights."""
    return sum(node.op_type in QUANTIZED_MATMULS for node in proto.graph.node)


def quantize_proto(proto: Any, mode: str, *, block_size: int = DEFAULT_BLOCK_SIZE,
                   accuracy_level: int = DEFAULT_ACCURACY_LEVEL) -> Any:
    """Quantize the MatMul weights of an ONNX model proto; returns the new proto.

    Args:
        proto: an onnx.ModelProto with its weights in memory.
        mode: "int4" (MatMulNBits, blocks of `block_size`) or "int8" (dynamic quantization).
        block_size: int4 block length along the reduced axis (a power of two >= 16).
        accuracy_level: int4 arithmetic, see DEFAULT_ACCURACY_LEVEL.

    Raises:
        ExportError: unknown mode or block size, or onnxruntime's quantizer failed.
    """
    check_mode(mode, "quantize")
    if mode == "int4":
        if block_size < 16 or block_size & (block_size - 1):
            raise ExportError(f"quantize: block_size must be a power of two >= 16, given "
                              f"{block_size!r}")
        return _int4(proto, block_size, accuracy_level)
    return _int8(proto)


def quantize_file(path: str, mode: str, **options: Any) -> Any:
    """Quantize an .onnx file (with its external data); returns the new proto. int8 reads the
    file itself (no float copy in memory besides the quantizer's own)."""
    import onnx

    check_mode(mode, "quantize")
    if not os.path.isfile(path):
        raise ExportError(f"quantize: no such file {path!r}")
    if mode == "int8":
        return _int8_file(path)
    try:
        proto = onnx.load_model(path, load_external_data=True)
    except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError, OSError, ...
        raise ExportError(f"quantize: cannot read {path!r} as an ONNX model: {exc}") from None
    return quantize_proto(proto, mode, **options)


def _int4(proto: Any, block_size: int, accuracy_level: int) -> Any:
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError as exc:  # the quantizer imports onnx-ir (the `quantize` extra)
        raise ExportError(f"quantize='int4' needs onnxruntime's int4 quantizer, which could "
                          f"not be imported ({exc}); install it with "
                          "pip install 'attngraph[quantize]'") from None

    props = list(proto.metadata_props)
    # onnxruntime before 1.24 (the last with Python 3.10 wheels: 1.23.2) has no `bits`: 4 always
    bits = {"bits": 4} if "bits" in inspect.signature(MatMulNBitsQuantizer).parameters else {}
    try:
        with _quiet():
            quantizer = MatMulNBitsQuantizer(proto, **bits, block_size=block_size,
                                             is_symmetric=False, accuracy_level=accuracy_level,
                                             op_types_to_quantize=("MatMul",))
            quantizer.process()
    except Exception as exc:  # noqa: BLE001 - onnxruntime's quantizer raises many kinds
        raise ExportError(f"quantize: onnxruntime's int4 quantizer failed: {exc}") from None
    out = quantizer.model.model
    _keep_props(out, props)
    return out


def _int8(proto: Any) -> Any:
    import onnx

    big = not _fits(proto)
    with tempfile.TemporaryDirectory(prefix=".tmp-quantize-") as tmp:
        src = os.path.join(tmp, "in.onnx")
        onnx.save_model(proto, src, save_as_external_data=big, all_tensors_to_one_file=True,
                        location="in.onnx.data")
        return _int8_file(src, list(proto.metadata_props))


def _int8_file(src: str, props: list[Any] | None = None) -> Any:
    """onnxruntime's dynamic quantization of the MatMuls of the model file `src` (its output
    goes through a temporary file with external data, so any size works)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix=".tmp-quantize-") as tmp:
        dst = os.path.join(tmp, "out.onnx")
        # contrib ops stop shape inference: weights are float (TensorProto.FLOAT = 1)
        options = {"MatMulConstBOnly": True, "DefaultTensorType": 1}
        try:
            with _quiet():
                quantize_dynamic(src, dst, op_types_to_quantize=["MatMul"], per_channel=True,
                                 weight_type=QuantType.QInt8, use_external_data_format=True,
                                 extra_options=options)
        except Exception as exc:  # noqa: BLE001 - onnxruntime's quantizer raises many kinds
            raise ExportError(f"quantize: onnxruntime's int8 quantizer failed: {exc}") from None
        out = onnx.load_model(dst, load_external_data=True)
    if props is not None:
        _keep_props(out, props)
    return out


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime's quantizers log advice on the root logger; keep stderr for our lines."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _fits(proto: Any) -> bool:
    """Whether ByteSize() can be asked (protobuf refuses messages over 2 GiB)."""
    return sum(t.ByteSize() for t in proto.graph.initializer) < 1_800_000_000


def _keep_props(proto: Any, props: list[Any]) -> None:
    """The quantizers may drop metadata_props; put attngraph's back."""
    have = {p.key for p in proto.metadata_props}
    for p in props:
        if p.key not in have:
            proto.metadata_props.add(key=p.key, value=p.value)


__all__ = ["DEFAULT_BLOCK_SIZE", "GRID_ERROR", "MODES", "TOLERANCES", "check_mode",
           "quantize_file", "quantize_proto", "quantized_matmuls"]
