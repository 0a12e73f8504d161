"""The `attngraph` command line, run in-process; user mistakes exit 2 with one error line."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import pytest

from attngraph.cli import main

MODEL_FILE = '''
import attngraph as ag

def build():
    x = ag.input("x", ("batch", "seq", 16))
    y = ag.multi_head_attention(x, num_heads=2, causal=True, name="attn")
    return ag.Model(x, ag.dense(y, 3, name="head"))
'''


@pytest.fixture
def model_file(tmp_path) -> str:
    path = tmp_path / "m.py"
    path.write_text(MODEL_FILE)
    return str(path)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("target", ["ort", "onnx", "decomposed"])
def test_export(capsys, model_file: str, tmp_path, target: str) -> None:
    out_path = str(tmp_path / "m.onnx")
    code, out, _ = run(capsys, "export", model_file, "-o", out_path, "--target", target)
    assert code == 0
    assert ("0 fused attention" if target == "decomposed" else "1 fused attention") in out
    proto = onnx.load(out_path)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["attngraph.target"] == target


def test_summary_validate_run_analyze(capsys, model_file: str, tmp_path) -> None:
    code, out, _ = run(capsys, "summary", model_file + ":build")
    assert code == 0 and "multi_head_attention" in out and "Total parameters" in out
    code, out, _ = run(capsys, "validate", model_file, "--seq", "5")
    assert code == 0 and "PASSED" in out
    onnx_path = str(tmp_path / "m.onnx")
    assert run(capsys, "export", model_file, "-o", onnx_path)[0] == 0
    code, out, _ = run(capsys, "run", onnx_path, "--batch", "3", "--seq", "4", "--repeat", "2")
    assert code == 0 and "f32[3,4,3]" in out and "median" in out
    feeds = tmp_path / "feeds.npz"
    np.savez(feeds, x=np.zeros((1, 6, 16), np.float32))
    code, out, _ = run(capsys, "run", onnx_path, "--inputs", str(feeds))
    assert code == 0 and "f32[1,6,3]" in out
    png = tmp_path / "heat.png"
    code, out, _ = run(capsys, "analyze", model_file, "-o", str(png))
    assert code == 0 and "attn" in out and png.stat().st_size > 5000
    from PIL import Image

    pixels = np.asarray(Image.open(png).convert("L"), dtype=float)
    assert pixels.shape[0] > 200 and pixels.std() > 10  # a real, non-blank picture


def test_user_mistakes_exit_2_with_one_line(capsys, model_file: str, tmp_path) -> None:
    not_onnx = tmp_path / "x.onnx"
    not_onnx.write_text("not a model")
    bad_npz = tmp_path / "bad.npz"
    bad_npz.write_bytes(b"junk")
    good_onnx = str(tmp_path / "ok.onnx")
    assert run(capsys, "export", model_file, "-o", good_onnx)[0] == 0
    cases = [
        (("summary", str(tmp_path / "missing.py")), "no such file"),
        (("summary", model_file + ":nothing"), "nothing"),
        (("export", model_file, "-o", str(tmp_path / "o.onnx"), "--target", "trt"), "trt"),
        (("run", str(not_onnx)), "ONNX"),
        (("run", good_onnx, "--inputs", str(bad_npz)), "npz"),
        (("export", model_file, "-o", str(tmp_path / "no" / "dir" / "m.onnx")), "does not exist"),
        (("run", good_onnx, "--repeat", "0"), "repeat"),
    ]
    for argv, needle in cases:
        code, out, err = run(capsys, *argv)
        assert code == 2, (argv, out, err)
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert needle.lower() in err.lower(), (needle, err)
        assert "Traceback" not in err


def test_module_entry_point_help() -> None:
    result = subprocess.run([sys.executable, "-m", "attngraph", "--help"], check=False,
                            capture_output=True,
                            text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert result.returncode == 0 and "export" in result.stdout
