"""`ag.generate`: greedy tokens from onnxruntime equal the reference interpreter's (with left
padding), sampling options, stopping, streaming, the cache staying bound, the CLI."""

from __future__ import annotations

import numpy as np
import pytest
from test_kv_cache import KINDS, VOCAB, stepper

import attngraph as ag
from attngraph._registry import TARGETS
from attngraph.cli import main
from attngraph.generation import _Cached, _pick

NEW = 32


def padded_batch() -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(5)
    prompts = [rng.integers(0, VOCAB, n) for n in (6, 2, 4)]
    ids = np.zeros((3, 6), np.int64)
    mask = np.zeros((3, 6), np.int64)
    for r, p in enumerate(prompts):
        ids[r, 6 - len(p):] = p
        mask[r, 6 - len(p):] = 1
    return ids, mask, prompts


_SESSIONS: dict[tuple[str, str], ag.Session] = {}


def session(kind: str, target: str) -> ag.Session:
    if (kind, target) not in _SESSIONS:
        model, params, _ = stepper(kind, "reference")
        _SESSIONS[(kind, target)] = ag.Session(
            ag.export(model, params, target=target, kv_cache=True), ["CPUExecutionProvider"])
    return _SESSIONS[(kind, target)]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("kind", KINDS)
def test_greedy_tokens_equal_reference(kind: str, target: str) -> None:
    model, params, _ = stepper(kind, "reference")
    ids, mask, prompts = padded_batch()
    expected = ag.generate(model, ids, NEW, params=params, attention_mask=mask)
    got = ag.generate(session(kind, target), ids, NEW, attention_mask=mask)
    assert got.shape == (3, 6 + NEW)
    np.testing.assert_array_equal(got, expected)
    # each left-padded row generates what the prompt alone generates
    for r, prompt in enumerate(prompts):
        alone = ag.generate(model, prompt, NEW, params=params)
        np.testing.assert_array_equal(got[r, 6:], alone[0, len(prompt):])


def test_without_cache_recomputes_the_same_tokens() -> None:
    model, params, _ = stepper("llama", "reference")
    plain = ag.Session(ag.export(model, params), ["CPUExecutionProvider"])
    prompt = np.array([[3, 1, 4, 1, 5]])
    np.testing.assert_array_equal(ag.generate(plain, prompt, 12),
                                  ag.generate(session("llama", "ort"), prompt, 12))
    with pytest.raises(ag.FeedError, match="no cache and no attention_mask"):
        ag.generate(plain, [[0, 3, 1]], 4, attention_mask=[[0, 1, 1]])


def test_cache_stays_bound_between_steps() -> None:
    backend = _Cached(session("gpt", "ort"))
    backend.start(np.array([[1, 2, 3]]), np.ones((1, 3), np.int64))
    backend.step(np.array([[4]]), np.ones((1, 4), np.int64))
    values = list(backend.past.values())
    assert len(values) == 4 and not any(isinstance(v, np.ndarray) for v in values)
    assert values[0].shape() == [1, 3, 4, 8]  # OrtValue: [batch, kv_heads, past, head_dim]


def test_sampling_is_seeded_and_restricted() -> None:
    model, params, _ = stepper("gpt", "reference")
    sess = session("gpt", "ort")
    prompt = np.array([[1, 2, 3]])
    a = ag.generate(sess, prompt, 16, temperature=0.9, seed=7)
    assert (a == ag.generate(sess, prompt, 16, temperature=0.9, seed=7)).all()
    assert (a == ag.generate(model, prompt, 16, params=params, temperature=0.9, seed=7)).all()
    greedy = ag.generate(sess, prompt, 16)
    assert not (a == greedy).all()
    assert (ag.generate(sess, prompt, 16, temperature=1.5, top_k=1, seed=1) == greedy).all()
    assert (ag.generate(sess, prompt, 16, temperature=1.5, top_p=1e-6, seed=1) == greedy).all()


def test_pick_top_k_top_p_and_temperature() -> None:
    rng = np.random.default_rng(0)
    probs = np.array([0.4, 0.3, 0.2, 0.1])
    logits = np.log(np.tile(probs, (4000, 1)))
    counts = np.bincount(_pick(logits, 1.0, None, None, rng), minlength=4) / 4000
    assert np.abs(counts - probs).max() < 0.03
    assert set(_pick(logits, 1.0, 2, None, rng)) == {0, 1}
    # top_p 0.6: 0.4 alone is short of it, 0.4 + 0.3 reaches it
    assert set(_pick(logits, 1.0, None, 0.6, rng)) == {0, 1}
    sharp = np.bincount(_pick(logits, 0.25, None, None, rng), minlength=4) / 4000
    assert sharp[0] > 0.6  # low temperature concentrates on the most likely token
    assert (_pick(logits[:3], 0.0, None, None, rng) == 0).all()


def test_eos_stops_rows_and_pads() -> None:
    sess = session("gpt", "ort")
    ids, mask, _ = padded_batch()
    free = ag.generate(sess, ids, 8, attention_mask=mask)
    eos = int(free[0, 6 + 2])  # row 0's third new token
    out = ag.generate(sess, ids, 8, attention_mask=mask, eos_token_id=eos, pad_token_id=VOCAB)
    for r in range(3):
        row, ref = out[r, 6:], free[r, 6:]
        stop = next((i for i, t in enumerate(ref) if t == eos), None)
        if stop is None:
            np.testing.assert_array_equal(row, ref[:len(row)])
        else:
            np.testing.assert_array_equal(row[:stop + 1], ref[:stop + 1])
            assert (row[stop + 1:] == VOCAB).all()
    single = ag.generate(sess, ids[:1], 8, attention_mask=mask[:1], eos_token_id=eos)
    first = list(free[0, 6:]).index(eos)
    assert single.shape == (1, 6 + first + 1)  # ends when every row has stopped


