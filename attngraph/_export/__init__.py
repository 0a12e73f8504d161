"""`ag.export`: lower a model to ONNX for one target, check it, write it atomically."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import helper

from .._decode import (
    IDS,
    LOGITS,
    MASK,
    CacheLayer,
    Decode,
    cache_input_types,
    cache_layers,
    past_names,
    present_names,
)
from .._errors import ExportError
from .._io import atomic_write_bytes
from .._params import check_params
from .._registry import OPS, TARGETS
from .._types import FLOAT_DTYPES, TensorType
from ._builder import ONNX_DTYPES, Builder

if TYPE_CHECKING:
    from .._model import Model

DEFAULT_OPSET = {"ort": 23, "onnx": 23, "decomposed": 17}
MIN_OPSET = {"ort": 17, "onnx": 23, "decomposed": 17}
MAX_OPSET = 25
WINDOW_IMPLS = ("auto", "blocked", "direct")
_EXTERNAL_DATA_THRESHOLD = 1_800_000_000  # bytes of initialisers; protobuf's hard limit is 2 GiB


def _value_info(name: str, ttype: TensorType, float_dtype: str) -> onnx.ValueInfoProto:
    dtype = float_dtype if ttype.dtype in FLOAT_DTYPES else ttype.dtype
    return helper.make_tensor_value_info(name, ONNX_DTYPES[dtype], list(ttype.shape))


def export(
    model: Model,
    params: Mapping[str, np.ndarray],
    path: str | os.PathLike[str] | None = None,
    *,
    target: str = "ort",
    opset: int | None = None,
    dtype: str = "float32",
    kv_cache: bool = False,
    window_impl: str = "auto",
) -> onnx.ModelProto:
    """Lower `model` to ONNX with every attention layer as one fused node.

    Args:
        model: the model to export.
        params: parameters, checked by name and shape.
        path: where to write the `.onnx` file (atomically); None returns the proto only.
        target: "ort" (onnxruntime contrib ops), "onnx" (standard Attention, opset 23+) or
            "decomposed" (opset 17 primitives).
        opset: the default ONNX opset; default 23 for "ort"/"onnx", 17 for "decomposed".
        dtype: "float32" or "float16" for float inputs, outputs and weights.
        kv_cache: export a decoder with a key/value cache (causal language models: one int
            input of token ids, one [batch, seq, vocab] output). Inputs `input_ids [batch,
            seq]`, `attention_mask [batch, total_seq]` (1 = token, 0 = left padding),
            `past_key_values.{i}.key|value [batch, kv_heads, past_seq, head_dim]`; outputs
            `logits`, `present.{i}.key|value`. One file serves the prompt (past_seq = 0) and
            every later step; sliding-window layers keep at most `window` positions. On
            "ort", onnxruntime's CPU GroupQueryAttention takes several new tokens after a
            non-empty cache only at batch 1.
        window_impl: how sliding-window attention layers are lowered: "blocked" (queries in
            blocks attend their own and the neighbouring key blocks: O(S·W)), "direct" (the
            whole [S, S] score matrix under a band mask: O(S²)) or "auto" (blocked when the
            sequence is longer than twice the block size, decided at run time). Cached
            decoding steps always use the direct form.

    Returns:
        The ONNX model proto (the same bytes every time for the same model, params, target).

    Raises:
        ExportError: unknown target/dtype/opset, unwritable path.
        UnsupportedError: a layer uses a feature the target cannot express, or (kv_cache)
            the model is not a causal decoder.
        ParamError: params do not match the model.
    """
    from .. import __version__

    if target not in TARGETS:
        raise ExportError(f"export: unknown target {target!r}; expected one of {list(TARGETS)}")
    if dtype not in FLOAT_DTYPES:
        raise ExportError(f"export: dtype must be 'float32' or 'float16', given {dtype!r}")
    if opset is None:
        opset = DEFAULT_OPSET[target]
    if not isinstance(opset, int) or not MIN_OPSET[target] <= opset <= MAX_OPSET:
        raise ExportError(
            f"export: target {target!r} needs an opset in {MIN_OPSET[target]}..{MAX_OPSET}, "
            f"given {opset!r}"
        )
    if path is not None:
        path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise ExportError(f"export: directory {directory!r} does not exist (path {path!r})")
        if not os.access(directory, os.W_OK):
            raise ExportError(f"export: directory {directory!r} is not writable (path {path!r})")
    if window_impl not in WINDOW_IMPLS:
        raise ExportError(f"export: window_impl must be one of {list(WINDOW_IMPLS)}, "
                          f"given {window_impl!r}")
    if not isinstance(kv_cache, bool):
        raise ExportError(f"export: kv_cache must be True or False, given {kv_cache!r}")
    layers = cache_layers(model, "export(kv_cache=True)") if kv_cache else None
    checked = check_params(model.param_specs, params)

    b = Builder(target=target, opset=opset, dtype=dtype, params=checked,
                param_key=model.param_key, window_impl=window_impl)
    if layers is None:
        graph_inputs, graph_outputs = _lower(b, model, dtype)
    else:
        graph_inputs, graph_outputs = _lower_cached(b, model, layers, dtype)

    graph = helper.make_graph(
        b.nodes, model.name, graph_inputs, graph_outputs, initializer=list(b.initializers.values())
    )
    imports = [helper.make_opsetid("", opset)]
    imports += [helper.make_opsetid(d, 1) for d in sorted(b.domains)]
    proto = helper.make_model(graph, opset_imports=imports, producer_name="attngraph",
                              producer_version=__version__)
    proto.ir_version = 10 if opset <= 24 else 11
    config = json.dumps(model.config(), sort_keys=True, separators=(",", ":"))
    props = {
        "attngraph.version": __version__,
        "attngraph.target": target,
        "attngraph.dtype": dtype,
        "attngraph.config": config,
    }
    if layers is not None:
        props["attngraph.kv_cache"] = json.dumps(
            [{"layer": x.name, "kv_heads": x.kv_heads, "head_dim": x.head_dim,
              "window": x.window} for x in layers], separators=(",", ":"))
    helper.set_model_props(proto, props)
    size = sum(t.ByteSize() for t in proto.graph.initializer)
    if size > _EXTERNAL_DATA_THRESHOLD:
        if path is None:
            raise ExportError(
                f"export: the model holds {size / 1e9:.1f} GB of weights, over ONNX's 2 GB "
                "protobuf limit; pass a path so the weights go to external data beside it"
            )
        _write_external(proto, path)
        return proto
    _check(proto)
    if path is not None:
        atomic_write_bytes(path, proto.SerializeToString(), what="export")
    return proto


def _lower_nodes(b: Builder, model: Model, names: dict[tuple[int, int], str],
                 decode: Decode | None = None) -> None:
    """Lower every node in order; `names` maps (node id, output index) -> tensor name."""
    for node in model.nodes:
        if node.op == "input":
            continue
        b.begin(model.name_of(node), node)
        ins = [names[(id(v.node), v.index)] if v is not None else "" for v in node.inputs]
        op = OPS[node.op]
        if decode is not None and op.decode is not None:
            outs = op.decode.lower(b, node, ins, decode)
        else:
            outs = op.lowering(b.target)(b, node, ins)
        for i, out in enumerate(outs):
            names[(id(node), i)] = out
    b.layer = ""


def _output(b: Builder, src: str, key: str) -> None:
    b.nodes.append(helper.make_node("Identity", [src], [key], name=f"output/{key}"))


def _name_output(b: Builder, src: str, key: str) -> None:
    """Give the tensor `src` the graph output name `key` by renaming it where it is made and
    used (an Identity would copy it: for a KV cache, the whole cache every step)."""
    if not any(src in n.output for n in b.nodes):
        _output(b, src, key)
        return
    for n in b.nodes:
        for names in (n.input, n.output):
            for i, name in enumerate(names):
                if name == src:
                    names[i] = key


def _lower(b: Builder, model: Model, dtype: str) -> tuple[list[Any], list[Any]]:
    names: dict[tuple[int, int], str] = {}
    graph_inputs = []
    for key, v in model.inputs.items():
        names[(id(v.node), 0)] = key
        b.used_names.add(key)
        graph_inputs.append(_value_info(key, v.type, dtype))
    _lower_nodes(b, model, names)
    graph_outputs = []
    for key, v in model.outputs.items():
        _output(b, names[(id(v.node), v.index)], key)
        graph_outputs.append(_value_info(key, v.type, dtype))
    return graph_inputs, graph_outputs


def _lower_cached(b: Builder, model: Model, layers: list[CacheLayer],
                  dtype: str) -> tuple[list[Any], list[Any]]:
    """The decoder with a key/value cache (the convention of `_decode.py`)."""
    types = cache_input_types(model, layers, dtype)
    b.used_names.update(types)
    b.layer = "decoder"
    # positions of the new tokens: cumsum(attention_mask) - 1 (0 for padding), last S columns
    count = b.op1("CumSum", [MASK, b.const(np.array(1), "int64")])
    pos = b.op1("Max", [b.op1("Sub", [count, b.ints([1])]), b.ints([0])])  # (B, T)
    seq = b.dim(IDS, 1)
    pos = b.op1("Slice", [pos, b.op1("Neg", [seq]), b.ints([np.iinfo(np.int64).max]),
                          b.ints([1])], tag="positions")  # (B, S)
    ctx = Decode(index={x.node: i for i, x in enumerate(layers)}, positions=pos,
                 padding=MASK, past=[past_names(i) for i in range(len(layers))])
    (ids_value,) = model.inputs.values()
    names = {(id(ids_value.node), 0): IDS}
    _lower_nodes(b, model, names, ctx)
    (out,) = model.outputs.values()
    _name_output(b, names[(id(out.node), out.index)], LOGITS)
    outputs = [_value_info(LOGITS, TensorType(dtype, ("batch", "seq", out.type.shape[-1])),
                           dtype)]
    for i, x in enumerate(layers):
        for src, key in zip(ctx.present[i], present_names(i)):
            _name_output(b, src, key)
            outputs.append(_value_info(
                key, TensorType(dtype, ("batch", x.kv_heads, x.seq_dim("present_seq"),
                                        x.head_dim)), dtype))
    return [_value_info(k, t, dtype) for k, t in types.items()], outputs


def _check(proto: onnx.ModelProto | str) -> None:
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # noqa: BLE001 - a checker failure is attngraph's bug; say so
        raise ExportError(f"export: the lowered model fails onnx.checker (a bug in attngraph, "
                          f"please report it): {exc}") from None


def _write_external(proto: onnx.ModelProto, path: str) -> None:
    """Write model + `<file>.data` into a temporary folder, check, then move both into place."""
    directory = os.path.dirname(os.path.abspath(path))
    data_name = os.path.basename(path) + ".data"
    with tempfile.TemporaryDirectory(dir=directory, prefix=".tmp-") as tmp:
        tmp_model = os.path.join(tmp, os.path.basename(path))
        onnx.save_model(proto, tmp_model, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=1024)
        _check(tmp_model)
        os.replace(os.path.join(tmp, data_name), os.path.join(directory, data_name))
        os.replace(tmp_model, path)


__all__ = ["export"]
