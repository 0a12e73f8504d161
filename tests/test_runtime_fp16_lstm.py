"""A float16 LSTM feeding a dense layer runs on every target (onnxruntime's CPU layout
transformer used to crash the whole process on it, so each case runs in a child process)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from attngraph._registry import TARGETS

CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    import attngraph as ag

    x = ag.input("x", ("batch", "seq", 7))
    y = ag.dense(ag.lstm(x, 10), 3)
    model = ag.Model(x, y)
    params = model.init(seed=1)
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 5, 7)).astype("float16")}
    ag.export(model, params, sys.argv[1], target=sys.argv[2], dtype="float16")
    got = ag.Session(sys.argv[1], providers=["CPUExecutionProvider"]).run(feeds)["output"]
    ref = model.predict(params, {"x": feeds["x"].astype("float32")})["output"]
    err = float(np.abs(got.astype("float32") - ref).max())
    print(err)
    sys.exit(0 if err < 2e-2 else 3)
""")


@pytest.mark.parametrize("target", TARGETS)
def test_float16_lstm_into_dense_runs(target: str, tmp_path) -> None:
    path = tmp_path / f"lstm.{target}.onnx"
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path), target],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr[-2000:])
