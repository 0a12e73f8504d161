"""`ag.Session`: run an exported model with onnxruntime. The only module importing onnxruntime."""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._cpu import spin_by_default
from ._decode import check_tokens_first
from ._errors import AttnGraphError, ConfigError, ExportError, FeedError
from ._feeds import check_feeds
from ._limits import check_limits, feed_limits
from ._ort_errors import explain, layers_of
from ._types import TensorType


class RuntimeFailure(AttnGraphError):
    """onnxruntime refused or failed to run a model."""


# onnxruntime logs its own copy of every error (in colour, even into a pipe) before raising
# it; attngraph reports the error itself, so onnxruntime stays quiet unless asked (CLI -v).
_LOG_SEVERITY = 4  # onnxruntime's levels: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal


def set_log_severity(level: int) -> None:
    """How much onnxruntime may log on its own (0 verbose .. 4 fatal only, the default)."""
    global _LOG_SEVERITY
    import onnxruntime as ort

    _LOG_SEVERITY = int(level)
    ort.set_default_logger_severity(_LOG_SEVERITY)


def available_providers() -> list[str]:
    """The execution providers this onnxruntime build offers."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


def default_providers() -> list[str]:
    """CUDA first when onnxruntime offers it, then CPU."""
    available = available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


# onnxruntime (1.32 at least) crashes the process on a float16 model where an LSTM feeds a
# MatMul when this layout transformer runs on the CPU; it only reorders NCHW convolutions,
# which attngraph never emits, so turning it off costs nothing.
_DISABLED_OPTIMIZERS = ["NchwcTransformer"]


class Session:
    """An onnxruntime session with attngraph's feed checks.

    Args:
        model_or_path: a path to an .onnx file, an onnx.ModelProto, serialized bytes, or an
            attngraph Model (then pass `params`; it is exported for `target` in memory).
        providers: onnxruntime execution providers; default CUDA first when present, else CPU.
        params, target, dtype: used only when a Model is given.
        threads: onnxruntime's intra-op threads (default: onnxruntime's choice).
        spinning: whether idle pool threads spin-wait between ops. "auto" (the default)
            spins when the session's threads fit on the CPUs other work leaves free (watched
            for 50 ms when a CPU session is made, the look reused for 5 s; Linux, elsewhere
            it spins, onnxruntime's own default; a CUDA session spins). Spinning is the
            fastest on a machine of its own (KV-cache decoding measured 1.2x-1.3x faster than
            with sleeping threads) and the slowest beside other busy work, whose CPUs spinning
            threads take. True or False fixes it.
    """

    def __init__(self, model_or_path: Any, providers: Sequence[str] | None = None, *,
                 params: Mapping[str, np.ndarray] | None = None, target: str = "ort",
                 dtype: str = "float32", threads: int | None = None,
                 spinning: bool | str = "auto") -> None:
        import onnxruntime as ort

        if not (isinstance(spinning, (bool, np.bool_))
                or (isinstance(spinning, str) and spinning == "auto")):
            raise ConfigError(f"Session: spinning must be True, False or 'auto', given "
                              f"{spinning!r}")
        ort.set_default_logger_severity(_LOG_SEVERITY)
        data = self._load_bytes(model_or_path, params, target, dtype)
        from ._model import Model

        self._limits = feed_limits(model_or_path) if isinstance(model_or_path, Model) else []
        options = ort.SessionOptions()
        options.log_severity_level = _LOG_SEVERITY
        if threads is not None:
            options.intra_op_num_threads = threads
        self.providers = (_checked_providers(providers) if providers is not None
                          else default_providers())
        if isinstance(spinning, str):  # "auto": the CPUs' load decides where they run the model
            spinning = self.providers[0] != "CPUExecutionProvider" or spin_by_default(threads)
        self.spinning = bool(spinning)
        if not spinning:  # idle pool threads sleep between ops (see the docstring)
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        data = _adapted(data, options, ort.__version__)
        try:
            self._session = ort.InferenceSession(data, options, providers=self.providers,
                                                 disabled_optimizers=_DISABLED_OPTIMIZERS)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises plain RuntimeErrors
            what = data if isinstance(data, str) else "the model"
            raise RuntimeFailure(f"Session: onnxruntime cannot load {what} (is it an ONNX "
                                 f"model?): {str(exc).splitlines()[0]}") from None
        self.inputs: dict[str, TensorType] = {
            i.name: _tensor_type(i) for i in self._session.get_inputs()
        }
        self._layers = layers_of(self.metadata)
        self._ours = "attngraph.version" in self.metadata  # exported by attngraph
        self._shared = self.metadata.get("attngraph.share_buffer") == "true"
        self.output_names = [o.name for o in self._session.get_outputs()]
        self.outputs: dict[str, TensorType] = {
            o.name: _tensor_type(o) for o in self._session.get_outputs()
        }

    @staticmethod
    def _load_bytes(model_or_path: Any, params: Any, target: str, dtype: str) -> bytes | str:
        from ._model import Model

        if isinstance(model_or_path, Model):
            if params is None:
                raise ExportError("Session: a Model needs params=... (or pass an .onnx path)")
            from ._export import export

            return export(model_or_path, params, target=target, dtype=dtype).SerializeToString()
        if isinstance(model_or_path, (str, os.PathLike)):
            path = os.fspath(model_or_path)
            if not os.path.isfile(path):
                raise ExportError(f"Session: no such file {path!r}")
            return path  # a path lets onnxruntime find external data beside the file
        if isinstance(model_or_path, bytes):
            return model_or_path
        if hasattr(model_or_path, "SerializeToString"):
            return model_or_path.SerializeToString()
        raise ExportError(f"Session: expected a path, ModelProto, bytes or Model, given "
                          f"{type(model_or_path).__name__}")

    @property
    def metadata(self) -> dict[str, str]:
        """The model's metadata_props (attngraph records version, target, config there)."""
        return dict(self._session.get_modelmeta().custom_metadata_map)

    def run(self, feeds: Mapping[str, Any], *, check_finite: bool = False,
            outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Check feeds against the model's inputs (names, dtypes, shapes; NaN/Inf when
        `check_finite`), run, and return outputs by name."""
        arrays = check_feeds(self.inputs, feeds, check_finite=check_finite, where="Session.run",
                             refuse_empty=self._ours)
        check_limits(self._limits, {k: t.shape for k, t in self.inputs.items()}, arrays,
                     "Session.run")
        if self._shared:  # check_feeds has made sure both are there
            check_tokens_first(arrays["attention_mask"], arrays["input_ids"].shape[1],
                               "Session.run")
        if isinstance(outputs, str):  # one name, as Keras and Hugging Face users pass it
            outputs = [outputs]
        if outputs is not None and (not isinstance(outputs, Sequence)
                                    or not all(isinstance(n, str) for n in outputs)):
            raise FeedError(f"Session.run: outputs must be a list of output names (of "
                            f"{self.output_names}), given {outputs!r}")
        names = list(outputs) if outputs is not None else self.output_names
        unknown = [n for n in names if n not in self.output_names]
        if unknown:
            raise FeedError(f"Session.run: unknown output(s) {unknown}; the model's outputs are "
                            f"{self.output_names}")
        try:
            results = self._session.run(names, arrays)
        except Exception as exc:  # noqa: BLE001 - report onnxruntime failures as ours
            raise RuntimeFailure(explain("Session.run", exc, self._layers)) from None
        return dict(zip(names, results))

    @property
    def device(self) -> str:
        """Where the model runs: "cuda" when the session uses the CUDA provider, else "cpu"."""
        used = self._session.get_providers()
        return "cuda" if "CUDAExecutionProvider" in used else "cpu"

    @property
    def device_id(self) -> int:
        """The GPU the session runs on: the CUDA provider's `device_id` option (0 on CPU)."""
        options = self._session.get_provider_options().get("CUDAExecutionProvider", {})
        return int(options.get("device_id", 0))

    def buffer(self, shape: Sequence[int], dtype: str) -> Any:
        """A zero-filled OrtValue on the model's device (a preallocated KV-cache buffer)."""
        import onnxruntime as ort

        shape = tuple(shape)
        try:
            if self.device == "cpu":
                return ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, dtype))
            value = ort.OrtValue.ortvalue_from_shape_and_type(shape, np.dtype(dtype).type,
                                                              "cuda", self.device_id)
            value.update_inplace(np.zeros(shape, dtype))
            return value
        except (MemoryError, RuntimeError, ValueError) as exc:  # numpy's or onnxruntime's
            size = np.prod(shape, dtype=np.float64) * np.dtype(dtype).itemsize / 2**30
            why = (str(exc) or repr(exc)).splitlines()[0].strip("'")  # numpy's comes quoted
            raise RuntimeFailure(
                f"Session.buffer: cannot allocate a {list(shape)} {dtype} buffer ({size:.3g} "
                f"GiB) on {self.device}: {why}. "
                f"A shared past/present cache holds the prompt and every new token: generate "
                f"fewer tokens or a smaller batch") from None

    def run_bound(self, host: Mapping[str, np.ndarray], device: Mapping[str, Any], *,
                  keep: Sequence[str], fetch: Sequence[str],
                  alias: Mapping[str, str] | None = None) -> tuple[dict[str, np.ndarray],
                                                                     dict[str, Any]]:
        """One run with onnxruntime I/O binding, for loops that feed outputs back (a KV cache):
        `host` numpy arrays are copied in, `device` values (from an earlier `keep`) are used
        where they are, `keep` outputs stay on the model's device as OrtValues, `fetch`
        outputs come back as numpy; `alias` {input: output} binds the output to the input's
        `device` value, which the model then updates in place (a shared KV buffer). Feeds are
        not checked here (the caller builds them)."""
        binding = self._session.io_binding()
        try:
            for name, arr in host.items():
                binding.bind_cpu_input(name, np.ascontiguousarray(arr))
            for name, value in device.items():
                binding.bind_ortvalue_input(name, value)
            for name in keep:
                binding.bind_output(name, self.device, self.device_id)
            for name in fetch:
                binding.bind_output(name, "cpu")
            for name, output in (alias or {}).items():  # after keep/fetch: outputs keep order
                binding.bind_ortvalue_output(output, device[name])
            self._session.run_with_iobinding(binding)
        except Exception as exc:  # noqa: BLE001 - report onnxruntime failures as ours
            raise RuntimeFailure(explain("Session.run_bound", exc, self._layers)) from None
        values = binding.get_outputs()  # in the order bound
        kept = dict(zip(keep, values[: len(keep)]))
        fetched = {name: v.numpy()
                   for name, v in zip(fetch, values[len(keep):len(keep) + len(fetch)])}
        return fetched, kept

    def steady(self, device: Mapping[str, Any], alias: Mapping[str, str],
               fetch: Mapping[str, np.ndarray]) -> SteadyRun:
        """A run for the steady steps of a loop, with one I/O binding kept between them:
        `device` values and the outputs `alias` {input: output} names are bound to them (the
        model updates them in place) once, as is each `fetch` {output: preallocated numpy
        array}, which every run then overwrites (so its outputs must keep that shape). Calling
        the result with `host` numpy inputs binds them and runs. Feeds are not checked here
        (the caller builds them)."""
        return SteadyRun(self, device, alias, fetch)

    @property
    def session(self) -> Any:
        """The underlying onnxruntime.InferenceSession."""
        return self._session


