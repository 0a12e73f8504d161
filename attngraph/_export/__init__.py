"""`ag.export`: lower a model to ONNX for one target, check it, write it atomically."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .._checks import require_model, require_path
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
    share_buffer_choice,
)
from .._errors import ExportError, caller_location
from .._params import check_params
from .._registry import OPS, TARGETS
from .._stream_plan import Plan, Step, analyze, stream_plan
from .._types import FLOAT_DTYPES, TensorType
from ..quantize import check_mode, quantize_proto
from ._builder import ONNX_DTYPES, Builder
from ._save import EXTERNAL_MIN, data_files, save
from ._streaming import lower_node, lower_step, stream_metadata
from ._weights import ParamReader, Weight

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
    share_buffer: bool | None = None,
    streaming: bool = False,
    quantize: str | None = None,
    external_data: bool | None = None,
    progress: bool | None = None,
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
            seq]`, `attention_mask [batch, total_seq]` (1 = token, 0 = padding),
            `past_key_values.{i}.key|value [batch, kv_heads, past_seq, head_dim]`; outputs
            `logits`, `present.{i}.key|value`. One file serves the prompt (past_seq = 0) and
            every later step. The copying form takes left padding, and its sliding-window
            layers keep at most `window` positions; the shared buffer (below) wants each
            row's prompt first and its padding last. On "ort", onnxruntime's CPU
            GroupQueryAttention takes several new tokens after a non-empty cache only at
            batch 1.
        share_buffer: (kv_cache) one preallocated past/present buffer per layer that
            GroupQueryAttention updates in place (no copy of the cache per step; rows'
            tokens at the front of the buffer, see `attngraph/_decode.py`; windowed layers
            keep every position there and the op applies the window). Default: on "ort" when
            every cached layer has head_dim % 8 == 0, windowed layers included.
        streaming: export a step model (DESIGN §9): inputs are the next chunk of frames
            `[batch, chunk, ...]` plus `state.frames` and `state.<layer>.<part>`; outputs are
            the model's outputs for the chunk plus `new_state.*`. Run it with `ag.Stream`.
        quantize: "int4" or "int8": quantize the MatMul weights with onnxruntime's tools
            (`attngraph/quantize.py`: MatMulNBits in blocks of 32, or dynamic int8); the
            result runs in onnxruntime only.
        external_data: (with a path) put the weights in a data file beside the `.onnx`,
            named `<file>.<hash of its bytes>.data`. Default: when they pass 1.8 GB (ONNX's
            protobuf limit is 2 GB). Earlier data files of the same path are removed.
        progress: show a progress bar on stderr while the weights are written (default: on
            a terminal, from 256 MiB of weights).
        window_impl: how sliding-window attention layers are lowered: "blocked" (queries in
            blocks attend their own and the neighbouring key blocks, a group of blocks at a
            time in a Scan: O(S·W) time, O(S) memory), "direct" (the whole [S, S] score
            matrix under a band mask: O(S²)) or "auto" (blocked when the sequence is longer
            than 1.5x the keys one block reads, decided at run time; direct on "ort" below
            opset 23). Cached decoding steps always use the direct form.

    Weights are read from `params` (a Mapping: a dict, or lazily loaded views of memory-mapped
    safetensors such as `ag.models.hf.from_pretrained` gives) one at a time when they are
    written, converted to `dtype` a slice at a time, and written straight to the file: peak
    memory stays near the size of the params as they are held, whatever the model's size.

    Returns:
        The ONNX model proto, with value_info from shape inference and the model's summary as
        its doc_string (the same bytes every time for the same model, params, target). Without
        a path it holds every weight. With a path, initialisers of 1 KiB or more are
        external-data references to their bytes on disk (the data file, or the `.onnx` itself
        for a one-file model), so it costs no memory; `onnx.load(path)` reads the whole model.

    Raises:
        ExportError: unknown target/dtype/opset, unwritable path.
        UnsupportedError: a layer uses a feature the target cannot express, or (kv_cache)
            the model is not a causal decoder, or (streaming) a layer looks ahead.
        ParamError: params do not match the model.
    """
    from .. import __version__

    require_model(model, "export", caller_location(), error=ExportError)
    if not isinstance(params, Mapping):
        hint = ""
        if isinstance(params, (str, os.PathLike)) and isinstance(path, Mapping):
            hint = f"; params and path are swapped: call export(model, params, {params!r})"
        raise ExportError(f"export: params must be a mapping of name -> array, given "
                          f"{type(params).__name__}{hint} (at {caller_location()})")
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
        path = require_path(path, "export", "path", caller_location(), error=ExportError)
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
    if not isinstance(streaming, bool):
        raise ExportError(f"export: streaming must be True or False, given {streaming!r}")
    if streaming and kv_cache:
        raise ExportError("export: choose kv_cache=True (token decoders) or streaming=True "
                          "(step models), not both")
    if quantize is not None:
        check_mode(quantize, "export")
        if quantize == "int8" and dtype != "float32":
            raise ExportError(f"export: quantize='int8' (onnxruntime's dynamic quantization) "
                              f"needs dtype='float32', given {dtype!r}; use quantize='int4' "
                              "for float16 models")
    for option, value in (("external_data", external_data), ("progress", progress)):
        if value not in (None, True, False):
            raise ExportError(f"export: {option} must be True, False or None, given {value!r}")
    if external_data and path is None:
        raise ExportError("export: external_data=True needs a path to write the data file "
                          "beside")
    layers = cache_layers(model, "export(kv_cache=True)") if kv_cache else None
    shared = layers is not None and share_buffer_choice(layers, target, share_buffer)
    plan = stream_plan(model, "export(streaming=True)") if streaming else analyze(model)
    kept = check_params(model.param_specs, params, lazy=True)

    b = Builder(target=target, opset=opset, dtype=dtype, params=ParamReader(params, kept),
                param_key=model.param_key, window_impl=window_impl)
    if streaming:
        graph_inputs, graph_outputs = lower_step(b, model, plan, dtype)
    elif layers is None:
        graph_inputs, graph_outputs = _lower(b, model, dtype, plan)
    else:
        graph_inputs, graph_outputs = _lower_cached(b, model, layers, dtype, shared)

    graph = helper.make_graph(b.nodes, model.name, graph_inputs, graph_outputs)
    imports = [helper.make_opsetid("", opset)]
    imports += [helper.make_opsetid(d, 1) for d in sorted(b.domains)]
    proto = helper.make_model(graph, opset_imports=imports, producer_name="attngraph",
                              producer_version=__version__)
    proto.ir_version = 10 if opset <= 24 else 11
    proto.doc_string = (f"{model.name}, exported by attngraph {__version__} for target "
                        f"{target!r} in {dtype}\n{model.summary(dtype=dtype)}")
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
        props["attngraph.share_buffer"] = "true" if shared else "false"
    if streaming:
        props["attngraph.streaming"] = stream_metadata(plan)
    if quantize is not None:
        props["attngraph.quantize"] = quantize
    helper.set_model_props(proto, props)
    weights = list(b.initializers.values())
    _check(proto, weights)
    if quantize is not None:  # onnxruntime's quantizers work on a proto with its weights
        proto.graph.initializer.extend(w.tensor() for w in weights)
        proto = quantize_proto(proto, quantize)
        weights = [_weight_of(t) for t in proto.graph.initializer]
        del proto.graph.initializer[:]
    size = sum(w.nbytes for w in weights)
    if path is None:
        if size > _EXTERNAL_DATA_THRESHOLD:
            raise ExportError(
                f"export: the model holds {size / 1e9:.1f} GB of weights, over ONNX's 2 GB "
                "protobuf limit; pass a path so the weights go to external data beside it"
            )
        proto.graph.initializer.extend(w.tensor() for w in weights)
        return proto
    external = size > _EXTERNAL_DATA_THRESHOLD if external_data is None else external_data
    return save(proto, weights, path, external=external, progress=progress)


