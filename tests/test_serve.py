"""`attngraph serve` on a real Triton Inference Server (nvidia-pytriton's tritonserver), driven
by tritonclient over HTTP on 127.0.0.1: concurrent requests of mixed shapes, dynamic batching,
malformed requests, a bounded stop on SIGTERM / SIGINT, nothing listening afterwards."""

from __future__ import annotations

import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

if not (sys.platform == "linux" and platform.machine() == "x86_64"):
    pytest.skip("nvidia-pytriton ships tritonserver for Linux x86_64 only",
                allow_module_level=True)
if sys.version_info >= (3, 13):
    pytest.skip("nvidia-pytriton 0.7 pins numpy < 2, which has no wheels for Python 3.13+",
                allow_module_level=True)

import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

import attngraph as ag

HOST = "127.0.0.1"
START_TIMEOUT_S, STOP_TIMEOUT_S = 180, 40
D = 14


def encoder() -> ag.Model:
    x = ag.input("x", ("batch", "seq", D))
    keep = ag.input("padding_mask", ("batch", "seq"), "bool")
    h = ag.transformer_block(x, num_heads=2, ffn_dim=9, key_padding_mask=keep, name="block")
    return ag.Model({"x": x, "padding_mask": keep},
                    {"hidden": h, "pooled": ag.mean_pool(h, keep, name="pool")}, name="enc")


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((HOST, port)) == 0


class Served:
    """`attngraph serve ...` in a subprocess; its stdout lines are collected by a thread."""

    def __init__(self, *args: str) -> None:
        self.port, self.grpc_port = free_ports(2)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "attngraph", "serve", *args, "--host", HOST,
             "--port", str(self.port), "--grpc-port", str(self.grpc_port), "--threads", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        self.err: list[str] = []
        self.ready = threading.Event()
        # one reader per pipe, the only ones: communicate() beside them would close the pipes
        # under their feet
        self.readers = [threading.Thread(target=self._read, daemon=True),
                        threading.Thread(target=self._read_err, daemon=True)]
        for reader in self.readers:
            reader.start()
        if not self.ready.wait(START_TIMEOUT_S):
            self.kill()
            pytest.fail(f"serve did not start in {START_TIMEOUT_S} s: {self.lines}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # ends when the process closes stdout
            self.lines.append(line.rstrip("\n"))
            if line.startswith("Ctrl-C or SIGTERM stops the server"):
                self.ready.set()
        self.ready.set()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        self.err.extend(self.proc.stderr)

    def _wait(self) -> None:
        """Wait for the process to exit and its pipes to be read to the end."""
        self.proc.wait(timeout=STOP_TIMEOUT_S)
        for reader in self.readers:
            reader.join(timeout=STOP_TIMEOUT_S)

    def client(self) -> Any:
        return triton_http.InferenceServerClient(f"{HOST}:{self.port}", network_timeout=60)

    def stop(self, sig: int) -> tuple[int, str, float]:
        start = time.monotonic()
        self.proc.send_signal(sig)
        try:
            self._wait()
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"serve did not stop within {STOP_TIMEOUT_S} s of {sig}")
        return self.proc.returncode, "".join(self.err), time.monotonic() - start

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self._wait()


def request(client: Any, x: np.ndarray, keep: np.ndarray) -> dict[str, np.ndarray]:
    inputs = [triton_http.InferInput("x", list(x.shape), "FP32"),
              triton_http.InferInput("padding_mask", list(keep.shape), "BOOL")]
    inputs[0].set_data_from_numpy(x)
    inputs[1].set_data_from_numpy(keep)
    result = client.infer("enc", inputs)
    return {"hidden": result.as_numpy("hidden"), "pooled": result.as_numpy("pooled")}


def _input(name: str, value: np.ndarray, dtype: str) -> Any:
    tensor = triton_http.InferInput(name, list(value.shape), dtype)
    tensor.set_data_from_numpy(value)
    return tensor


def client_error(info: Any, reason: str) -> None:
    """A malformed request got HTTP 400 with a one-line readable reason, no traceback."""
    error = info.value
    assert error.status() == "400", (error.status(), error.message())
    assert reason in error.message() and "Traceback" not in error.message(), error.message()


