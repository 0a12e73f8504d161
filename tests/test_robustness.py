"""Robustness and first use: no raw tracebacks, clear errors at the call that made them, a
command line that behaves (exit codes, -v/-q, Ctrl-C), works on every supported Python."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from attngraph.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DECODER_FILE = '''
import attngraph as ag

def build():
    return ag.models.gpt(vocab_size=40, n_positions=32, n_embd=16, n_layer=1, n_head=2)
'''

ATTN_FILE = '''
import attngraph as ag

def build():
    x = ag.input("x", ("batch", "seq", 16))
    y = ag.multi_head_attention(x, num_heads=2, causal=True, name="attn")
    return ag.Model(x, ag.dense(y, 3, name="head"))
'''


def _write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- item 9/13: the command line ---------------------------------------------------------------


def test_top_level_help_names_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    from attngraph.cli import COMMANDS

    code, out, _ = _cli(capsys, "--help")
    assert code == 0
    intro = out.split("commands:")[0]  # the description, before argparse's own list
    assert set(COMMANDS) >= {"export", "summary", "validate", "analyze", "run", "generate"}
    for name in COMMANDS:
        assert name in intro, (name, intro)
        assert f"    {name} " in out


def test_quiet_and_verbose_flags(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    spec = _write(tmp_path, "dec.py", DECODER_FILE)
    argv = ("generate", spec + ":build", "--target", "reference", "--prompt", "1 2", "-n", "3")
    code, out, err = _cli(capsys, *argv)
    assert code == 0 and "tok/s" in err
    for quiet in (["-q", *argv], [*argv, "--quiet"]):
        code, quiet_out, quiet_err = _cli(capsys, *quiet)
        assert code == 0 and quiet_out == out and quiet_err == "", quiet_err
    # -v adds the traceback of a user mistake; the last line is still the one error line
    code, _, err = _cli(capsys, "-v", "summary", str(tmp_path / "missing.py"))
    assert code == 2 and "Traceback" in err
    assert err.strip().splitlines()[-1].startswith("error: no such file")
    assert _cli(capsys, "-v", "-q", "summary", spec)[0] == 2  # one or the other


def test_keyboard_interrupt_exits_130_with_one_line(capsys: pytest.CaptureFixture[str],
                                                     tmp_path, monkeypatch) -> None:
    from attngraph.cli import summary as summary_command

    def interrupted(args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(summary_command, "run", interrupted)
    code, _, err = _cli(capsys, "summary", _write(tmp_path, "m.py", ATTN_FILE))
    assert code == 130 and err.strip() == "interrupted" and "Traceback" not in err


def test_ctrl_c_in_a_real_process(tmp_path) -> None:
    onnx_path = str(tmp_path / "m.onnx")
    spec = _write(tmp_path, "m.py", ATTN_FILE)
    assert main(["-q", "export", spec, "-o", onnx_path]) == 0
    proc = subprocess.Popen([sys.executable, "-m", "attngraph", "run", onnx_path, "--repeat",
                             "100000000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=str(tmp_path))
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # "feeds: ...": the command is running
        assert first.startswith("feeds:"), first
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert err.strip() == "interrupted" and "Traceback" not in err


def test_cli_errors_do_not_point_into_attngraph_or_the_caller(
        capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    spec = _write(tmp_path, "dec.py", DECODER_FILE)
    code, _, err = _cli(capsys, "generate", spec, "--target", "reference", "--prompt", "1",
                        "--top-p", "2")
    assert code == 2 and "top_p must lie in (0, 1]" in err
    # the call came from the command line: no "(defined at attngraph:6)", nor this test file
    assert "defined at" not in err and "test_robustness" not in err, err
    # a mistake inside the user's file still points at the user's line
    heads = _write(tmp_path, "heads.py", "import attngraph as ag\n"
                   "x = ag.input('x', ('batch', 'seq', 10))\n"
                   "model = ag.Model(x, ag.multi_head_attention(x, num_heads=3))\n")
    code, _, err = _cli(capsys, "summary", heads)
    assert code == 2 and "(defined at heads.py:3)" in err


def test_console_script_errors_name_the_users_file(tmp_path) -> None:
    """Run as `python -m attngraph` (a real process): the error's location is the model
    file's line, never the launcher's."""
    bad = _write(tmp_path, "model.py", "import attngraph as ag\n\n\ndef build():\n"
                 "    x = ag.input('x', ('batch', 'seq', 8))\n"
                 "    return ag.Model(x, ag.dense(x, 0))\n")
    result = subprocess.run([sys.executable, "-m", "attngraph", "summary", bad], check=False,
                            capture_output=True, text=True, cwd=str(tmp_path), timeout=120)
    assert result.returncode == 2
    assert "(defined at model.py:6)" in result.stderr and "Traceback" not in result.stderr


# -- item 6: supported Python and dependency versions ----------------------------------------


def _release(text: str) -> tuple[int, ...]:
    """'1.30' -> (1, 30, 0); '2.4.6' -> (2, 4, 6)."""
    parts = [int(part) for part in re.findall(r"\d+", text)[:3]]
    return tuple(parts + [0] * (3 - len(parts)))


def test_minimum_versions_are_pinned_for_test_min_and_met() -> None:
    import tomllib
    from importlib.metadata import version

    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    floors = dict(re.fullmatch(r"([\w-]+)>=([\d.]+)", dep).groups()  # type: ignore[union-attr]
                  for dep in project["dependencies"])
    with open(os.path.join(REPO, ".ci", "min-versions.txt")) as f:
        pins = dict(line.strip().split("==") for line in f
                    if line.strip() and not line.startswith("#"))
    assert {k: _release(v) for k, v in pins.items()} == {
        k: _release(v) for k, v in floors.items()}  # `make test-min` installs exactly the oldest versions allowed
    for name, floor in floors.items():
        assert _release(version(name)) >= _release(floor), (name, version(name), floor)
    # onnxruntime < 1.30 rejects GroupQueryAttention's `causal` attribute and gives NaN or
    # the mean of V for fully masked rows of the standard Attention op
    assert _release(floors["onnxruntime"]) >= (1, 30)
    assert project["requires-python"] == ">=3.11"  # onnxruntime >= 1.30 has no 3.10 wheels
    with open(os.path.join(REPO, "Makefile")) as f:
        makefile = f.read()
    assert "test-min:" in makefile and ".ci/min-versions.txt" in makefile
