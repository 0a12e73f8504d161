"""`attngraph serve MODEL.onnx|REPO`: serve models on a local Triton Inference Server."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
import urllib.request
from typing import Any

from ..serve import DEFAULT_PORT, Server, find_models, serve_forever
from ._common import info, positive_int

EXAMPLE = "serve out/model.onnx --port 8000   (or: serve REPO, a folder from export --triton)"
HELP = "serve a model on a local Triton Inference Server (the serve extra)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The command's options."""
    p.add_argument("source", metavar="MODEL.onnx|REPO", help="an .onnx file or a Triton model "
                   "repository (ag.save_triton / export --triton)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    p.add_argument("--port", type=positive_int, default=DEFAULT_PORT,
                   help=f"HTTP port ({DEFAULT_PORT})")
    p.add_argument("--grpc-port", type=positive_int, default=None, help="gRPC port (HTTP + 1)")
    p.add_argument("--max-batch-size", type=int, default=None, metavar="B",
                   help="largest batch Triton's dynamic batcher forms (a .onnx: 8; a "
                   "repository: its config's); 0 = no batching")
    p.add_argument("--max-queue-delay-us", type=int, default=None, metavar="U",
                   help="how long the batcher waits for more requests (0; a repository: its "
                   "config's)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="onnxruntime threads per model instance (default: all cores)")


def run(args: argparse.Namespace) -> int:
    """Start the server, print its endpoints, serve until SIGINT or SIGTERM, then stop it."""
    models = find_models(args.source, max_batch_size=args.max_batch_size,
                         max_queue_delay_us=args.max_queue_delay_us)
    server = Server(models, host=args.host, port=args.port, grpc_port=args.grpc_port,
                    threads=args.threads)
    stop = threading.Event()
    received: list[tuple[str, float]] = []  # (signal, when)

    def on_signal(number: int, _frame: Any) -> None:
        received.append((signal.Signals(number).name, time.perf_counter()))
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    started = time.perf_counter()
    try:
        clean = serve_forever(server, stop, on_ready=lambda: _announce(server, stop, started))
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if not clean:
        print("error: Triton Inference Server stopped on its own", file=sys.stderr)
        return 1
    name, when = received[0]
    info(f"stopped on {name} in {time.perf_counter() - when:.1f} s")
    return 0


def _announce(server: Server, stop: threading.Event, started: float) -> None:
    """Print the endpoints once the server and every model answer their readiness checks
    (a bounded wait)."""
    url = f"http://{server.host}:{server.port}"
    checks = [f"{url}/v2/health/ready"] + [f"{url}/v2/models/{m.name}/ready"
                                           for m in server.models]
    deadline = time.monotonic() + 120
    while checks and not stop.is_set() and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(checks[0], timeout=2) as r:
                if r.status == 200:
                    checks.pop(0)
                    continue
        except OSError:
            pass
        stop.wait(0.2)
    if checks:
        return
    try:
        with urllib.request.urlopen(f"{url}/v2", timeout=2) as r:
            version = json.load(r).get("version", "?")
    except (OSError, ValueError):
        version = "?"
    took = time.perf_counter() - started
    lines = [f"Triton Inference Server {version} ready on {server.host} in {took:.1f} s"]
    width = max(len(what) for what, _ in server.endpoints)
    lines += [f"  {what.ljust(width)}  {where}" for what, where in server.endpoints]
    for m in server.models:
        batching = (f"dynamic batching up to {m.max_batch_size}, queue delay "
                    f"{m.max_queue_delay_us} us" if m.dynamic_batching else
                    f"max batch {m.max_batch_size}, no dynamic batching")
        lines.append(f"  {m.name}: {m.path} ({batching}, {m.instances} instance(s))")
    lines.append("Ctrl-C or SIGTERM stops the server")
    print("\n".join(lines), flush=True)