def test_stream_yields_each_step() -> None:
    sess = session("llama", "ort")
    ids, mask, _ = padded_batch()
    steps = list(ag.generate_stream(sess, ids, 5, attention_mask=mask))
    assert len(steps) == 5 and all(s.shape == (3,) for s in steps)
    np.testing.assert_array_equal(np.stack(steps, 1),
                                  ag.generate(sess, ids, 5, attention_mask=mask)[:, 6:])


def test_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    ag.generate(session("gpt", "ort"), [[1, 2]], 4, progress=True)
    assert "generate" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs, error, pattern", [
    ({"temperature": -1.0}, ag.ConfigError, "temperature must be"),
    ({"top_k": 0}, ag.ConfigError, "top_k"),
    ({"top_p": 1.5}, ag.ConfigError, r"top_p must lie in \(0, 1\]"),
    ({"attention_mask": [[1, 1, 0]]}, ag.FeedError, "not left-padded"),
    ({"attention_mask": [[1, 1]]}, ag.FeedError, "prompt's shape"),
    ({"temperature": float("nan")}, ag.ConfigError, "finite number"),
    ({"pad_token_id": "x"}, ag.ConfigError, "pad_token_id must be an int"),
    ({"eos_token_id": 3.0}, ag.ConfigError, "eos_token_id must be an int"),
    ({"seed": -1}, ag.ConfigError, "seed must be an int >= 0"),
    ({"max_new_tokens": 63}, ag.ConfigError, r"needs position 64.*max_len=64"),
])
def test_bad_options(kwargs: dict, error: type, pattern: str) -> None:
    args = {"max_new_tokens": 4, **kwargs}
    with pytest.raises(error, match=pattern):
        ag.generate(session("gpt", "ort"), [[1, 2, 3]], **args)


@pytest.mark.parametrize("prompt, pattern", [
    (np.zeros((0, 3), np.int64), "batch, seq >= 1"),
    ([[1, 2, 3], [4]], "rectangular"),
    ([[-2, 1]], "token ids >= 0"),
])
def test_bad_prompts(prompt: object, pattern: str) -> None:
    with pytest.raises(ag.FeedError, match=pattern):
        ag.generate(session("gpt", "ort"), prompt, 2)


def test_one_dimensional_prompt_and_mask() -> None:
    sess = session("gpt", "ort")
    np.testing.assert_array_equal(ag.generate(sess, [0, 1, 2], 3, attention_mask=[0, 1, 1]),
                                  ag.generate(sess, [[0, 1, 2]], 3, attention_mask=[[0, 1, 1]]))


def test_models_that_cannot_generate_are_refused() -> None:
    ids = ag.input("input_ids", ("batch", "seq"), "int64")
    h = ag.multi_head_attention(ag.embedding(ids, 30, 16), num_heads=2, name="both_ways")
    lm = ag.Model(ids, {"logits": ag.dense(h, 30)})
    plain = ag.Session(ag.export(lm, lm.init()), ["CPUExecutionProvider"])
    with pytest.raises(ag.UnsupportedError, match="both_ways"):
        ag.generate(plain, [[1, 2]], 2)
    classifier = ag.Model(ids, {"cls": ag.dense(ag.mean_pool(h), 5)})
    with pytest.raises(ag.ConfigError, match=r"logits \[batch, seq, vocab\]"):
        ag.generate(ag.Session(ag.export(classifier, classifier.init())), [[1, 2]], 2)


def test_model_needs_params() -> None:
    model, _, _ = stepper("gpt", "reference")
    with pytest.raises(ag.ConfigError, match="needs params"):
        ag.generate(model, [[1, 2]], 2)
    with pytest.raises(ag.FeedError, match="prompt_ids must be int"):
        ag.generate(model, [[1.5, 2.0]], 2)


def test_cli_generate(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "tiny.py"
    spec.write_text("import attngraph as ag\n\ndef build():\n    return ag.models.gpt("
                    "vocab_size=40, n_positions=32, n_embd=16, n_layer=1, n_head=2)\n")
    out = tmp_path / "decoder.onnx"
    assert main(["export", str(spec), "-o", str(out), "--kv-cache"]) == 0
    capsys.readouterr()
    assert main(["generate", str(out), "--prompt", "1 2 3", "-n", "6"]) == 0
    streamed = capsys.readouterr()
    assert main(["generate", f"{spec}:build", "--target", "reference", "--prompt", "1,2,3",
                 "--prompt", "4", "-n", "6"]) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    tokens = streamed.out.split("|")[1].split()
    assert len(tokens) == 6 and rows[0].split() == ["1", "2", "3", *tokens]
    assert len(rows[1].split()) == 7 and "tok/s" in streamed.err
    assert main(["generate", str(out), "--prompt", "1 x"]) == 2
    assert "--prompt expects token ids" in capsys.readouterr().err
