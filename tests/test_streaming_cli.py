"""Streaming from the command line (`export --streaming`, `attngraph stream`) and the
realtime example's exported step models."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import attngraph as ag
from attngraph._registry import TARGETS

CLI_MODEL = '''
import attngraph as ag

def build():
    return ag.models.sliding_window(embed_dim=6, window_size=4, num_heads=2, head_dim=8,
                                    num_layers=1, ffn_dim=12)
'''


def test_cli_export_streaming_and_stream(capsys: Any, tmp_path: Any) -> None:
    from attngraph.cli import main

    src = tmp_path / "m.py"
    src.write_text(CLI_MODEL)
    step = str(tmp_path / "step.onnx")
    assert main(["export", str(src), "-o", step, "--streaming"]) == 0
    assert "(step model)" in capsys.readouterr().out
    assert main(["stream", step, "--frames", "23", "--chunk", "5", "--batch", "3"]) == 0
    out = capsys.readouterr().out
    assert "streamed 23 frame(s) in 5 chunk(s) of 5 (batch 3)" in out
    assert "p50" in out and "p99" in out and "frames/s" in out
    # the state holds the last 4 frames of 1 layer: 2 x [3, 2, 4, 8] float32 + the frame count
    assert "state 1544 bytes" in out
    frames = np.random.default_rng(0).standard_normal((2, 9, 6)).astype(np.float32)
    np.savez(tmp_path / "frames.npz", input=frames)
    assert main(["stream", step, "--inputs", str(tmp_path / "frames.npz")]) == 0
    assert "streamed 9 frame(s) in 9 chunk(s) of 1 (batch 2)" in capsys.readouterr().out
    assert main(["stream", step, "--inputs", str(tmp_path / "frames.npz"),
                 "--frames", "10"]) == 2
    assert "holds only 9 frame(s)" in capsys.readouterr().err
    plain = str(tmp_path / "plain.onnx")
    assert main(["export", str(src), "-o", plain]) == 0
    capsys.readouterr()
    assert main(["stream", plain]) == 2
    err = capsys.readouterr().err
    assert "streaming=True" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["realtime_sliding_window", "realtime_hybrid"])
def test_realtime_example_step_models_match_exported_bytes(name: str, tmp_path: Any) -> None:
    import hashlib
    import json
    import os
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, os.path.join(root, "examples"))
    import realtime

    model, params = realtime.MODELS[name]()
    with open(os.path.join(root, "exported", "MANIFEST.json")) as f:
        manifest = json.load(f)
    for target in TARGETS:
        filename = f"{name}.{target}.onnx"
        ag.export(model, params, tmp_path / filename, target=target, streaming=True)
        data = (tmp_path / filename).read_bytes()
        with open(os.path.join(root, "exported", filename), "rb") as f:
            assert data == f.read(), f"{filename} differs from exported/ (run `make export`)"
        assert manifest[filename]["sha256"] == hashlib.sha256(data).hexdigest()


def step_golden_model() -> ag.Model:
    """An LSTM, a windowed causal RoPE layer (every query) and a bidirectional layer read at
    the last frame only: each stream form once."""
    x = ag.input("x", ("batch", "seq", 8))
    h = ag.lstm(x, 16, name="lstm")
    h = ag.add(h, ag.multi_head_attention(h, num_heads=2, window=4, rope=True, name="local"))
    h = ag.add(h, ag.multi_head_attention(h, num_heads=2, name="summary"))
    return ag.Model(x, ag.last_timestep(h, name="last"))


@pytest.mark.parametrize("target", TARGETS)
def test_golden_step_model_dumps(target: str) -> None:
    """Step-model lowerings are reviewed as text; regenerate with AG_UPDATE_GOLDEN=1."""
    import os

    from test_api import GOLDEN, dump

    model = step_golden_model()
    text = dump(ag.export(model, model.init(), target=target, streaming=True))
    path = os.path.join(GOLDEN, f"stream_step.{target}.txt")
    if os.environ.get("AG_UPDATE_GOLDEN"):
        with open(path, "w") as f:
            f.write(text)
    with open(path) as f:
        assert text == f.read(), f"lowering changed; review and regenerate {path}"
