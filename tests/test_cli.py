"""The `attngraph` command line, run in-process; user mistakes exit 2 with one error line."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from conftest import run_cli

from attngraph.cli import main

MODEL_FILE = '''
import attngraph as ag

def build():
    x = ag.input("x", ("batch", "seq", 16))
    y = ag.multi_head_attention(x, num_heads=2, causal=True, name="attn")
    return ag.Model(x, ag.dense(y, 3, name="head"))
'''



@pytest.mark.parametrize("target", ["ort", "onnx", "decomposed"])
def test_export(capsys, model_file: str, tmp_path, target: str) -> None:
    out_path = str(tmp_path / "m.onnx")
    code, out, _ = run_cli(capsys, "export", model_file, "-o", out_path, "--target", target)
    assert code == 0
    assert ("0 fused attention" if target == "decomposed" else "1 fused attention") in out
    proto = onnx.load(out_path)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["attngraph.target"] == target


def test_summary_validate_run_analyze(capsys, model_file: str, tmp_path) -> None:
    code, out, _ = run_cli(capsys, "summary", model_file + ":build")
    assert code == 0 and "multi_head_attention" in out and "Total parameters" in out
    code, out, _ = run_cli(capsys, "validate", model_file, "--seq", "5")
    assert code == 0 and "PASSED" in out
    onnx_path = str(tmp_path / "m.onnx")
    assert run_cli(capsys, "export", model_file, "-o", onnx_path)[0] == 0
    code, out, _ = run_cli(capsys, "run", onnx_path, "--batch", "3", "--seq", "4", "--repeat", "2")
    assert code == 0 and "f32[3,4,3]" in out and "median" in out
    feeds = tmp_path / "feeds.npz"
    np.savez(feeds, x=np.zeros((1, 6, 16), np.float32))
    code, out, _ = run_cli(capsys, "run", onnx_path, "--inputs", str(feeds))
    assert code == 0 and "f32[1,6,3]" in out
    png = tmp_path / "heat.png"
    code, out, _ = run_cli(capsys, "analyze", model_file, "-o", str(png))
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
    assert run_cli(capsys, "export", model_file, "-o", good_onnx)[0] == 0
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
        code, out, err = run_cli(capsys, *argv)
        assert code == 2, (argv, out, err)
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert needle.lower() in err.lower(), (needle, err)
        assert "Traceback" not in err


def _bad_npz_files(tmp_path) -> dict[str, tuple[str, str]]:
    """name -> (path, what the one error line must say) for files that are no usable .npz."""
    junk, objects, truncated = (tmp_path / n for n in ("junk.npz", "objects.npz", "cut.npz"))
    junk.write_text("these are not the feeds you are looking for\n")
    np.savez(objects, x=np.array([{"a": 1}], dtype=object), y=np.ones(2, np.float32))
    truncated.write_bytes(objects.read_bytes()[:60])
    return {"junk": (str(junk), "is not an .npz archive"),
            "objects": (str(objects), "holds an object array 'x' (dtype=object)"),
            "truncated": (str(truncated), "is not an .npz archive")}


def test_bad_npz_inputs_one_line_without_numpy_hint(capsys, model_file: str, tmp_path) -> None:
    good_onnx = str(tmp_path / "ok.onnx")
    assert run_cli(capsys, "export", model_file, "-o", good_onnx)[0] == 0
    for label, (path, needle) in _bad_npz_files(tmp_path).items():
        code, out, err = run_cli(capsys, "run", good_onnx, "--inputs", path)
        assert code == 2 and out == "", (label, out, err)
        assert err.startswith(f"error: --inputs {path!r} {needle}"), (label, err)
        assert err.count("\n") == 1, (label, err)
        assert "allow_pickle" not in err and "pickled data" not in err, (label, err)


def test_load_params_bad_npz_one_clear_message(tmp_path) -> None:
    import attngraph as ag

    for label, (path, needle) in _bad_npz_files(tmp_path).items():
        with pytest.raises(ag.ParamError) as info:
            ag.load_params(path)
        message = str(info.value)
        assert message.startswith(f"load_params: cannot read {path!r}: it {needle}"), \
            (label, message)
        assert "allow_pickle" not in message and "\n" not in message, (label, message)


def test_module_entry_point_help() -> None:
    result = subprocess.run([sys.executable, "-m", "attngraph", "--help"], check=False,
                            capture_output=True,
                            text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert result.returncode == 0 and "export" in result.stdout


# -- model files: every accepted form, params, no lasting side effects -------------------------

FORMS = '''
import numpy as np
import attngraph as ag

def _make():
    x = ag.input("x", ("batch", "seq", 8))
    return ag.Model(x, ag.dense(ag.multi_head_attention(x, num_heads=2, name="attn"), 3,
                                name="head"))

model = _make()
pair = (model, {k: np.full(v.shape, 0.5, np.float32) for k, v in model.init().items()})
as_dict = {"model": model, "params": pair[1]}
def make_pair():
    return pair
def needs_args(width):
    return _make()
number = 3
bad_params = (model, [1, 2])

if __name__ == "__main__":
    raise SystemExit("the CLI must not run the file as a script")
'''


@pytest.fixture
def forms_file(tmp_path) -> str:
    path = tmp_path / "forms.py"
    path.write_text(FORMS)
    return str(path)


def _head_kernel(path: str) -> np.ndarray:
    tensors = {t.name: t for t in onnx.load(path).graph.initializer}
    return onnx.numpy_helper.to_array(tensors["head.kernel"])


@pytest.mark.parametrize("name, value", [("", None), (":model", None), (":pair", 0.5),
                                         (":as_dict", 0.5), (":make_pair", 0.5)])
def test_model_file_forms(capsys, forms_file: str, tmp_path, name: str,
                          value: float | None) -> None:
    out_path = str(tmp_path / "f.onnx")
    run_cli(capsys, "export", forms_file + name, "-o", out_path)  # the CLI's own imports happen once
    modules, path = set(sys.modules), list(sys.path)
    code, out, err = run_cli(capsys, "export", forms_file + name, "-o", out_path)
    assert code == 0, err
    assert out.startswith(f"wrote {out_path}: target ort, opset 23,") and "KiB" in out
    kernel = _head_kernel(out_path)
    assert np.all(kernel == value) if value is not None else not np.all(kernel == 0.5)
    assert set(sys.modules) == modules and sys.path == path
    assert not [m for m in sys.modules if m.startswith("_attngraph_cli_")]


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_params_flag_overrides_the_file(capsys, forms_file: str, tmp_path, suffix: str) -> None:
    import attngraph as ag
    from attngraph.cli import load_model

    model, _ = load_model(forms_file)
    params = {k: np.full(v.shape, 0.25, np.float32) for k, v in model.init().items()}
    params_path = str(tmp_path / f"p{suffix}")
    ag.save_params(params, params_path)
    out_path = str(tmp_path / "p.onnx")
    assert run_cli(capsys, "export", forms_file + ":pair", "-o", out_path, "--params",
               params_path)[0] == 0
    assert np.all(_head_kernel(out_path) == 0.25)


EMBED_FILE = '''
import attngraph as ag

def build():
    ids = ag.input("ids", ("batch", "seq"), "int64")
    h = ag.multi_head_attention(ag.embedding(ids, 3, 8, name="emb"), num_heads=2, name="attn")
    return ag.Model(ids, h)
'''


def test_int_ids_stay_inside_the_vocabulary(capsys, tmp_path) -> None:
    path = tmp_path / "embed.py"
    path.write_text(EMBED_FILE)
    # --seq 40: 80 draws; ids >= 3 would make the reference raise a FeedError
    code, out, err = run_cli(capsys, "validate", str(path), "--seq", "40", "--targets", "decomposed")
    assert code == 0 and "ids i64[2,40]" in out and "PASSED" in out, err
    onnx_path = str(tmp_path / "embed.onnx")
    assert run_cli(capsys, "export", str(path), "-o", onnx_path, "--target", "decomposed")[0] == 0
    code, out, err = run_cli(capsys, "run", onnx_path, "--seq", "40", "--repeat", "1")
    assert code == 0 and "f32[2,40,8]" in out, err


def test_failed_validation_exits_1(capsys, model_file: str, monkeypatch) -> None:
    from attngraph._validate import Check, ValidationReport
    from attngraph.cli import validate as validate_command

    def failing(*args: object, **kwargs: object) -> ValidationReport:
        return ValidationReport("float32", [Check("ort", "output", 1.0, 1.0, 1e-4, 1e-4, False)])

    monkeypatch.setattr(validate_command, "validate", failing)
    code, out, _ = run_cli(capsys, "validate", model_file)
    assert code == 1 and "FAILED" in out


def test_bugs_keep_their_traceback(model_file: str, tmp_path, monkeypatch) -> None:
    from attngraph.cli import export as export_command

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("internal")

    monkeypatch.setattr(export_command, "export", broken)
    with pytest.raises(KeyError):
        main(["export", model_file, "-o", str(tmp_path / "m.onnx")])


# -- more user mistakes: each one line on stderr, exit 2 --------------------------------------


def _write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_more_user_mistakes(capsys, model_file: str, forms_file: str, tmp_path) -> None:
    good_onnx = str(tmp_path / "ok.onnx")
    assert run_cli(capsys, "export", model_file, "-o", good_onnx)[0] == 0
    empty = _write(tmp_path, "empty.py", "import attngraph as ag\ndef helper(a):\n    pass\n")
    heads = _write(tmp_path, "heads.py", "import attngraph as ag\n"
                   "x = ag.input('x', ('batch', 'seq', 10))\n"
                   "model = ag.Model(x, ag.multi_head_attention(x, num_heads=3))\n")
    syntax = _write(tmp_path, "syntax.py", "def build(:\n    pass\n")
    missing_import = _write(tmp_path, "imports.py", "import no_such_module_xyz\n")
    raises = _write(tmp_path, "raises.py", "def build():\n    return 1 / 0\n")
    wrong_params = str(tmp_path / "wrong.npz")
    np.savez(wrong_params, **{"attn.query.kernel": np.ones((3, 3), np.float32)})
    wrong_feeds, one_array, objects = (str(tmp_path / n) for n in ("w.npz", "a.npy", "o.npz"))
    np.savez(wrong_feeds, y=np.ones(3, np.float32))
    np.save(one_array, np.ones(3, np.float32))
    np.savez(objects, x=np.array([{}], dtype=object))
    out = str(tmp_path / "out.onnx")
    cases = [
        ((), "required"),
        (("frobnicate",), "invalid choice"),
        (("summary", empty), "neither 'build' nor 'model'"),
        (("summary", empty), "helper"),
        (("summary", empty + ":helper"), "needs argument"),
        (("summary", forms_file + ":needs_args"), "width"),
        (("summary", forms_file + ":number"), "expected an ag.Model"),
        (("export", forms_file + ":bad_params", "-o", out), "expected a dict"),
        (("summary", heads), "defined at heads.py:3"),
        (("summary", syntax), "syntax.py:1: SyntaxError"),
        (("summary", missing_import), "no_such_module_xyz"),
        (("summary", raises), "raises.py:2: ZeroDivisionError"),
        (("export", good_onnx, "-o", out), "not a Python file"),
        (("export", model_file, "-o", out, "--opset", "3"), "opset"),
        (("export", model_file, "-o", out, "--params", wrong_params), "parameter problem"),
        (("export", model_file, "-o", out, "--params", str(tmp_path / "nope.npz")), "no such"),
        (("export", model_file, "-o", model_file + "/m.onnx"), "does not exist"),
        (("validate", model_file, "--targets", "ort,tpu"), "tpu"),
        (("validate", model_file, "--batch", "-1"), "positive integer"),
        (("run", good_onnx, "--providers", "NoSuchExecutionProvider"), "unavailable provider"),
        (("run", good_onnx, "--inputs", wrong_feeds), "missing feed"),
        (("run", good_onnx, "--inputs", one_array), "single array"),
        (("run", good_onnx, "--inputs", objects), "object array 'x'"),
        (("run", good_onnx, "--inputs", str(tmp_path / "nope.npz")), "no such file"),
        (("run", str(tmp_path / "nope.onnx")), "no such file"),
    ]
    for argv, needle in cases:
        code, out_text, err = run_cli(capsys, *argv)
        assert code == 2, (argv, out_text, err)
        assert err.startswith("error: ") and err.count("\n") == 1, (argv, err)
        assert needle.lower() in err.lower(), (argv, needle, err)
        assert "Traceback" not in err
