"""`ag.save_triton`: a Triton Inference Server model repository for the onnxruntime backend.

    repo/
      name/
        config.pbtxt        max_batch_size, inputs/outputs (dims without the batch dim, -1 for
                            dynamic ones), dynamic_batching, instance_group
        1/model.onnx        the export (+ model.onnx.<hash>.data beside it when large)

The config is written as protobuf text by hand (no tritonclient needed to write one); the tests
parse it with Triton's own `ModelConfig` message. `read_config` reads one back (it needs
tritonclient, from the `serve` extra) for `attngraph serve`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ._deploy_checks import check_export_options, check_model, check_path, check_target
from ._errors import ConfigError, ExportError
from ._io import atomic_write_bytes

if TYPE_CHECKING:
    from ._model import Model

# ONNX TensorProto element types -> Triton data types (model_config.proto's DataType)
ONNX_TO_TRITON = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16",
                  5: "TYPE_INT16", 6: "TYPE_INT32", 7: "TYPE_INT64", 8: "TYPE_STRING",
                  9: "TYPE_BOOL", 10: "TYPE_FP16", 11: "TYPE_FP64", 12: "TYPE_UINT32",
                  13: "TYPE_UINT64", 16: "TYPE_BF16"}
# Triton data types -> numpy dtypes (for serving; bf16 and strings are not served)
TRITON_TO_NUMPY = {"TYPE_FP32": "float32", "TYPE_FP16": "float16", "TYPE_FP64": "float64",
                   "TYPE_INT64": "int64", "TYPE_INT32": "int32", "TYPE_INT16": "int16",
                   "TYPE_INT8": "int8", "TYPE_UINT8": "uint8", "TYPE_UINT16": "uint16",
                   "TYPE_UINT32": "uint32", "TYPE_UINT64": "uint64", "TYPE_BOOL": "bool"}
KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class TritonTensor:
    """One input or output as Triton sees it: dims without the batch dim, -1 = dynamic."""

    name: str
    data_type: str
    dims: tuple[int, ...]


def save_triton(model: Model, params: Mapping[str, np.ndarray], repo: str | os.PathLike[str],
                *, name: str, max_batch_size: int = 8, dynamic_batching: bool = True,
                instances: int = 1, kind: str = "cpu", max_queue_delay_us: int | None = None,
                **export_options: Any) -> str:
    """Write `repo/name/config.pbtxt` and `repo/name/1/model.onnx` for Triton's onnxruntime
    backend.

    Args:
        model, params: the model to export (every input and output must start with a dynamic
            batch dim unless max_batch_size=0).
        repo: the repository folder (created if missing; other models in it are kept).
        name: the model's name in the repository (letters, digits, `_`, `.`, `-`).
        max_batch_size: the largest batch Triton forms; 0 = Triton does not batch (dims then
            include the batch dim).
        dynamic_batching: let Triton merge concurrent requests into one batch.
        instances: model instances Triton runs side by side (`instance_group.count`).
        kind: "cpu" or "gpu" (`instance_group.kind`).
        max_queue_delay_us: how long the dynamic batcher waits for more requests.
        **export_options: passed to `ag.export` (target, opset, dtype, kv_cache, quantize...).

    Returns:
        The model's folder `repo/name`.

    Raises:
        ConfigError: a bad name, batch size, instance count or kind; an input or output
            without a dynamic leading batch dim when max_batch_size > 0.
        ExportError: the folder cannot be written (and everything `ag.export` raises).
    """
    from ._export import data_files, export

    check_model("save_triton", model, params)
    repo_dir = check_path("save_triton", "repo", repo)
    check_export_options("save_triton", export_options, ())
    check_target("save_triton", export_options.get("target", "ort"),
                 export_options.get("dtype", "float32"))
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"save_triton: name must be letters, digits, '_', '.' or '-', "
                          f"given {name!r}")
    _check_int("max_batch_size", max_batch_size, 0)
    _check_int("instances", instances, 1)
    if max_queue_delay_us is not None:
        _check_int("max_queue_delay_us", max_queue_delay_us, 0)
    if not isinstance(kind, str) or kind not in KINDS:
        raise ConfigError(f"save_triton: kind must be one of {list(KINDS)}, given {kind!r}")
    if not isinstance(dynamic_batching, bool):
        raise ConfigError(f"save_triton: dynamic_batching must be True or False, given "
                          f"{dynamic_batching!r}")
    if dynamic_batching and max_batch_size == 0:
        raise ConfigError("save_triton: dynamic_batching needs max_batch_size >= 1 (Triton "
                          "cannot batch a model whose max_batch_size is 0)")
    folder = os.path.join(repo_dir, name)
    version = os.path.join(folder, "1")
    try:
        os.makedirs(version, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"save_triton: cannot create {version!r}: {exc.strerror}") from None
    onnx_path = os.path.join(version, "model.onnx")
    proto = export(model, params, onnx_path, **export_options)
    try:
        inputs = _tensors(proto.graph.input, max_batch_size, "input")
        outputs = _tensors(proto.graph.output, max_batch_size, "output")
    except ConfigError:
        for leftover in (onnx_path, *data_files(proto, onnx_path)):
            if os.path.exists(leftover):
                os.unlink(leftover)
        raise
    text = config_text(name, inputs, outputs, max_batch_size=max_batch_size,
                       dynamic_batching=dynamic_batching, instances=instances, kind=kind,
                       max_queue_delay_us=max_queue_delay_us)
    atomic_write_bytes(os.path.join(folder, "config.pbtxt"), text.encode(), what="save_triton")
    return folder


def _check_int(what: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"save_triton: {what} must be an int >= {low}, given {value!r}")


def _tensors(values: Any, max_batch_size: int, what: str) -> list[TritonTensor]:
    """Graph inputs/outputs as Triton tensors; the leading batch dim is dropped when Triton
    batches (max_batch_size > 0), so it must be dynamic."""
    out = []
    for v in values:
        ttype = v.type.tensor_type
        if ttype.elem_type not in ONNX_TO_TRITON:
            raise ConfigError(f"save_triton: {what} {v.name!r} has ONNX element type "
                              f"{ttype.elem_type}, which Triton has no type for")
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in ttype.shape.dim]
        if max_batch_size > 0:
            first = ttype.shape.dim[0] if dims else None
            if first is None or first.HasField("dim_value"):
                raise ConfigError(
                    f"save_triton: {what} {v.name!r} has shape {dims} with no dynamic batch "
                    f"dim first; Triton batches along the first dim (use max_batch_size=0 "
                    f"for a model that takes whole batches)")
            dims = dims[1:]
        out.append(TritonTensor(v.name, ONNX_TO_TRITON[ttype.elem_type], tuple(dims)))
    return out


def config_text(name: str, inputs: list[TritonTensor], outputs: list[TritonTensor], *,
                max_batch_size: int, dynamic_batching: bool, instances: int, kind: str,
                max_queue_delay_us: int | None = None) -> str:
    """config.pbtxt for the onnxruntime backend, in protobuf text format."""
    lines = [f'name: "{name}"', 'backend: "onnxruntime"', f"max_batch_size: {max_batch_size}",
             'default_model_filename: "model.onnx"']
    for key, tensors in (("input", inputs), ("output", outputs)):
        for t in tensors:
            lines += [f"{key} {{", f'  name: "{t.name}"', f"  data_type: {t.data_type}",
                      f"  dims: [ {', '.join(str(d) for d in t.dims)} ]", "}"]
    if dynamic_batching:
        delay = "" if max_queue_delay_us is None else \
            f"\n  max_queue_delay_microseconds: {max_queue_delay_us}\n"
        lines.append(f"dynamic_batching {{{delay}}}")
    lines += ["instance_group {", f"  count: {instances}", f"  kind: {KINDS[kind]}", "}"]
    return "\n".join(lines) + "\n"


def read_config(path: str) -> Any:
    """Parse a config.pbtxt into Triton's `ModelConfig` message (needs tritonclient[grpc], in
    the `serve` extra)."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise ConfigError("reading a Triton config needs tritonclient: pip install "
                          "'attngraph[serve]'") from None
    try:
        with open(path) as f:
            return text_format.Parse(f.read(), model_config_pb2.ModelConfig())
    except OSError as exc:
        raise ConfigError(f"cannot read {path!r}: {exc.strerror}") from None
    except text_format.ParseError as exc:
        raise ConfigError(f"{path}: not a Triton model config: {exc}") from None


__all__ = ["ONNX_TO_TRITON", "TRITON_TO_NUMPY", "TritonTensor", "config_text", "read_config",
           "save_triton"]
