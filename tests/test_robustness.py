"""Robustness and first use: no raw tracebacks, clear errors at the call that made them, a
command line that behaves (exit codes, -v/-q, Ctrl-C), works on every supported Python."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time

import numpy as np
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
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # a plain pipe
    proc = subprocess.Popen([sys.executable, "-m", "attngraph", "run", onnx_path, "--repeat",
                             "100000000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=str(tmp_path), env=env)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)  # never wait forever
        first = proc.stdout.readline() if ready else ""  # "feeds: ...": the command is running
        if not first.startswith("feeds:"):
            proc.kill()
            pytest.fail(f"`attngraph run` printed {first!r} (stderr: {proc.communicate()[1]!r})"
                        if ready else "no line from `attngraph run` within 60 s (is its "
                        "stdout line-buffered?)")
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert err.strip() == "interrupted" and "Traceback" not in err


def test_validate_inputs_and_run_output(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    spec = _write(tmp_path, "m.py", ATTN_FILE)
    feeds_path = str(tmp_path / "feeds.npz")
    x = np.random.default_rng(5).standard_normal((3, 4, 16)).astype(np.float32)
    np.savez(feeds_path, x=x)
    code, out, err = _cli(capsys, "validate", spec, "--inputs", feeds_path, "--targets", "ort")
    assert code == 0 and "feeds: x f32[3,4,16]" in out and "PASSED" in out, err
    onnx_path, out_path = str(tmp_path / "m.onnx"), str(tmp_path / "out.npz")
    assert _cli(capsys, "export", spec, "-o", onnx_path)[0] == 0
    code, out, err = _cli(capsys, "run", onnx_path, "--inputs", feeds_path, "-o", out_path,
                          "--repeat", "1")
    assert code == 0 and f"wrote {out_path}" in out, err
    with np.load(out_path, allow_pickle=False) as saved:
        got = dict(saved)
    import attngraph.cli._load as load

    model, _ = load.load_model(spec)
    want = model.predict(model.init(seed=0), {"x": x})
    assert set(got) == set(want)
    np.testing.assert_allclose(got["output"], want["output"], atol=1e-4)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []
    code, _, err = _cli(capsys, "run", onnx_path, "-o", str(tmp_path / "out.txt"))
    assert code == 2 and "expected a path ending in .npz" in err


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
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # tomllib is new in Python 3.11; the test extra installs tomli before it
        import tomli as tomllib
    from importlib.metadata import version

    from packaging.requirements import Requirement

    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    with open(os.path.join(REPO, ".ci", "min-versions.txt")) as f:
        pin_lines = [line.strip() for line in f if line.strip() and not line.startswith("#")]

    def floors_on(python: str, lines: list[str], op: str) -> dict[str, tuple[int, ...]]:
        """The lowest version each line allows on Python `python` (markers evaluated)."""
        found = {}
        for line in lines:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"python_version": python}):
                (spec,) = req.specifier
                assert spec.operator == op, line
                found[req.name] = _release(spec.version)
        return found

    # `make test-min` installs exactly the oldest versions allowed, on every supported Python
    assert project["requires-python"] == ">=3.10"
    for python in ("3.10", "3.11", "3.13"):
        floors = floors_on(python, project["dependencies"], ">=")
        assert floors_on(python, pin_lines, "==") == floors, python
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    floors = floors_on(here, project["dependencies"], ">=")
    for name, floor in floors.items():
        assert _release(version(name)) >= floor, (name, version(name), floor)
    # onnxruntime 1.29 is the first that runs every export as written; 1.23.2 (the newest with
    # Python 3.10 wheels) needs ag.Session's in-memory adaptation (tests/test_ort_compat.py)
    assert floors_on("3.11", project["dependencies"], ">=")["onnxruntime"] >= (1, 29)
    assert floors_on("3.10", project["dependencies"], ">=")["onnxruntime"] == (1, 23, 2)
    with open(os.path.join(REPO, "Makefile")) as f:
        makefile = f.read()
    assert "test-min:" in makefile and ".ci/min-versions.txt" in makefile


# -- item 8: generate's progress bar never shares the terminal line with the tokens ---------------

LONG_DECODER = '''
import attngraph as ag

def build():
    return ag.models.gpt(vocab_size=30, n_positions=300, n_embd=8, n_layer=1, n_head=1)
'''


class _Terminal:
    """Stands in for a terminal that both sys.stdout and sys.stderr write to."""

    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> int:
        self.text += text
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True

    def screen(self) -> list[str]:
        """The lines a terminal would show: '\r' returns to column 0 and overwrites."""
        lines, row, col = [""], 0, 0
        for ch in re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", self.text):
            if ch == "\n":
                row, col = row + 1, 0
                lines += [""] * (row + 1 - len(lines))
            elif ch == "\r":
                col = 0
            else:
                line = lines[row].ljust(col)
                lines[row] = line[:col] + ch + line[col + 1:]
                col += 1
        return [line.rstrip() for line in lines if line.strip()]


@pytest.mark.parametrize("prompts", [["1 2"], ["1 2", "3"]])
def test_generate_progress_bar_stays_off_the_token_line(tmp_path, monkeypatch,
                                                        prompts: list[str]) -> None:
    spec = _write(tmp_path, "long.py", LONG_DECODER)
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setattr(sys, "stderr", terminal)
    argv = ["generate", spec, "--target", "reference", "-n", "260"]
    for prompt in prompts:
        argv += ["--prompt", prompt]
    assert main(argv) == 0
    screen = terminal.screen()
    # each prompt's row intact on its own line (prompt, then 260 tokens), then the speed line
    assert len(screen) == len(prompts) + 1, screen
    for line, prompt in zip(screen, prompts):
        ids = line.replace("|", " ").split()
        assert ids[:len(prompt.split())] == prompt.split() and len(ids) == len(prompt.split()) \
            + 260 and all(i.isdigit() for i in ids), line
    assert screen[-1].endswith("tok/s)")
    if len(prompts) > 1:  # a batch prints at the end: a bar showed meanwhile, then was cleared
        assert "generate:" in terminal.text


# -- item 11: the README's examples run as a new user would run them ------------------------


def _readme_blocks() -> list[tuple[str, str]]:
    """(kind, code) of every block the README marks with `<!-- readme-test: KIND -->`."""
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    return re.findall(r"<!-- readme-test: (\w+) -->\n```\w*\n(.*?)```", text, re.DOTALL)


def test_readme_says_how_to_install_and_what_a_model_file_defines() -> None:
    with open(os.path.join(REPO, "README.md")) as f:
        text = " ".join(f.read().split())
    assert "pip install ." in text and '".[viz]"' in text
    for extra in ("viz", "genai", "cuda", "torch", "bench", "test", "dev"):
        assert f"| `{extra}` |" in text, extra
    assert "A model file is a Python file that defines" in text and "FILE.py:NAME" in text
    kinds = [kind for kind, _ in _readme_blocks()]
    assert kinds.count("python") >= 2 and kinds.count("sh") >= 1


@pytest.mark.parametrize("index", range(len(_readme_blocks())))
def test_readme_block_runs_from_the_repository_root_and_leaves_nothing(index: int) -> None:
    kind, code = _readme_blocks()[index]
    before = set(os.listdir(REPO))
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep
               + os.environ.get("PATH", ""), MPLBACKEND="Agg")
    argv = [sys.executable, "-c", code] if kind == "python" else ["bash", "-e", "-c", code]
    result = subprocess.run(argv, check=False, capture_output=True, text=True, cwd=REPO,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout
    new = set(os.listdir(REPO)) - before
    # nothing new in the repository root (test tools' own caches, e.g. .hypothesis, aside)
    assert {n for n in new if not n.startswith(".")} == set(), new
