"""Serve exported models on a real Triton Inference Server started on this machine.

The server is the `tritonserver` binary that nvidia-pytriton ships (the `serve` extra): Triton's
own HTTP/gRPC front ends, health and model endpoints, request validation against the model
config, and its dynamic batcher, which merges concurrent requests of the same shape into one
batch. pytriton's wheel carries Triton's Python backend only, so each model runs behind that
backend: Triton hands every batch to pytriton's proxy, which passes it to this process, where an
`ag.Session` (onnxruntime) runs it. A Triton repository written by `ag.save_triton` is served with
its config's batch size, batching and instance count.

A request the model cannot take (inputs whose shared dims disagree, an empty sequence, ...) is
the client's mistake: the session's one-line reason goes back with Triton's INVALID_ARG code,
which its HTTP front end answers with 400 (gRPC: INVALID_ARGUMENT), and the server goes on.
pytriton's proxy model reports every failure of the Python function as an internal error (HTTP
500, with its traceback), so the proxy file it copies into Triton's repository gets a short
wrapper appended that turns failures marked as the client's into INVALID_ARG responses. When
such a failure hits a batch that Triton's dynamic batcher merged from several requests, each
request is run again alone, so only the faulty one is refused.

The Python backend's stub process links the Python library of the interpreter it is built for;
with an interpreter not installed by the system (pyenv, conda) it would load the system's
`libpython` beside another version's standard library, so this interpreter's library folder
goes first on LD_LIBRARY_PATH.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import sysconfig
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # typing.Self is new in Python 3.11
    from typing import Self

import numpy as np

from ._errors import AttnGraphError, ConfigError
from .runtime import Session
from .triton import KINDS, read_config

DEFAULT_PORT = 8000
STOP_TIMEOUT_S = 10  # Triton's own grace period for in-flight requests when stopping
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")
CLIENT_ERROR = "attngraph-client-error: "  # marks a failure that is the request's fault
# appended to pytriton's proxy model.py (see the module docstring); runs inside Triton's stub
_PROXY_WRAPPER = f"""

def _attngraph_empty(request):
    for tensor in request.inputs():
        shape = list(tensor.as_numpy().shape)
        if 0 in shape:
            return f"input {{tensor.name()!r}} has shape {{shape}}: every dim must be >= 1"
    return None


def _attngraph_client_errors(execute):
    def wrapped(self, triton_requests):
        # pytriton cannot pass zero-size tensors to the model process: refuse them here
        empty = [_attngraph_empty(r) for r in triton_requests]
        if any(empty):
            good = [r for r, e in zip(triton_requests, empty) if e is None]
            done = iter(wrapped(self, good) if good else [])
            return [next(done) if e is None else pb_utils.InferenceResponse(
                error=pb_utils.TritonError(e, pb_utils.TritonError.INVALID_ARG)) for e in empty]
        try:
            return execute(self, triton_requests)
        except Exception as exc:
            text = exc.message() if hasattr(exc, "message") else str(exc)
            if {CLIENT_ERROR!r} not in text:
                raise
            if len(triton_requests) > 1:  # a merged batch: find the request at fault
                return [wrapped(self, [r])[0] for r in triton_requests]
            reason = text.split({CLIENT_ERROR!r}, 1)[1].splitlines()[0]
            error = pb_utils.TritonError(reason, pb_utils.TritonError.INVALID_ARG)
            return [pb_utils.InferenceResponse(error=error)]
    return wrapped