def make_feeds(i: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(100 + i)
    batch, seq = (1, 2, 3)[i % 3], (4, 5, 7)[(i // 3) % 3]
    x = rng.standard_normal((batch, seq, D)).astype(np.float32)
    keep = np.ones((batch, seq), bool)
    keep[0, seq - 1 - i % 2:] = False  # some rows padded at the end
    return {"x": x, "padding_mask": keep}


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> tuple[str, ag.Model, dict[str, np.ndarray]]:
    folder = tmp_path_factory.mktemp("triton")
    model = encoder()
    params = model.init(seed=4)
    ag.save_triton(model, params, folder, name="enc", max_batch_size=8)
    ag.save_triton(lookup(), lookup().init(seed=2), folder, name="lookup", max_batch_size=8,
                   max_queue_delay_us=300_000)
    return str(folder), model, params


def lookup() -> ag.Model:
    """Token ids -> embeddings: ids outside the vocabulary of 11 are the request's fault."""
    ids = ag.input("ids", ("batch", "seq"), "int64")
    return ag.Model({"ids": ids}, {"h": ag.embedding(ids, 11, 6, name="emb")}, name="lookup")


def test_serve_concurrent_requests_batched_and_checked(repo) -> None:
    folder, model, params = repo
    served = Served(folder, "--max-queue-delay-us", "50000")
    try:
        text = "\n".join(served.lines)
        assert f"http://{HOST}:{served.port}/v2/health/ready" in text
        assert f"http://{HOST}:{served.port}/v2/models/enc/infer" in text
        assert f"{HOST}:{served.grpc_port}" in text
        with served.client() as client:
            assert client.is_server_live() and client.is_server_ready()
            assert client.is_model_ready("enc")
            config = client.get_model_config("enc")  # as Triton itself holds it
            assert config["max_batch_size"] == 8
            assert int(config["dynamic_batching"]["max_queue_delay_microseconds"]) == 50000

        n = 32
        feeds = [make_feeds(i) for i in range(n)]
        barrier = threading.Barrier(n, timeout=60)

        def call(i: int) -> dict[str, np.ndarray]:
            with served.client() as client:  # one client per thread: they are not shared
                barrier.wait()
                return request(client, feeds[i]["x"], feeds[i]["padding_mask"])

        with ThreadPoolExecutor(n) as pool:
            results = list(pool.map(call, range(n), timeout=120))
        for i, got in enumerate(results):
            ref = model.predict(params, feeds[i])
            for name in ("hidden", "pooled"):
                assert got[name].shape == ref[name].shape, (i, name)
                np.testing.assert_allclose(got[name], ref[name], atol=1e-4, rtol=1e-4,
                                           err_msg=f"request {i} output {name}")

        with served.client() as client:
            stats = client.get_inference_statistics("enc")["model_stats"][0]
        requests = int(stats["inference_stats"]["success"]["count"])
        executions = int(stats["execution_count"])
        assert requests == n and 0 < executions < n, stats  # some requests were merged
        sizes = {int(b["batch_size"]) for b in stats["batch_stats"]}
        assert max(sizes) > 3, sizes  # a batch larger than any one request's

        with served.client() as client:
            good = make_feeds(1)
            keep = _input("padding_mask", good["padding_mask"], "BOOL")
            with pytest.raises(InferenceServerException) as info:  # wrong name
                client.infer("enc", [_input("y", good["x"], "FP32"), keep])
            client_error(info, "unexpected inference input 'y'")
            with pytest.raises(InferenceServerException) as info:  # wrong last dim
                request(client, np.zeros((2, 4, D + 1), np.float32), good["padding_mask"])
            client_error(info, "unexpected shape for input 'x'")
            with pytest.raises(InferenceServerException) as info:  # wrong dtype
                client.infer("enc", [_input("x", good["x"].astype(np.float64), "FP64"), keep])
            client_error(info, "data-type")
            with pytest.raises(InferenceServerException) as info:  # only 'x' given
                client.infer("enc", [_input("x", good["x"], "FP32")])
            client_error(info, "expected 2 inputs but got 1")
            with pytest.raises(InferenceServerException) as info:  # batch disagrees
                request(client, good["x"], np.ones((1, 4), bool))
            client_error(info, "batch size does not match other inputs")
            with pytest.raises(InferenceServerException) as info:  # seq disagrees with x's
                request(client, good["x"], np.ones((2, 6), bool))
            client_error(info, "Session.run: 'padding_mask': dim 'seq' is 6 here but 4 in 'x'")
            with pytest.raises(InferenceServerException) as info:  # an empty sequence
                request(client, np.zeros((1, 0, D), np.float32), np.ones((1, 0), bool))
            client_error(info, "input 'x' has shape [1, 0, 14]: every dim must be >= 1")
            with pytest.raises(InferenceServerException) as info:  # a value it cannot take
                client.infer("lookup", [_input("ids", np.array([[3, 40]]), "INT64")])
            client_error(info, "embedding 'emb': ids must lie in [0, 11), given 40")
            again = request(client, good["x"], good["padding_mask"])  # still serving
            np.testing.assert_allclose(again["hidden"], model.predict(params, good)["hidden"],
                                       atol=1e-4, rtol=1e-4)
            assert client.is_server_ready()
        merged_with_a_bad_request(served)
    except BaseException:
        served.kill()
        raise
    code, err, _took = served.stop(signal.SIGTERM)  # stop() fails past STOP_TIMEOUT_S
    assert code == 0, err
    assert "stopped on SIGTERM" in err
    assert not listening(served.port) and not listening(served.grpc_port)


def merged_with_a_bad_request(served: Served) -> None:
    """Concurrent requests of one shape, one with an id outside the vocabulary: Triton merges
    them into one batch; only the bad one is refused, the others get their results."""
    model, params = lookup(), lookup().init(seed=2)
    ids = [np.array([[1, 2, 3]]), np.array([[4, 5, 6]]), np.array([[7, 99, 8]]),
           np.array([[9, 10, 0]])]
    barrier = threading.Barrier(len(ids), timeout=60)

    def call(i: int) -> Any:
        with served.client() as client:
            barrier.wait()
            try:
                return client.infer("lookup", [_input("ids", ids[i], "INT64")]).as_numpy("h")
            except InferenceServerException as exc:
                return exc

    with ThreadPoolExecutor(len(ids)) as pool:
        results = list(pool.map(call, range(len(ids)), timeout=120))
    with served.client() as client:
        stats = client.get_inference_statistics("lookup")["model_stats"][0]
    assert max(int(b["batch_size"]) for b in stats["batch_stats"]) > 1, stats  # merged
    for i, got in enumerate(results):
        if i == 2:
            assert isinstance(got, InferenceServerException) and got.status() == "400"
            assert "ids must lie in [0, 11), given 99" in got.message(), got.message()
        else:
            assert isinstance(got, np.ndarray), got
            np.testing.assert_allclose(got, model.predict(params, {"ids": ids[i]})["h"],
                                       atol=1e-6)


def test_serve_onnx_file_stops_on_sigint(tmp_path) -> None:
    model = encoder()
    params = model.init(seed=5)
    path = str(tmp_path / "enc.onnx")
    ag.export(model, params, path)
    served = Served(path, "--max-batch-size", "4")
    try:
        assert any("dynamic batching up to 4" in line for line in served.lines), served.lines
        with served.client() as client:
            feeds = make_feeds(7)
            got = request(client, feeds["x"], feeds["padding_mask"])
            with pytest.raises(InferenceServerException, match="batch"):
                request(client, np.zeros((5, 4, D), np.float32), np.ones((5, 4), bool))
    except BaseException:
        served.kill()
        raise
    np.testing.assert_allclose(got["pooled"], model.predict(params, feeds)["pooled"], atol=1e-4)
    code, err, _ = served.stop(signal.SIGINT)
    assert code == 0, err
    assert "stopped on SIGINT" in err
    assert not listening(served.port)


def test_find_models_reads_repository_configs(tmp_path) -> None:
    from attngraph.serve import ServedModel, ServeError, find_models

    model = encoder()
    params = model.init(seed=0)
    ag.save_triton(model, params, tmp_path, name="a", dynamic_batching=False, instances=2)
    ag.save_triton(model, params, tmp_path, name="b", max_batch_size=3, max_queue_delay_us=9)
    a, b = find_models(str(tmp_path))
    assert a == ServedModel("a", str(tmp_path / "a" / "1" / "model.onnx"), 8, False, 0, 2)
    assert b == ServedModel("b", str(tmp_path / "b" / "1" / "model.onnx"), 3, True, 9, 1)
    a, b = find_models(str(tmp_path), max_batch_size=0, max_queue_delay_us=5)
    assert (a.max_batch_size, a.dynamic_batching, b.dynamic_batching) == (0, False, False)
    ag.save_triton(model, params, tmp_path / "gpu", name="g", kind="gpu")
    with pytest.raises(ServeError, match="only KIND_CPU"):
        find_models(str(tmp_path / "gpu"))


def test_serve_mistakes(tmp_path, capsys) -> None:
    from attngraph.cli import main

    assert main(["serve", str(tmp_path / "missing.onnx")]) == 2
    assert main(["serve", str(tmp_path)]) == 2  # a folder with no config.pbtxt
    model = encoder()
    path = str(tmp_path / "enc.onnx")
    ag.export(model, model.init(seed=0), path)
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", path, "--port", str(port)]) == 2
    assert f"cannot listen on {HOST}:{port}" in capsys.readouterr().err
