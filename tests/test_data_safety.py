"""Crash safety of exports (DESIGN §5, "writes are crash-safe"): a crash at any step leaves the
old model loading with its old outputs, and its debris is swept by the next export."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import attngraph as ag
from attngraph import _io

DATA = re.compile(r"m\.onnx\.[0-9a-f]{16}\.data")
FEEDS = {"x": np.random.default_rng(5).standard_normal((2, 5, 24)).astype(np.float32)}


def model() -> ag.Model:
    x = ag.input("x", ("batch", "seq", 24))  # kernels of 24 * 24 floats: external data
    h = ag.multi_head_attention(x, num_heads=3, causal=True, name="attn")
    return ag.Model(x, ag.dense(h, 7, name="head"))


def outputs(path: str) -> np.ndarray:
    return ag.Session(path, ["CPUExecutionProvider"]).run(FEEDS)["output"]


@pytest.fixture
def old(tmp_path) -> tuple[str, np.ndarray]:
    """A model exported with external data: its path and outputs."""
    path = str(tmp_path / "m.onnx")
    m = model()
    ag.export(m, m.init(seed=1), path, external_data=True)
    return path, outputs(path)


def listing(tmp_path) -> list[str]:
    return sorted(os.listdir(tmp_path))


def test_failed_rename_of_the_onnx_keeps_the_old_model_and_the_next_export_sweeps(
        old, tmp_path, monkeypatch) -> None:
    path, before = old
    (old_data,) = [n for n in listing(tmp_path) if DATA.fullmatch(n)]
    real_replace = os.replace
    calls = []

    def replace(src: str, dst: str) -> None:
        calls.append(os.path.basename(dst))
        if dst.endswith(".onnx"):  # the data file moved into place; the .onnx does not
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(_io.os, "replace", replace)
    m = model()
    with pytest.raises(ag.ExportError, match="cannot write"):
        ag.export(m, m.init(seed=2), path, external_data=True)
    monkeypatch.undo()
    assert calls[0] != old_data and DATA.fullmatch(calls[0]) and calls[1] == "m.onnx"
    np.testing.assert_array_equal(outputs(path), before)  # old .onnx, old data: old outputs
    assert listing(tmp_path) == sorted(["m.onnx", old_data, calls[0]])  # no temporary file
    ag.export(m, m.init(seed=3), path, external_data=True)
    names = listing(tmp_path)
    assert len(names) == 2 and names[0] == "m.onnx" and DATA.fullmatch(names[1]), names
    assert not np.allclose(outputs(path), before)


@pytest.mark.parametrize("exc", [KeyboardInterrupt, MemoryError])
def test_any_exception_while_writing_removes_the_temporary_files(old, tmp_path, exc) -> None:
    path, before = old
    names = listing(tmp_path)
    m = model()
    params = dict(m.init(seed=2))

    class Exploding(dict):  # fails when the writer reads the last big kernel, mid-write
        def __getitem__(self, key: str) -> np.ndarray:
            if key == "attn.output.kernel" and self.checked:
                raise exc()
            return super().__getitem__(key)

    exploding = Exploding(params)
    exploding.checked = False
    real_check = ag._export.check_params

    def check(*args, **kwargs):
        out = real_check(*args, **kwargs)
        exploding.checked = True
        return out

    ag._export.check_params = check
    try:
        for external in (True, False):
            with pytest.raises(exc):
                ag.export(m, exploding, path, external_data=external)
            assert listing(tmp_path) == names
    finally:
        ag._export.check_params = real_check
    np.testing.assert_array_equal(outputs(path), before)


def test_atomic_write_bytes_cleans_up_on_keyboard_interrupt(tmp_path, monkeypatch) -> None:
    target = tmp_path / "p.safetensors"
    target.write_bytes(b"old")

    class Interrupted:
        def write(self, data: bytes) -> int:
            raise KeyboardInterrupt

        def close(self) -> None:
            pass

    real_fdopen = os.fdopen
    opened = []

    def fdopen(fd: int, mode: str):
        opened.append(real_fdopen(fd, mode))
        return Interrupted()

    monkeypatch.setattr(_io.os, "fdopen", fdopen)
    with pytest.raises(KeyboardInterrupt):
        _io.atomic_write_bytes(str(target), b"new", what="save_params")
    opened[0].close()
    assert target.read_bytes() == b"old" and listing(tmp_path) == ["p.safetensors"]


CHILD = textwrap.dedent("""
    import sys, time
    import numpy as np
    sys.path.insert(0, {tests!r})
    import attngraph as ag
    from attngraph import _io
    from test_data_safety import model

    m = model()
    params = dict(m.init(seed=2))
    stage = sys.argv[2]

    class Slow(dict):  # stop when the writer reads the last big kernel, mid data file
        def __getitem__(self, key):
            if key == "attn.output.kernel" and stage == "data" and Slow.armed:
                print("writing", flush=True)
                time.sleep(60)
            return super().__getitem__(key)

    Slow.armed = False
    real_check = ag._export.check_params
    def check(*a, **k):
        out = real_check(*a, **k)
        Slow.armed = True
        return out
    ag._export.check_params = check
    real_replace = _io.os.replace
    def replace(src, dst):  # the data file is in place; stop before the .onnx is replaced
        if stage == "rename" and dst.endswith(".onnx"):
            print("writing", flush=True)
            time.sleep(60)
        real_replace(src, dst)
    _io.os.replace = replace
    ag.export(m, Slow(params), sys.argv[1], external_data=True)
""")


@pytest.mark.parametrize("stage", ["data", "rename"])
def test_sigkill_of_an_exporting_process(old, tmp_path, stage: str) -> None:
    path, before = old
    names = listing(tmp_path)
    script = tmp_path.parent / f"child_{stage}.py"
    script.write_text(CHILD.format(tests=os.path.dirname(os.path.abspath(__file__))))
    child = subprocess.Popen([sys.executable, str(script), path, stage],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.strip() == "writing", (line, child.stderr.read() if child.stderr else "")
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    debris = sorted(set(listing(tmp_path)) - set(names))
    assert debris, "the killed export left nothing behind: it did not get far enough"
    for name in debris:  # a temporary file named after the target, or an orphan data file
        assert name.startswith(".m.onnx.") or DATA.fullmatch(name), name
    np.testing.assert_array_equal(outputs(path), before)
    time.sleep(0.01)
    m = model()
    ag.export(m, m.init(seed=1), path, external_data=True)  # the old model again: same bytes
    assert listing(tmp_path) == names
    np.testing.assert_array_equal(outputs(path), before)


def test_stale_temporaries_of_live_processes_are_left_alone(tmp_path) -> None:
    path = str(tmp_path / "m.onnx")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    live = os.getppid()  # pytest's parent: alive for the whole test
    for pid in (dead, live):
        (tmp_path / f".m.onnx.{pid}-abcd1234.tmp").write_bytes(b"x")
        (tmp_path / f".m.onnx.data.{pid}-abcd1234.tmp").write_bytes(b"x")
    (tmp_path / ".other.onnx.1-abcd1234.tmp").write_bytes(b"x")  # another target's: not ours
    assert sorted(_io.sweep_temps(path)) == sorted(
        [f".m.onnx.{dead}-abcd1234.tmp", f".m.onnx.data.{dead}-abcd1234.tmp"])
    assert listing(tmp_path) == sorted([f".m.onnx.{live}-abcd1234.tmp",
                                        f".m.onnx.data.{live}-abcd1234.tmp",
                                        ".other.onnx.1-abcd1234.tmp"])
