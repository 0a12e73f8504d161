"""`ag.Stream`: run a model on a stream of frames, chunk by chunk, carrying its state.

The same step (DESIGN §9, `_stream_plan.py`) runs in the reference interpreter (a `Model`
with params) or on onnxruntime (a step model exported with `streaming=True`), where the state
stays on the model's device between chunks through I/O binding.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from ._errors import ConfigError, FeedError, caller_location, layer_message
from ._feeds import check_feeds
from ._model import Model
from ._ort_errors import explain, layers_of
from ._params import check_params
from ._stream_plan import (
    FRAMES,
    STATE_IN,
    STATE_OUT,
    check_frames,
    initial_state,
    run_step,
    stream_plan,
)
from ._types import TensorType

_ITEM = {"tensor(float)": 4, "tensor(float16)": 2, "tensor(int64)": 8, "tensor(int32)": 4}
_DTYPE = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
          "tensor(int32)": "int32"}


class Stream:
    """A model fed a stream of frames: each `step` takes the next chunk and returns the
    model's outputs for it, exactly what `model.predict` gives on the whole prefix so far.

    Args:
        source: a step model (`.onnx` path or `ag.Session` of `export(..., streaming=True)`),
            or a `Model` (then the reference interpreter runs it with `params`).
        params: the Model's parameters (only with a Model).
        providers: onnxruntime execution providers for a path (default CUDA, else CPU).

    Raises:
        ConfigError: the source is not a step model, or a Model comes without params.
        UnsupportedError: (a Model) a layer looks ahead, naming the layer.
    """

    def __init__(self, source: Any, params: Mapping[str, np.ndarray] | None = None, *,
                 providers: list[str] | None = None) -> None:
        from .runtime import Session

        where = caller_location()
        if isinstance(source, Model):
            if params is None:
                raise ConfigError(layer_message("Stream", None, "a Model runs in the reference "
                                                "interpreter and needs params=...", where))
            self._backend: Any = _Reference(source, params)
        else:
            if params is not None:
                raise ConfigError(layer_message("Stream", None, "params=... is only for a "
                                                "Model; a step model holds its weights", where))
            if isinstance(source, (str, os.PathLike)):
                source = Session(source, providers)
            if not isinstance(source, Session):
                raise ConfigError(layer_message(
                    "Stream", None, f"expected a Model, an .onnx path or an ag.Session, given "
                    f"{type(source).__name__}", where))
            self._backend = _Bound(source, where)
        self.inputs: dict[str, TensorType] = self._backend.inputs
        self.frames = 0
        self.batch: int | None = None
        self._layout: dict[str, tuple[Any, ...]] | None = None

    def step(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Feed the next chunk ({input: [batch, chunk, ...]}, chunk >= 1); returns the model's
        outputs for it (sequence outputs [batch, chunk, ...], last_timestep [batch, ...])."""
        arrays = self._same_layout(feeds) or check_feeds(self.inputs, feeds, where="Stream.step")
        first = next(iter(arrays.values()))
        batch, size = first.shape[0], first.shape[1]
        if self.batch is not None and batch != self.batch:
            raise FeedError(f"Stream.step: this stream carries {self.batch} row(s), given a "
                            f"chunk of {batch}; call reset() to start a stream of another "
                            "batch size")
        out = self._backend.step(arrays, batch, self.frames, size)
        self.batch = batch
        self.frames += size
        self._layout = {k: (a.dtype, a.shape[:1], a.shape[2:]) for k, a in arrays.items()}
        return out

    def _same_layout(self, feeds: Any) -> dict[str, np.ndarray] | None:
        """Feeds laid out exactly as the last checked chunk's (arrays of the same dtypes,
        batch and frame shape, one chunk length of at least one frame): the full check would
        pass, skip it."""
        layout = self._layout
        if layout is None or not isinstance(feeds, dict) or feeds.keys() != layout.keys():
            return None
        size = None
        for name, arr in feeds.items():
            dtype, batch, frame = layout[name]
            if type(arr) is not np.ndarray or arr.dtype != dtype or arr.shape[:1] != batch \
                    or arr.shape[2:] != frame or arr.ndim < 2 or arr.shape[1] == 0 \
                    or size not in (None, arr.shape[1]):
                return None
            size = arr.shape[1]
        return feeds

    def reset(self) -> None:
        """Forget every frame seen: the next step starts a fresh stream."""
        self._backend.reset()
        self.frames, self.batch, self._layout = 0, None, None

    @property
    def state_bytes(self) -> int:
        """Bytes of state carried between chunks (caches, recurrent states, frame count)."""
        return self._backend.state_bytes()

    def __repr__(self) -> str:
        return (f"<Stream {type(self._backend).__name__.strip('_').lower()}: {self.frames} "
                f"frames, {self.state_bytes} state bytes>")


def _chunk_types(model: Model) -> dict[str, TensorType]:
    return {k: v.type.with_shape((v.type.shape[0], "chunk", *v.type.shape[2:]))
            for k, v in model.inputs.items()}


class _Reference:
    """The step in numpy."""

    def __init__(self, model: Model, params: Mapping[str, np.ndarray]) -> None:
        self.plan = stream_plan(model, "Stream")
        self.params = check_params(model.param_specs, params)
        self.inputs = _chunk_types(model)
        self.state: dict[str, np.ndarray] = {}

    def step(self, arrays: dict[str, np.ndarray], batch: int, seen: int,
             size: int) -> dict[str, np.ndarray]:
        if not self.state:
            self.state = initial_state(self.plan, batch)
        out, self.state = run_step(self.plan, self.params, arrays, self.state)
        return out

    def reset(self) -> None:
        self.state = {}

    def state_bytes(self) -> int:
        return sum(a.nbytes for a in self.state.values())