def _weight_of(t: onnx.TensorProto) -> Weight:
    """A quantized model's initialiser, written like the others."""
    arr = numpy_helper.to_array(t)
    return Weight(t.name, arr.dtype, tuple(arr.shape), arr)


def _lower_nodes(b: Builder, model: Model, names: dict[tuple[int, int], str],
                 decode: Decode | None = None, plan: Plan | None = None,
                 step: Step | None = None) -> None:
    """Lower every node in order; `names` maps (node id, output index) -> tensor name."""
    for node in model.nodes:
        if node.op == "input":
            continue
        b.begin(model.name_of(node), node)
        ins = [names[(id(v.node), v.index)] if v is not None else "" for v in node.inputs]
        op = OPS[node.op]
        if decode is not None and op.decode is not None:
            outs = op.decode.lower(b, node, ins, decode)
        elif plan is not None:  # last-query nodes, step models (`_streaming.py`)
            outs = lower_node(b, node, ins, plan, step)
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


def reserve_io_names(b: Builder, model: Model) -> None:
    """Reserve the graph's input and output names before lowering, so that no node output or
    initialiser takes one (an output named "dense_0.kernel" or "dense_0/MatMul" is fine)."""
    for key, v in model.outputs.items():
        source = model.inputs.get(key)
        if source is not None and (source.node, source.index) != (v.node, v.index):
            raise ExportError(
                f"export: output {key!r} has the name of an input (ONNX names every tensor "
                f"once); give the output another name in ag.Model(..., {{name: value}})")
    b.used_names.update(model.inputs)
    b.used_names.update(model.outputs)


