"""`attngraph analyze` with --prompt / --inputs / --tokens / --json, and `summary --context`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_cli
from test_analysis import _read, _runs

MODEL_FILE = '''
import attngraph as ag

def build():
    return ag.models.gpt(vocab_size=30, n_positions=16, n_embd=24, n_layer=2, n_head=3)
'''



def test_analyze_prompt_tokens_heat_map(capsys, model_file: str, tmp_path) -> None:
    png = tmp_path / "heat.png"
    code, out, err = run_cli(capsys, "analyze", model_file, "--prompt", "5 17 3 9 2 11",
                         "--tokens", "the cat sat on a mat", "-o", str(png))
    assert code == 0, err
    assert "feeds: input_ids i64[1,6]" in err and "wrote" in err
    assert "h.1.attn" in out and "pattern" in out
    _, colourful, ink = _read(str(png))
    columns = _runs(colourful.any(axis=0))
    assert len(columns) == 3 + 1  # three heads and the colour bar
    rows = _runs(colourful[:, columns[0][0]:columns[0][1]].any(axis=1))
    assert len(rows) == 2  # two layers
    below = ink[rows[-1][1] + 9:rows[-1][1] + 30, columns[0][0]:columns[0][1]]
    assert len(_runs(below.any(axis=0))) == 6  # one label per token


def test_analyze_json_for_machines(capsys, model_file: str) -> None:
    code, out, err = run_cli(capsys, "analyze", model_file, "--prompt", "1,2,3,4,5,6,7", "--json")
    assert code == 0, err
    data = json.loads(out)  # stdout holds the JSON only
    assert [layer["name"] for layer in data["layers"]] == ["h.0.attn", "h.1.attn"]
    head = data["layers"][0]["heads"][0]
    assert head["pattern"] in ("self", "previous", "first", "local", "broad")
    assert set(head["pattern_scores"]) == {"self", "previous", "first", "local", "broad"}
    assert data["layers"][0]["shape"] == [1, 3, 7, 7]
    assert isinstance(data["warnings"], list)


def test_analyze_inputs_file(capsys, model_file: str, tmp_path) -> None:
    feeds = tmp_path / "feeds.npz"
    np.savez(feeds, input_ids=np.array([[3, 1, 4, 1, 5]], np.int64))
    code, out, _ = run_cli(capsys, "analyze", model_file, "--inputs", str(feeds), "--json")
    assert code == 0 and json.loads(out)["layers"][0]["shape"] == [1, 3, 5, 5]


@pytest.mark.parametrize("argv,message", [
    (("--prompt", "5 x"), "token ids separated by spaces"),
    (("--prompt", "5 99"), "token id 99 is outside the vocabulary"),
    (("--prompt", "5 9", "--tokens", "a b c"), "3 labels for 2 positions"),
    (("--prompt", "5", "--inputs", "f.npz"), "not allowed with argument"),
])
def test_analyze_mistakes_exit_2(capsys, model_file: str, argv: tuple, message: str) -> None:
    code, _, err = run_cli(capsys, "analyze", model_file, *argv)
    assert code == 2 and message in err and err.count("\n") <= 2


def test_summary_context_prints_the_cache_total(capsys, model_file: str) -> None:
    code, out, _ = run_cli(capsys, "summary", model_file, "--context", "4096", "--dtype", "float16")
    per_token = 2 * 3 * 8 * 2  # K and V, 3 heads of 8, float16
    assert code == 0 and "kv bytes/token" in out
    assert f"KV cache at context 4,096: {2 * 4096 * per_token:,} bytes" in out