class _Bound:
    """A step model on onnxruntime; the state stays bound on the device."""

    def __init__(self, session: Any, where: str) -> None:
        self.session = session
        meta = session.metadata.get("attngraph.streaming")
        states = [n for n in session.inputs if n.startswith(STATE_IN)]
        if meta is None or STATE_IN + FRAMES not in states:
            raise ConfigError(layer_message(
                "Stream", None, f"the model takes {list(session.inputs)}; it is not a step "
                "model (export it with streaming=True)", where))
        info = json.loads(meta)
        limit = info.get("max_frames")
        self.max_frames = None if limit is None else (int(limit), str(info["max_frames_layer"]))
        self.states = states
        self.inputs = {n: t for n, t in session.inputs.items() if n not in states}
        self.batch_dim = next(iter(self.inputs.values())).shape[0]
        self.outputs = [n for n in session.output_names if not n.startswith(STATE_OUT)]
        self.keep = [STATE_OUT + n[len(STATE_IN):] for n in states]
        self.state: list[Any] = []  # OrtValues, in the order of self.states
        self.device = session.device
        self.binding: Any = None
        self.size = 0  # the last chunk's length
        self.turns: list[Any] = []  # the steady form's two bindings (see `_steady_step`)
        self.results: list[Any] = []  # and the CPU buffers both write the outputs into

    def _initial(self, batch: int) -> dict[str, np.ndarray]:
        host = {}
        for name in self.states:
            t = self.session.inputs[name]
            shape = tuple(batch if d == self.batch_dim else (0 if not isinstance(d, int) else d)
                          for d in t.shape)
            host[name] = np.zeros(shape, t.dtype)
        return host

    def step(self, arrays: dict[str, np.ndarray], batch: int, seen: int,
             size: int) -> dict[str, np.ndarray]:
        check_frames(self.max_frames, seen, size, "Stream.step")
        if self.turns and size == self.size:
            return self._steady_step(arrays)
        self.turns = []
        binding = self.binding
        before = [v.shape() for v in self.state] if self.state else None
        if binding is None:  # a fresh stream: zero state from the host
            binding = self.session.session.io_binding()
            for name, arr in self._initial(batch).items():
                binding.bind_cpu_input(name, arr)
        else:  # last step's new state, where it is; outputs are allocated anew
            for name, value in zip(self.states, self.state):
                binding.bind_ortvalue_input(name, value)
            binding.clear_binding_outputs()
        for name in self.keep:
            binding.bind_output(name, self.device)
        for name in self.outputs:
            binding.bind_output(name, "cpu")
        self._run(binding, arrays)
        self.binding = binding
        values = binding.get_outputs()  # in the order bound: state, then outputs
        self.state = values[: len(self.keep)]
        out = {name: v.numpy() for name, v in zip(self.outputs, values[len(self.keep):])}
        if before == [v.shape() for v in self.state] and self.device == "cpu":
            self._settle([v.shape() for v in values[len(self.keep):]])
        self.size = size
        return out

    def _run(self, binding: Any, arrays: dict[str, np.ndarray]) -> None:
        """Bind the chunk's frames and run, reporting onnxruntime failures as ours."""
        from .runtime import RuntimeFailure

        try:
            for name, arr in arrays.items():
                binding.bind_cpu_input(name, np.ascontiguousarray(arr))
            self.session.session.run_with_iobinding(binding)
        except Exception as exc:  # noqa: BLE001 - report onnxruntime failures as ours
            raise RuntimeFailure(explain("Stream.step", exc, layers_of(self.session.metadata))
                                 ) from None

    def _settle(self, shapes: list[list[int]]) -> None:
        """The state kept its shapes through a step (every cache full at its window, the
        recurrent states, the frame count), so with chunks of the same length it keeps them
        from now on: two state sets take turns, each step reading one and writing the other,
        and both bindings are made once. A step then binds only its frames."""
        other = [self.session.buffer(v.shape(), _DTYPE[v.data_type()]) for v in self.state]
        self.results = [self.session.buffer(shape, self.session.outputs[name].dtype)
                        for name, shape in zip(self.outputs, shapes)]
        self.turns = []
        for read, write in ((self.state, other), (other, self.state)):
            binding = self.session.session.io_binding()
            for name, value in zip(self.states, read):
                binding.bind_ortvalue_input(name, value)
            for name, value in zip(self.keep, write):
                binding.bind_ortvalue_output(name, value)
            for name, value in zip(self.outputs, self.results):
                binding.bind_ortvalue_output(name, value)
            self.turns.append((binding, write))

    def _steady_step(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        (binding, write), self.turns = self.turns[0], self.turns[::-1]
        self._run(binding, arrays)
        self.state = write
        return {name: np.array(v.numpy()) for name, v in zip(self.outputs, self.results)}

    def reset(self) -> None:
        self.state, self.binding, self.turns, self.size = [], None, [], 0

    def state_bytes(self) -> int:
        return sum(int(np.prod(v.shape())) * _ITEM[v.data_type()] for v in self.state)


__all__ = ["Stream"]