TritonPythonModel.execute = _attngraph_client_errors(TritonPythonModel.execute)
""".encode()


class ServeError(AttnGraphError):
    """The server cannot start: missing package, unsupported platform, bad repository."""


@dataclass(frozen=True)
class ServedModel:
    """One model to serve: its .onnx file and how Triton batches it."""

    name: str
    path: str
    max_batch_size: int = 8
    dynamic_batching: bool = True
    max_queue_delay_us: int = 0
    instances: int = 1


def find_models(source: str, *, max_batch_size: int | None = None,
                max_queue_delay_us: int | None = None) -> list[ServedModel]:
    """The models in `source`: one `.onnx` file (named after the file, batching up to 8) or a
    Triton repository (each `NAME/config.pbtxt` with its newest numeric version folder).
    `max_batch_size` / `max_queue_delay_us` override what the configs say."""
    if os.path.isfile(source):
        if not source.endswith(".onnx"):
            raise ServeError(f"serve: {source!r} is neither an .onnx file nor a Triton "
                             "repository folder")
        stem = _SAFE.sub("_", os.path.splitext(os.path.basename(source))[0])
        found = [ServedModel(stem, source)]
    elif os.path.isdir(source):
        found = [_from_config(source, entry) for entry in sorted(os.listdir(source))
                 if os.path.isfile(os.path.join(source, entry, "config.pbtxt"))]
        if not found:
            raise ServeError(f"serve: {source!r} holds no model folder with a config.pbtxt "
                             "(write one with ag.save_triton or attngraph export --triton)")
    else:
        raise ServeError(f"serve: no such file or folder {source!r}")
    out = []
    for m in found:
        batch = m.max_batch_size if max_batch_size is None else max_batch_size
        if batch < 0:
            raise ConfigError(f"serve: max batch size must be >= 0, given {batch}")
        delay = m.max_queue_delay_us if max_queue_delay_us is None else max_queue_delay_us
        if delay < 0:
            raise ConfigError(f"serve: max queue delay must be >= 0 us, given {delay}")
        out.append(ServedModel(m.name, m.path, batch, m.dynamic_batching and batch > 0, delay,
                               m.instances))
    return out


def _from_config(repo: str, name: str) -> ServedModel:
    folder = os.path.join(repo, name)
    config = read_config(os.path.join(folder, "config.pbtxt"))
    versions = sorted((int(v) for v in os.listdir(folder) if v.isdigit()), reverse=True)
    filename = config.default_model_filename or "model.onnx"
    for v in versions:
        path = os.path.join(folder, str(v), filename)
        if os.path.isfile(path):
            break
    else:
        raise ServeError(f"serve: {folder!r} has no version folder holding {filename!r}")
    kinds = {g.kind for g in config.instance_group}
    if kinds - {0, 2}:  # KIND_AUTO, KIND_CPU; the server here has no GPU instances
        raise ServeError(f"serve: {name}: only {KINDS['cpu']} instance groups are served here")
    instances = sum(g.count or 1 for g in config.instance_group) or 1
    return ServedModel(config.name or name, path, config.max_batch_size,
                       config.HasField("dynamic_batching"),
                       config.dynamic_batching.max_queue_delay_microseconds, instances)


class Server:
    """A Triton Inference Server on `host`, serving `models` (start / stop, or `with`)."""

    def __init__(self, models: Sequence[ServedModel], *, host: str = "127.0.0.1",
                 port: int = DEFAULT_PORT, grpc_port: int | None = None,
                 threads: int | None = None) -> None:
        self.models = list(models)
        self.host, self.port = host, port
        self.grpc_port = port + 1 if grpc_port is None else grpc_port
        self.threads = threads
        self.sessions: dict[str, Session] = {}
        self._triton: Any = None
        self.log_file = ""  # tritonserver's own log, in the workspace while it runs
        self._workspace: tempfile.TemporaryDirectory[str] | None = None

    @property
    def endpoints(self) -> list[tuple[str, str]]:
        """(what, where) for each endpoint, for the startup lines."""
        http = f"http://{self.host}:{self.port}"
        lines = [("health", f"{http}/v2/health/ready"), ("grpc", f"{self.host}:{self.grpc_port}")]
        for m in self.models:
            lines.append((f"model {m.name}", f"{http}/v2/models/{m.name}/infer"))
        return lines

    def start(self) -> None:
        """Load every model in onnxruntime, start tritonserver and wait until it is ready."""
        triton_mod = _import_pytriton()
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

        bindings = []
        for m in self.models:
            sessions = [Session(m.path, ["CPUExecutionProvider"], threads=self.threads)
                        for _ in range(m.instances)]
            self.sessions[m.name] = sessions[0]
            inputs = [_tensor(Tensor, n, t.dtype, t.shape, m) for n, t in sessions[0].inputs.items()]
            outputs = [_tensor(Tensor, n, t.dtype, t.shape, m)
                       for n, t in sessions[0].outputs.items()]
            config = ModelConfig(batching=m.max_batch_size > 0,
                                 max_batch_size=max(m.max_batch_size, 1),
                                 batcher=DynamicBatcher(
                                     max_queue_delay_microseconds=m.max_queue_delay_us)
                                 if m.dynamic_batching else None)  # None: no batcher
            funcs = [_infer_function(s, m.max_batch_size > 0) for s in sessions]
            bindings.append((m.name, funcs, inputs, outputs, config))
        for port in (self.port, self.grpc_port):
            _check_port(self.host, port)
        _python_library_first()
        _wrap_proxy_model()
        logging.getLogger("pytriton").setLevel(logging.ERROR)
        self._workspace = tempfile.TemporaryDirectory(prefix="attngraph-serve-")
        self.log_file = os.path.join(self._workspace.name, "tritonserver.log")
        config = triton_mod.TritonConfig(
            http_address=self.host, http_port=self.port, grpc_address=self.host,
            grpc_port=self.grpc_port, allow_metrics=False, exit_timeout_secs=STOP_TIMEOUT_S,
            log_verbose=0, log_file=self.log_file)
        # pytriton guards Triton's admin APIs with a token; statistics (read-only: request and
        # batch counts, the way to see the dynamic batcher at work) stay open
        guarded = [e for e in triton_mod.DEFAULT_PROTECTED_ENDPOINTS if e != "statistics"]
        self._triton = triton_mod.Triton(
            config=config, workspace=os.path.join(self._workspace.name, "w"),
            security_config=triton_mod.TritonSecurityConfig(restricted_endpoints=guarded))
        try:
            for name, funcs, inputs, outputs, model_config in bindings:
                self._triton.bind(model_name=name, infer_func=funcs, inputs=inputs,
                                  outputs=outputs, config=model_config, strict=True)
            self._triton.run()
        except Exception as exc:  # noqa: BLE001 - pytriton raises many kinds; report ours
            log = _tail(self.log_file)
            self.stop()
            raise ServeError(f"serve: Triton Inference Server did not start on "
                             f"{self.host}:{self.port}: {str(exc).splitlines()[0]}"
                             + (f"; its log ends: {log}" if log else "")) from None

    def is_alive(self) -> bool:
        """True while tritonserver and every model's proxy run."""
        return self._triton is not None and bool(self._triton.is_alive())

    def stop(self) -> None:
        """Stop tritonserver (in-flight requests get STOP_TIMEOUT_S to finish)."""
        triton, self._triton = self._triton, None
        if triton is not None:
            triton.stop()
        if self._workspace is not None:
            self._workspace.cleanup()
            self._workspace = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _check_port(host: str, port: int) -> None:
    """Fail early and clearly when a port is taken (tritonserver would only log it)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is ok
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ServeError(f"serve: cannot listen on {host}:{port}: {exc.strerror} (choose "
                             f"another with --port / --grpc-port)") from None


def _tail(path: str, lines: int = 3) -> str:
    try:
        with open(path, errors="replace") as f:
            return " | ".join(line.strip() for line in f.readlines()[-lines:])
    except OSError:
        return ""


def _import_pytriton() -> Any:
    where = f"{sys.platform}/{os.uname().machine}, Python {sys.version_info[0]}." \
            f"{sys.version_info[1]}"
    try:
        import pytriton.triton as triton_mod
    except ImportError:
        raise ServeError(f"serve needs nvidia-pytriton, which ships the tritonserver binary: "
                         f"pip install 'attngraph[serve]' (Linux x86_64 with glibc >= 2.35, "
                         f"Python 3.8-3.13; this is {where})") from None
    stubs = os.path.join(os.path.dirname(triton_mod.__file__), "tritonserver",
                         "python_backend_stubs", f"{sys.version_info[0]}.{sys.version_info[1]}")
    if not os.path.isdir(stubs):
        raise ServeError(f"serve: this nvidia-pytriton has no Python backend for {where}")
    return triton_mod


def _wrap_proxy_model() -> None:
    """Have pytriton send its proxy model.py with the client-error wrapper appended."""
    from pytriton.models.model import Model as PyTritonModel

    original = PyTritonModel.get_proxy_model_files
    if getattr(original, "attngraph", False):
        return

    def files(self: Any) -> dict[str, bytes]:
        out = original(self)
        for key in out:
            if key.endswith("/model.py"):
                out[key] += _PROXY_WRAPPER
        return out

    files.attngraph = True  # type: ignore[attr-defined]
    PyTritonModel.get_proxy_model_files = files  # type: ignore[method-assign]


def _python_library_first() -> None:
    """Put this interpreter's libpython first for tritonserver's Python backend stub."""
    libdir, library = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY")
    if not sysconfig.get_config_var("Py_ENABLE_SHARED") or not libdir or not library:
        return  # a static interpreter: the stub can only use the system's libpython
    if not os.path.isfile(os.path.join(libdir, library)):
        return
    paths = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    if not paths or paths[0] != libdir:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join([libdir, *paths])


def _tensor(tensor_cls: Any, name: str, dtype: str, shape: tuple[Any, ...],
            model: ServedModel) -> Any:
    dims = [d if isinstance(d, int) else -1 for d in shape]
    if model.max_batch_size > 0:
        if not dims or dims[0] != -1:
            raise ServeError(f"serve: {model.name}: {name!r} has shape {dims} with no dynamic "
                             f"batch dim first; serve it with --max-batch-size 0")
        dims = dims[1:]
    return tensor_cls(name=name, dtype=np.dtype(dtype), shape=tuple(dims))


def _infer_function(session: Session, batched: bool) -> Callable[[list[Any]], list[dict]]:
    """Triton's batch of requests -> one onnxruntime run per group of requests whose inputs
    have the same shapes (Triton's batcher only merges those, but say so rather than trust it),
    split back per request."""

    def infer(requests: list[Any]) -> list[dict[str, np.ndarray]]:
        results: list[dict[str, np.ndarray]] = [{} for _ in requests]
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, request in enumerate(requests):
            key = tuple((n, request[n].shape[1:] if batched else request[n].shape)
                        for n in sorted(request.data))
            groups.setdefault(key if batched else (i,), []).append(i)
        for rows in groups.values():
            feeds = {n: (np.concatenate([requests[i][n] for i in rows]) if len(rows) > 1
                         else requests[rows[0]][n]) for n in requests[rows[0]].data}
            try:
                out = session.run(feeds)
            except AttnGraphError as exc:  # the client gets the one-line reason, as a 400
                raise ValueError(CLIENT_ERROR + str(exc).splitlines()[0]) from None
            start = 0
            for i in rows:
                size = next(iter(requests[i].data.values())).shape[0] if batched else 0
                results[i] = {k: v[start:start + size] if batched else v for k, v in out.items()}
                start += size
        return results

    return infer


def serve_forever(server: Server, stop: threading.Event, *,
                  on_ready: Callable[[], None] | None = None, poll_s: float = 0.5) -> bool:
    """Start `server`, call `on_ready`, wait until `stop` is set or the server dies, stop it.
    Returns False when the server died on its own."""
    try:
        server.start()
        if on_ready is not None and not stop.is_set():
            on_ready()
        while not stop.wait(poll_s):
            if not server.is_alive():
                return False
        return True
    finally:
        server.stop()


__all__ = ["DEFAULT_PORT", "ServeError", "ServedModel", "Server", "find_models", "serve_forever"]
