"""Streaming (DESIGN §9): which models can run as a step model, their state, and the reference
evaluation of one step.

A step model takes the next chunk of frames `[batch, chunk, ...]` for every model input plus
the state carried from the previous chunk, and returns the model's outputs for the chunk
(sequence outputs `[batch, chunk, ...]`; `last_timestep` = the chunk's last frame) plus the
new state:

    state.frames                int64 [1]           frames seen before this chunk
    state.<layer>.<part>        per layer: an attention layer's `key` / `value` cache
                                [batch, kv_heads, past, head_dim] (at most its window), an
                                LSTM's `h` / `c` [num_layers, batch, hidden], a GRU's `h`
    -> <output>                 the model's outputs for the chunk
    -> new_state.frames, new_state.<layer>.<part>

Feeding a sequence in chunks of any sizes gives, at every chunk end, what `model.predict`
gives on the whole prefix. The same analysis finds "last-query" nodes: those whose output
reaches the model's outputs only through position-wise ops and `last_timestep`, so only their
last position is ever read. Attention among them is evaluated for the last query alone (in
every export), which removes its O(S^2) work and lets bidirectional attention stream.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ._errors import FeedError, UnsupportedError, layer_message
from ._feeds import STATE_PREFIX
from ._interpreter import run_nodes
from ._registry import OPS

if TYPE_CHECKING:
    from ._graph import Node, Value
    from ._model import Model

FRAMES = "frames"
STATE_IN, STATE_OUT = STATE_PREFIX, "new_state."
_ENDS_TIME = ("last_timestep", "timestep", "mean_pool")  # ops whose output has no time axis
_LAST_QUERY = contextvars.ContextVar("last_query", default=True)


@contextlib.contextmanager
def every_query() -> Iterator[None]:
    """Inside the block, ordinary exports evaluate every query of every attention layer (the
    form before last-query evaluation; benchmarks compare the two)."""
    token = _LAST_QUERY.set(False)
    try:
        yield
    finally:
        _LAST_QUERY.reset(token)


@dataclass(frozen=True)
class StateSpec:
    """One state tensor: key `<layer>.<part>` (or `frames`), its shape ("batch" for the batch
    dim, a str for a cache length that starts at 0) and dtype ("float": the model's)."""

    key: str
    shape: tuple[Any, ...]
    dtype: str = "float"

    @property
    def input_name(self) -> str:
        return STATE_IN + self.key

    @property
    def output_name(self) -> str:
        return STATE_OUT + self.key


@dataclass(frozen=True)
class Plan:
    """What the analysis found: values with a time axis, last-query nodes, and (streaming)
    the state of every layer."""

    model: Model
    timed: frozenset[tuple[Node, int]]  # (node, output index) of values [batch, seq, ...]
    last_only: frozenset[Node]
    states: tuple[StateSpec, ...] = ()
    max_frames: tuple[int, str] | None = None  # learned positions: (max_len, layer)

    def is_timed(self, v: Value | None) -> bool:
        return v is not None and (v.node, v.index) in self.timed

    def slice_inputs(self, node: Node) -> list[bool]:
        """Which inputs of a last-query position-wise node must be cut to their last frame."""
        return [self.is_timed(v) and v.node not in self.last_only  # type: ignore[union-attr]
                for v in node.inputs]


def _per_position(node: Node) -> bool:
    rule = OPS[node.op].per_position
    return rule is not None and rule(node.attrs)


def _keeps_time(node: Node, timed_in: list[bool]) -> bool:
    if node.op in _ENDS_TIME:
        return False
    if node.op in ("lstm", "gru"):
        return bool(node.attrs["return_sequences"]) and timed_in[0]
    if node.op in ("multi_head_attention", "attention"):
        return timed_in[0]
    return any(timed_in)


def _reads_last(node: Node) -> bool:
    return node.op in ("last_timestep", "timestep") and node.attrs.get("index", -1) == -1


def analyze(model: Model) -> Plan:
    """Values with a time axis and the last-query nodes of a model (no refusals)."""
    timed: set[tuple[Node, int]] = set()
    users: dict[Node, list[Node]] = {n: [] for n in model.nodes}
    for node in model.nodes:
        for v in node.inputs:
            if v is not None:
                users[v.node].append(node)
        if node.op == "input":
            if node.out_types[0].rank >= 2:
                timed.add((node, 0))
            continue
        timed_in = [v is not None and (v.node, v.index) in timed for v in node.inputs]
        if _keeps_time(node, timed_in):
            timed.update((node, i) for i in range(len(node.out_types)))
    outputs = {v.node for v in model.outputs.values()}
    last: set[Node] = set()
    for node in reversed(model.nodes if _LAST_QUERY.get() else []):
        if node.op == "input" or (node, 0) not in timed or node in outputs or \
                len(node.out_types) != 1:
            continue
        stream = OPS[node.op].stream
        if not (_per_position(node) or (stream is not None and stream.last_query is not None
                                        and stream.check(node, True) is None)):
            continue
        if all(_reads_last(u) or (u in last and _per_position(u)) for u in users[node]):
            last.add(node)
    return Plan(model, frozenset(timed), frozenset(last))


def stream_plan(model: Model, where: str) -> Plan:
    """The step-model plan of `model`; raises UnsupportedError naming the first layer that
    looks ahead (or has no streaming form)."""
    plan = analyze(model)
    states = [StateSpec(FRAMES, (1,), "int64")]
    max_frames: tuple[int, str] | None = None
    for key, v in model.inputs.items():
        t = v.type
        if t.rank < 2 or not isinstance(t.shape[1], str):
            raise UnsupportedError(
                f"{where}: input {key!r} is {t}; a step model takes every input as [batch, "
                "seq, ...] with a symbolic seq dim (the frames of a chunk) (model defined at "
                f"{model.location})")
    for node in model.nodes:
        if node.op == "input":
            continue
        name = model.name_of(node)
        op = OPS[node.op]
        timed_in = [plan.is_timed(v) for v in node.inputs]
        if op.stream is not None:
            reason = op.stream.check(node, node in plan.last_only)
            if reason is None:
                for part, shape in op.stream.state(node, node in plan.last_only).items():
                    states.append(StateSpec(f"{name}.{part}", tuple(shape)))
                if node.op == "positional_encoding" and node.attrs["kind"] == "learned" and (
                        max_frames is None or node.attrs["max_len"] < max_frames[0]):
                    max_frames = (node.attrs["max_len"], name)
                continue
        elif _per_position(node) or not any(timed_in):
            continue
        else:
            reason = ("it mixes sequence positions and has no streaming form; a step model is "
                      "built from position-wise layers, causal or windowed attention, lstm/gru, "
                      "positional encodings and last_timestep")
        raise UnsupportedError(layer_message(node.op, name, f"{where}: {reason}", node.location))
    return Plan(model, plan.timed, plan.last_only, tuple(states), max_frames)


@dataclass
class Step:
    """What stream forms read: numpy values in the reference, tensor names in the exporter."""

    plan: Plan
    frames: Any  # frames seen before the chunk: int, or a (1,) int64 tensor
    positions: Any  # (S,) int64 absolute positions of the chunk's frames (reference only)
    state: Mapping[str, Any]  # "<layer>.<part>" -> carried state
    new_state: dict[str, Any] = field(default_factory=dict)
    shared: dict[Any, Any] = field(default_factory=dict)  # tensors every layer may reuse

    def key(self, node: Node, part: str) -> str:
        return f"{self.plan.model.name_of(node)}.{part}"

    def last_only(self, node: Node) -> bool:
        return node in self.plan.last_only


def initial_state(plan: Plan, batch: int, dtype: Any = np.float32) -> dict[str, np.ndarray]:
    """Zero state of a fresh stream: empty caches, zero recurrent states, no frames seen."""
    out = {}
    for spec in plan.states:
        shape = tuple(batch if d == "batch" else (0 if isinstance(d, str) else d)
                      for d in spec.shape)
        out[spec.key] = np.zeros(shape, np.int64 if spec.dtype == "int64" else dtype)
    return out


def check_frames(max_frames: tuple[int, str] | None, seen: int, chunk: int,
                 where: str) -> None:
    """Learned positional tables cover positions 0 .. max_len-1 only."""
    if max_frames is not None and seen + chunk > max_frames[0]:
        limit, layer = max_frames
        raise FeedError(f"{where}: frames {seen}..{seen + chunk - 1} pass the learned positions "
                        f"of layer {layer!r} (max_len={limit}); call reset() to start over")


def run_step(plan: Plan, params: Mapping[str, np.ndarray], chunk: Mapping[str, np.ndarray],
             state: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """One step in numpy on checked params and chunk feeds: (outputs, new state)."""
    model = plan.model
    seen = int(state[FRAMES][0])
    size = next(iter(chunk.values())).shape[1]
    check_frames(plan.max_frames, seen, size, "Stream.step")
    ctx = Step(plan, seen, np.arange(seen, seen + size), state)

    def apply(node: Node, op: Any, local: dict[str, np.ndarray], args: list[Any]) -> Any:
        if op.stream is not None and op.stream.reference is not None:
            return op.stream.reference(node.attrs, local, ctx, node, *args)
        if node in plan.last_only:
            args = [a[:, -1:] if cut and a is not None else a
                    for a, cut in zip(args, plan.slice_inputs(node))]
        return op.reference(node.attrs, local, *args)

    env = run_nodes(model, params, chunk, apply=apply)
    ctx.new_state[FRAMES] = np.array([seen + size], np.int64)
    return {k: env[(v.node, v.index)] for k, v in model.outputs.items()}, ctx.new_state