class SteadyRun:
    """`Session.steady`'s run: the binding and the values bound to it live as long as it."""

    def __init__(self, session: Session, device: Mapping[str, Any], alias: Mapping[str, str],
                 fetch: Mapping[str, np.ndarray]) -> None:
        import onnxruntime as ort

        self._session, self._layers = session.session, session._layers
        self._binding = binding = self._session.io_binding()
        self._values = {name: ort.OrtValue.ortvalue_from_numpy(arr)
                        for name, arr in fetch.items()}
        for name, value in device.items():
            binding.bind_ortvalue_input(name, value)
            if name in alias:
                binding.bind_ortvalue_output(alias[name], value)
        for name, value in self._values.items():
            binding.bind_ortvalue_output(name, value)

    def __call__(self, host: Mapping[str, np.ndarray]) -> None:
        try:
            for name, arr in host.items():
                self._binding.bind_cpu_input(name, np.ascontiguousarray(arr))
            self._session.run_with_iobinding(self._binding)
        except Exception as exc:  # noqa: BLE001 - report onnxruntime failures as ours
            raise RuntimeFailure(explain("Session.steady", exc, self._layers)) from None


def _adapted(data: bytes | str, options: Any, version: str) -> bytes | str:
    """`data` rewritten for this onnxruntime's known op faults (see _export/ort_compat.py)."""
    from ._export.ort_compat import faults, load_adapted

    adapted = load_adapted(data, faults(version))
    if adapted is None:
        return data
    if isinstance(data, str):  # external data stays beside the file: tell onnxruntime where
        options.add_session_config_entry(
            "session.model_external_initializers_file_folder_path",
            os.path.dirname(os.path.abspath(data)))
    return adapted