def _lower(b: Builder, model: Model, dtype: str, plan: Plan) -> tuple[list[Any], list[Any]]:
    names: dict[tuple[int, int], str] = {}
    graph_inputs = []
    reserve_io_names(b, model)
    for key, v in model.inputs.items():
        names[(id(v.node), 0)] = key
        graph_inputs.append(_value_info(key, v.type, dtype))
    _lower_nodes(b, model, names, plan=plan)
    graph_outputs = []
    for key, v in model.outputs.items():
        if names[(id(v.node), v.index)] != key:  # else the output is that input itself
            _output(b, names[(id(v.node), v.index)], key)
        graph_outputs.append(_value_info(key, v.type, dtype))
    return graph_inputs, graph_outputs


def _lower_cached(b: Builder, model: Model, layers: list[CacheLayer], dtype: str,
                  shared: bool = False) -> tuple[list[Any], list[Any]]:
    """The decoder with a key/value cache (the convention of `_decode.py`)."""
    from ..ops._attention_cache import shared_lengths

    types = cache_input_types(model, layers, dtype, shared)
    b.used_names.update(types)
    b.layer = "decoder"
    # positions of the new tokens: cumsum(attention_mask) - 1 (0 for padding), last S columns
    count = b.op1("CumSum", [MASK, b.const(np.array(1), "int64")])
    pos = b.op1("Max", [b.op1("Sub", [count, b.ints([1])]), b.ints([0])])  # (B, T)
    seq = b.dim(IDS, 1)
    pos = b.op1("Slice", [pos, b.op1("Neg", [seq]), b.ints([np.iinfo(np.int64).max]),
                          b.ints([1])], tag="positions")  # (B, S)
    ctx = Decode(index={x.node: i for i, x in enumerate(layers)}, positions=pos,
                 padding=MASK, past=[past_names(i) for i in range(len(layers))],
                 shared=shared_lengths(b, MASK) if shared else None)
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
                key, TensorType(dtype, ("batch", x.kv_heads, "present_seq" if shared else
                                        x.seq_dim("present_seq"), x.head_dim)), dtype))
    return [_value_info(k, t, dtype) for k, t in types.items()], outputs


def _check(proto: onnx.ModelProto, weights: list[Weight]) -> None:
    """`check_model(full_check=True)` on the graph without its weights, keeping what shape
    inference found as value_info (so Netron shows shapes).

    full_check is the checker plus strict, type-checking shape inference; here they run on a
    copy of the graph in which every initialiser of EXTERNAL_MIN bytes or more is a graph input
    of the same type: weights' values never decide a shape (the small constants that do, such
    as Reshape targets, stay initialisers), and the check costs no copy of the weights.
    """
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    for w in weights:
        if w.nbytes >= EXTERNAL_MIN:
            probe.graph.input.append(helper.make_tensor_value_info(
                w.name, helper.np_dtype_to_tensor_dtype(w.dtype), list(w.shape)))
        else:
            probe.graph.initializer.append(w.tensor())
    try:
        onnx.checker.check_model(probe)
        inferred = onnx.shape_inference.infer_shapes(probe, check_type=True, strict_mode=True)
    except Exception as exc:  # noqa: BLE001 - a checker failure is attngraph's bug; say so
        raise ExportError(f"export: the lowered model fails onnx.checker (a bug in attngraph, "
                          f"please report it): {exc}") from None
    proto.graph.value_info.extend(inferred.graph.value_info)


__all__ = ["data_files", "export"]
