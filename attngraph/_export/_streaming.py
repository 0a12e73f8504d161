"""Lowering step models (`export(..., streaming=True)`) and last-query nodes (every export);
the convention is in `_stream_plan.py`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from .._registry import OPS
from .._stream_plan import FRAMES, STATE_IN, Plan, Step
from .._types import TensorType
from ..ops._attention_stream import slice_last

if TYPE_CHECKING:
    from .._graph import Node
    from .._model import Model
    from ._builder import Builder


def lower_node(b: Builder, node: Node, ins: list[str], plan: Plan,
               step: Step | None = None) -> list[str]:
    """One node: its stream form in a step model; for a last-query node, the last position
    only (inputs cut to their last frame, or the op's own last-query form)."""
    op = OPS[node.op]
    if step is not None and op.stream is not None and op.stream.lower is not None:
        return op.stream.lower(b, node, ins, step)
    if node in plan.last_only:
        if op.stream is not None and op.stream.last_query is not None:
            return op.stream.last_query(b, node, ins)
        ins = [slice_last(b, x) if cut else x for x, cut in zip(ins, plan.slice_inputs(node))]
    return op.lowering(b.target)(b, node, ins)


def _chunk_type(plan: Plan, value: Any) -> TensorType:
    t = value.type
    if not plan.is_timed(value):
        return t
    return t.with_shape((t.shape[0], "chunk", *t.shape[2:]))


def lower_step(b: Builder, model: Model, plan: Plan, dtype: str) -> tuple[list[Any], list[Any]]:
    """The step model: chunk inputs and state in, chunk outputs and new state out."""
    from . import _lower_nodes, _name_output, _value_info, reserve_io_names

    batch = next(iter(model.inputs.values())).type.shape[0]
    names: dict[tuple[int, int], str] = {}
    inputs, outputs = [], []
    reserve_io_names(b, model)
    for key, v in model.inputs.items():
        names[(id(v.node), 0)] = key
        inputs.append(_value_info(key, _chunk_type(plan, v), dtype))

    def state_type(shape: tuple[Any, ...], kind: str, prefix: str) -> TensorType:
        dims = tuple(batch if d == "batch" else (prefix + d if isinstance(d, str) else d)
                     for d in shape)
        return TensorType(dtype if kind == "float" else kind, dims)

    for spec in plan.states:
        b.used_names.add(spec.input_name)
        inputs.append(_value_info(spec.input_name, state_type(spec.shape, spec.dtype, ""),
                                  dtype))
    step = Step(plan, STATE_IN + FRAMES, None, {s.key: s.input_name for s in plan.states})
    _lower_nodes(b, model, names, plan=plan, step=step)
    for key, v in model.outputs.items():
        _name_output(b, names[(id(v.node), v.index)], key)
        outputs.append(_value_info(key, _chunk_type(plan, v), dtype))
    b.layer = "stream"
    first = next(iter(model.inputs))
    step.new_state[FRAMES] = b.op1("Add", [step.frames, b.dim(first, 1)], tag="frames")
    for spec in plan.states:
        _name_output(b, step.new_state[spec.key], spec.output_name)
        outputs.append(_value_info(spec.output_name,
                                   state_type(spec.shape, spec.dtype, "next_"), dtype))
    return inputs, outputs


def stream_metadata(plan: Plan) -> str:
    """What `ag.Stream` and the CLI read back from a step model's metadata_props."""
    return json.dumps({
        "states": [{"name": s.key, "shape": list(s.shape), "dtype": s.dtype}
                   for s in plan.states],
        "max_frames": None if plan.max_frames is None else plan.max_frames[0],
        "max_frames_layer": None if plan.max_frames is None else plan.max_frames[1],
    }, separators=(",", ":"))