def _checked_providers(providers: Any) -> list[Any]:
    """The providers as given, when this onnxruntime offers each; a ConfigError otherwise.

    onnxruntime itself would print a warning and silently run on the CPU instead. Entries are
    names or (name, options) pairs, as onnxruntime takes them.
    """
    if isinstance(providers, str) or not isinstance(providers, Sequence) or not providers:
        raise ConfigError(f"Session: providers must be a non-empty list of execution provider "
                          f"names, given {providers!r}")
    available = available_providers()
    names = [p[0] if isinstance(p, tuple) and p else p for p in providers]
    unknown = [n for n in names if n not in available]
    if unknown:
        close = {n: difflib.get_close_matches(str(n), available, n=1) for n in unknown}
        hints = "".join(f"; did you mean {c[0]!r} for {n!r}?" for n, c in close.items() if c)
        raise ConfigError(f"Session: unavailable execution provider(s) {unknown}; this "
                          f"onnxruntime offers {available}{hints}")
    return list(providers)


def _tensor_type(info: Any) -> TensorType:
    kinds = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
             "tensor(int32)": "int32", "tensor(bool)": "bool"}
    dims = tuple(d if isinstance(d, int) else (d if isinstance(d, str) else None)
                 for d in info.shape)
    return TensorType(kinds.get(info.type, info.type), dims)
