"""KV-cache decoding: a prompt and 32 cached steps equal recomputing the whole sequence, on the
reference interpreter and on every target; left-padded rows compute what they would alone;
sliding-window caches never outgrow the window."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import attngraph as ag
from attngraph._decode import cache_layers, empty_past, past_names
from attngraph._registry import TARGETS

ATOL = 1e-4
VOCAB, WINDOW, PROMPT, STEPS = 53, 5, 6, 32


def tiny(kind: str) -> ag.Model:
    if kind == "gpt":
        return ag.models.gpt(vocab_size=VOCAB, n_positions=64, n_embd=24, n_layer=2, n_head=3)
    common: dict[str, Any] = {"vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 40,
                              "num_hidden_layers": 2, "num_attention_heads": 4,
                              "num_key_value_heads": 2}
    if kind == "llama":
        return ag.models.llama(**common)
    return ag.models.mistral(**common, sliding_window=WINDOW)


def mixed(softcap: float | None = 5.0, window: int | None = WINDOW - 1,
          causal: bool = False) -> ag.Model:
    """Features the presets do not cover: sinusoidal positions, an int window without
    causal=True next to a global layer (two cache lengths), qk_layernorm, softcap, partial and
    interleaved RoPE, MQA."""
    ids = ag.input("input_ids", ("batch", "seq"), "int64")
    h = ag.positional_encoding(ag.embedding(ids, VOCAB, 32, name="emb"), "sinusoidal")
    h = ag.add(h, ag.multi_head_attention(h, num_heads=4, window=window, causal=causal,
                                          qk_layernorm=True, softcap=softcap, rope=True,
                                          rotary_dim=4, name="local"))
    h = ag.add(h, ag.multi_head_attention(h, num_heads=4, num_kv_heads=1, causal=True,
                                          rope=True, rope_interleaved=True, name="global"))
    return ag.Model(ids, {"logits": ag.dense(ag.layer_norm(h), VOCAB, name="head")})


def tiny_model(kind: str) -> ag.Model:
    return mixed() if kind == "mixed" else tiny(kind)


KINDS = ("gpt", "llama", "mistral")
BACKENDS = ("reference", *TARGETS)
_CACHE: dict[tuple[str, str, bool | None], Any] = {}


def stepper(kind: str, backend: str,
            share_buffer: bool | None = None) -> tuple[ag.Model, dict[str, np.ndarray], Callable]:
    """(model, params, run(feeds) -> outputs) for one cached decoder, built once per module."""
    if (kind, backend, share_buffer) not in _CACHE:
        model = tiny_model(kind)
        params = model.init(seed=3)
        if backend == "reference":
            def run(feeds: dict[str, Any], m: ag.Model = model) -> dict[str, np.ndarray]:
                return m.predict(params, feeds, kv_cache=True)
        else:
            proto = ag.export(model, params, target=backend, kv_cache=True,
                              share_buffer=share_buffer)
            run = ag.Session(proto, ["CPUExecutionProvider"]).run
        _CACHE[(kind, backend, share_buffer)] = (model, params, run)
    return _CACHE[(kind, backend, share_buffer)]


def decode(model: ag.Model, run: Callable, ids: np.ndarray, mask: np.ndarray,
           prompt: int, shared: bool = False) -> tuple[np.ndarray, list[int]]:
    """Feed ids[:, :prompt] as the prompt, then one token per step with the cache; returns
    logits for every position and the cache length after each step. A windowed layer's cache
    keeps its last `window` positions, but in the shared-buffer form, which keeps them all."""
    layers = cache_layers(model)
    feeds = {"input_ids": ids[:, :prompt], "attention_mask": mask[:, :prompt],
             **empty_past(layers, ids.shape[0])}
    logits, lengths = [], []
    for t in range(prompt, ids.shape[1] + 1):
        out = run(feeds)
        logits.append(out["logits"])
        lengths.append(out["present.0.key"].shape[2])
        assert all(out[f"present.{i}.key"].shape[2] == (t if shared else min(x.window or t, t))
                   for i, x in enumerate(layers))
        for i in range(len(layers)):
            for part in ("key", "value"):
                feeds[f"past_key_values.{i}.{part}"] = out[f"present.{i}.{part}"]
        feeds["input_ids"] = ids[:, t:t + 1]
        feeds["attention_mask"] = mask[:, :t + 1]
    return np.concatenate(logits, axis=1), lengths


def close(got: np.ndarray, expected: np.ndarray, what: str) -> None:
    diff = np.abs(got.astype(np.float64) - expected)
    assert diff.max() <= ATOL, f"{what}: max abs error {diff.max():.3e} > {ATOL}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", (*KINDS, "mixed"))
def test_cached_steps_equal_recompute(kind: str, backend: str) -> None:
    model, params, run = stepper(kind, backend)
    ids = np.random.default_rng(0).integers(0, VOCAB, (2, PROMPT + STEPS))
    full = model.predict(params, {"input_ids": ids})["logits"]
    shared = backend == "ort"  # the default there, windowed layers included
    got, lengths = decode(model, run, ids, np.ones_like(ids), PROMPT, shared)
    assert got.shape == full.shape
    close(got, full, f"{kind}/{backend} prompt + {STEPS} cached steps vs recompute")
    expected = [PROMPT + s for s in range(STEPS + 1)]
    if kind in ("mistral", "mixed") and not shared:  # the cache never grows past the window
        expected = [min(n, WINDOW if kind == "mistral" else WINDOW - 1) for n in expected]
    assert lengths == expected


@pytest.mark.parametrize("changes", [{"softcap": None}, {"window": None, "causal": True}])
def test_mixed_features_show_in_the_logits(changes: dict[str, Any]) -> None:
    """The mixed model's softcap and window each move its logits by far more than ATOL, so
    test_cached_steps_equal_recompute fails for a cached lowering that drops either."""
    ids = np.random.default_rng(0).integers(0, VOCAB, (2, PROMPT + STEPS))
    model, params, _ = stepper("mixed", "reference")
    full = model.predict(params, {"input_ids": ids})["logits"]
    without = mixed(**changes).predict(params, {"input_ids": ids})["logits"]
    assert np.abs(without - full).max() > 10 * ATOL, changes


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", (*KINDS, "mixed"))
def test_left_padded_rows_compute_alone(kind: str, backend: str) -> None:
    """The copying form takes left-padded masks as they are (the shared-buffer form wants a
    row's tokens at the front instead: see test_shared_buffer_*)."""
    model, params, run = stepper(kind, backend, share_buffer=False)
    rng = np.random.default_rng(1)
    lengths = (7, 3, 5)
    width, total = max(lengths), max(lengths) + 10
    ids = np.zeros((len(lengths), total), np.int64)
    mask = np.ones((len(lengths), total), np.int64)
    rows = [rng.integers(0, VOCAB, n + 10) for n in lengths]
    for r, (n, row) in enumerate(zip(lengths, rows)):
        ids[r, width - n:] = row
        mask[r, :width - n] = 0
    got, _ = decode(model, run, ids, mask, width)
    for r, (n, row) in enumerate(zip(lengths, rows)):
        alone = model.predict(params, {"input_ids": row[None]})["logits"][0]
        close(got[r, width - n:], alone, f"{kind}/{backend} row {r} (left-padded by {width - n})")
    # padded positions too: their query rows see no key, so attention gives zeros there
    reference = stepper(kind, "reference")[2]
    close(got, decode(model, reference, ids, mask, width)[0], f"{kind}/{backend} padded rows")
    # the padding matters: attending the pads would change row 1
    unmasked, _ = decode(model, reference, ids, np.ones_like(mask), width)
    assert np.abs(unmasked[1, width - 3:] - got[1, width - 3:]).max() > 1e-3


def test_window_changes_the_logits() -> None:
    """The sliding window is a real feature here: without it mistral's late logits differ."""
    mistral, params, _ = stepper("mistral", "reference")
    llama = tiny("llama")
    ids = np.random.default_rng(0).integers(0, VOCAB, (1, PROMPT + STEPS))
    a = mistral.predict(params, {"input_ids": ids})["logits"]
    b = llama.predict(params, {"input_ids": ids})["logits"]
    assert np.abs(a[:, WINDOW:] - b[:, WINDOW:]).max() > 1e-3


def test_learned_positions_follow_the_mask() -> None:
    """gpt's learned positions start at each row's first real token."""
    model, params, run = stepper("gpt", "reference")
    ids = np.array([[0, 0, 7, 8, 9]])
    mask = np.array([[0, 0, 1, 1, 1]])
    layers = cache_layers(model)
    out = run({"input_ids": ids, "attention_mask": mask, **empty_past(layers, 1)})
    alone = model.predict(params, {"input_ids": ids[:, 2:]})["logits"]
    close(out["logits"][:, 2:], alone, "positions")


@pytest.mark.parametrize("target", TARGETS)
def test_one_fused_node_per_layer(target: str) -> None:
    model = tiny("llama")
    proto = ag.export(model, model.init(), target=target, kv_cache=True)
    ops = [n.op_type for n in proto.graph.node]
    fused = {"ort": "GroupQueryAttention", "onnx": "Attention"}
    if target in fused:
        assert ops.count(fused[target]) == 2 and "Softmax" not in ops
        node = next(n for n in proto.graph.node if n.op_type == fused[target])
        assert "past_key_values.0.key" in node.input
    else:
        assert ops.count("Softmax") == 2
    inputs = [i.name for i in proto.graph.input]
    outputs = [o.name for o in proto.graph.output]
    assert inputs == ["input_ids", "attention_mask", "past_key_values.0.key",
                      "past_key_values.0.value", "past_key_values.1.key",
                      "past_key_values.1.value"]
    assert outputs == ["logits", "present.0.key", "present.0.value", "present.1.key",
                       "present.1.value"]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert '"kv_heads":2' in meta["attngraph.kv_cache"]


def test_head_dim_off_the_fused_route_still_decodes() -> None:
    """head_dim 6 does not fit GroupQueryAttention; "ort" falls back to the standard op."""
    model = ag.models.gpt(vocab_size=VOCAB, n_positions=32, n_embd=12, n_layer=1, n_head=2)
    params = model.init(seed=2)
    proto = ag.export(model, params, target="ort", kv_cache=True)
    assert "Attention" in [n.op_type for n in proto.graph.node]
    run = ag.Session(proto, ["CPUExecutionProvider"]).run
    ids = np.random.default_rng(0).integers(0, VOCAB, (2, 9))
    got, _ = decode(model, run, ids, np.ones_like(ids), 4)
    close(got, model.predict(params, {"input_ids": ids})["logits"], "head_dim 6")


def test_float16_cache() -> None:
    """The copying form in float16 (test_shared_buffer_float16 has the shared one)."""
    model, params, _ = stepper("mistral", "reference")
    proto = ag.export(model, params, target="ort", kv_cache=True, dtype="float16",
                      share_buffer=False)
    run = ag.Session(proto, ["CPUExecutionProvider"]).run
    ids = np.random.default_rng(0).integers(0, VOCAB, (2, 14))
    got, lengths = decode(model, run, ids, np.ones_like(ids), 5)
    assert lengths[-1] == WINDOW
    assert run({"input_ids": ids[:, :2], "attention_mask": np.ones((2, 2), np.int64),
                **empty_past(cache_layers(model), 2, np.float16)})["present.1.value"].dtype \
        == np.float16
    full = model.predict(params, {"input_ids": ids})["logits"]
    assert np.abs(got.astype(np.float32) - full).max() < 2e-2


# -- mistakes -----------------------------------------------------------------------------


def test_not_a_decoder_is_refused() -> None:
    bert = ag.models.bert(vocab_size=30, hidden_size=16, num_hidden_layers=1,
                          num_attention_heads=2, intermediate_size=16)
    with pytest.raises(ag.UnsupportedError, match="one int input"):
        ag.export(bert, bert.init(), kv_cache=True)
    ids = ag.input("input_ids", ("batch", "seq"), "int64")
    h = ag.embedding(ids, 30, 16)
    h = ag.multi_head_attention(h, num_heads=2, name="bidirectional")
    model = ag.Model(ids, ag.dense(h, 30))
    with pytest.raises(ag.UnsupportedError, match=r"'bidirectional'.*causal=True.*defined at"):
        ag.export(model, model.init(), kv_cache=True)
    h2 = ag.lstm(ag.embedding(ids, 30, 16), 16, name="rnn")
    h2 = ag.multi_head_attention(h2, num_heads=2, causal=True)
    model2 = ag.Model(ids, ag.dense(h2, 30))
    with pytest.raises(ag.UnsupportedError, match=r"lstm 'rnn'.*mixes sequence positions"):
        model2.predict(model2.init(), {}, kv_cache=True)


def test_mask_length_is_checked() -> None:
    model, _, run = stepper("gpt", "reference")
    layers = cache_layers(model)
    feeds = {"input_ids": np.zeros((1, 3), np.int64),
             "attention_mask": np.ones((1, 4), np.int64), **empty_past(layers, 1)}
    with pytest.raises(ag.FeedError, match=r"covers 4 positions.*must hold every earlier "
                                           r"position = 1, given 0"):
        run(feeds)
    feeds["attention_mask"] = np.full((1, 3), 2)
    with pytest.raises(ag.FeedError, match="0 \\(padding\\) or 1"):
        run(feeds)
    window, _, run_w = stepper("mistral", "reference")
    feeds = {"input_ids": np.zeros((1, 1), np.int64),
             "attention_mask": np.ones((1, 9), np.int64), **empty_past(cache_layers(window), 1)}
    with pytest.raises(ag.FeedError, match=r"min\(window=5, earlier positions\) = 5, given 0"):
        run_w(feeds)


@pytest.mark.parametrize(("backend", "shared"), [(b, b == "ort") for b in BACKENDS]
                         + [("ort", False)])
def test_prompt_in_chunks(backend: str, shared: bool) -> None:
    """Several new tokens after a non-empty cache (chunked prefill); at batch 1, the only batch
    onnxruntime's CPU GroupQueryAttention takes for this. "ort" in both cache forms."""
    model, params, run = stepper("mistral", backend,
                                share_buffer=shared if backend == "ort" else None)
    ids = np.random.default_rng(4).integers(0, VOCAB, (1, 11))
    layers = cache_layers(model)
    feeds: dict[str, Any] = dict(empty_past(layers, 1))
    logits = []
    for start in range(0, 11, 4):
        end = min(start + 4, 11)
        feeds.update(input_ids=ids[:, start:end], attention_mask=np.ones((1, end), np.int64))
        out = run(feeds)
        logits.append(out["logits"])
        assert out["present.0.key"].shape[2] == (end if shared else min(end, WINDOW))
        feeds.update({k.replace("present", "past_key_values"): v for k, v in out.items()
                      if k.startswith("present")})
    close(np.concatenate(logits, 1), model.predict(params, {"input_ids": ids})["logits"],
          f"mistral/{backend} chunked prompt")


# -- the shared past/present buffer ("ort") ---------------------------------------------------


def test_shared_buffer_is_the_default_where_it_fits() -> None:
    """GroupQueryAttention without an S x T bias, windowed layers included; copying form for
    head_dim 6 and the other targets."""
    def shared(model: ag.Model, **kw: Any) -> str:
        proto = ag.export(model, model.init(), kv_cache=True, **kw)
        gqa = [n for n in proto.graph.node if n.op_type == "GroupQueryAttention"]
        if {p.key: p.value for p in proto.metadata_props}["attngraph.share_buffer"] == "true":
            assert gqa and all(len(n.input) == 7 for n in gqa)  # no attention_bias input
            return "shared"
        return "copying"

    assert shared(tiny("llama")) == shared(tiny("gpt")) == "shared"
    assert shared(tiny("mistral")) == shared(mixed()) == "shared"
    assert shared(tiny("mistral"), share_buffer=False) == "copying"
    assert shared(tiny("llama"), target="onnx") == "copying"
    assert shared(tiny("llama"), share_buffer=False) == "copying"
    odd = ag.models.gpt(vocab_size=VOCAB, n_positions=32, n_embd=12, n_layer=1, n_head=2)
    assert shared(odd) == "copying"
    with pytest.raises(ag.UnsupportedError, match=r"'h\.0\.attn'.*head_dim % 8 == 0.*given "
                                                  r"head_dim 6"):
        ag.export(odd, odd.init(), kv_cache=True, share_buffer=True)
    with pytest.raises(ag.UnsupportedError, match="needs target 'ort'"):
        ag.export(tiny("llama"), tiny("llama").init(), kv_cache=True, target="onnx",
                  share_buffer=True)


@pytest.mark.parametrize("kind", KINDS)
def test_shared_buffer_rows_at_the_front_compute_alone(kind: str) -> None:
    """The shared form's convention fed directly: each row's tokens at the front of the
    prompt (right padding), then one token per step with the mask growing by a column of
    ones; a past longer than needed (a preallocated buffer) is read only where the row has
    tokens."""
    model, params, run = stepper(kind, "ort", share_buffer=True)
    layers = cache_layers(model)
    rng = np.random.default_rng(5)
    lengths, steps, room = (6, 2, 4), 9, 20
    width = max(lengths)
    rows = [rng.integers(0, VOCAB, n + steps) for n in lengths]
    ids = np.zeros((3, width), np.int64)
    for r, (n, row) in enumerate(zip(lengths, rows)):
        ids[r, :n] = row[:n]
    mask = (np.arange(width)[None] < np.array(lengths)[:, None]).astype(np.int64)
    feeds = {"input_ids": ids, "attention_mask": mask}
    for i, x in enumerate(cache_layers(model)):
        for name in past_names(i):
            feeds[name] = np.zeros((3, x.kv_heads, room, x.head_dim), np.float32)
    got: list[list[np.ndarray]] = [[] for _ in lengths]
    for step in range(steps + 1):
        out = run(feeds)
        assert all(out[f"present.{i}.key"].shape[2] == room for i in range(len(layers)))
        for r, n in enumerate(lengths):
            got[r].append(out["logits"][r, :n] if step == 0 else out["logits"][r])
        if step == steps:
            break
        feeds.update({k.replace("present", "past_key_values"): v for k, v in out.items()
                      if k.startswith("present")})
        feeds["input_ids"] = np.array([[row[n + step]] for n, row in zip(lengths, rows)])
        feeds["attention_mask"] = np.concatenate([feeds["attention_mask"],
                                                  np.ones((3, 1), np.int64)], axis=1)
    for r, row in enumerate(rows):
        alone = model.predict(params, {"input_ids": row[None]})["logits"][0]
        close(np.concatenate(got[r]), alone, f"{kind} shared buffer row {r}")


def test_shared_buffer_refuses_a_left_padded_prompt() -> None:
    """Fed directly, the shared form wants each row's tokens first; a left-padded prompt would
    be miscomputed, so Session.run refuses it and names the fix. The copying form takes it."""
    model, params, run = stepper("mistral", "ort", share_buffer=True)
    ids = np.random.default_rng(6).integers(0, VOCAB, (2, 5))
    left = np.ones((2, 5), np.int64)
    left[1, :2] = 0
    feeds = {"input_ids": ids, "attention_mask": left, **empty_past(cache_layers(model), 2)}
    with pytest.raises(ag.FeedError, match=r"row 1 has padding before a token \(\[0, 0, 1, 1, "
                                           r"1\]\).*share_buffer=False"):
        run(feeds)
    run({**feeds, "attention_mask": left[:, ::-1].copy()})  # right padding: accepted
    copying = stepper("mistral", "ort", share_buffer=False)[2]
    got = copying(feeds)["logits"][1, 2:]
    close(got, model.predict(params, {"input_ids": ids[1:, 2:]})["logits"][0], "left padding")


@pytest.mark.parametrize("kind", KINDS)
def test_generate_updates_one_buffer_in_place(kind: str) -> None:
    """ag.generate on a shared-buffer export: a left-padded batch gives the reference's
    logits at every step, and the keys land in the one buffer bound before the prompt (a
    kernel that wrote a fresh present would leave it zero)."""
    from attngraph.generation import _backend

    model, params, _ = stepper(kind, "reference")
    session = ag.Session(ag.export(model, params, kv_cache=True, share_buffer=True),
                         ["CPUExecutionProvider"])
    lengths, steps = (7, 3, 5), 12
    width = max(lengths)
    rng = np.random.default_rng(6)
    ids = rng.integers(0, VOCAB, (3, width))
    mask = (np.arange(width)[None] >= width - np.array(lengths)[:, None]).astype(np.int64)
    ours, ref = _backend(session, None), _backend(model, params)
    ours.reserve(width + steps)
    buffers = None
    for step in range(steps):
        if step == 0:
            a, b = ours.start(ids, mask), ref.start(ids, mask)
            buffers = dict(ours.buffers)
        else:
            token = a.argmax(-1)[:, None]
            mask = np.concatenate([mask, np.ones((3, 1), np.int64)], axis=1)
            a, b = ours.step(token, mask), ref.step(token, mask)
        close(a, b, f"{kind} generate step {step}")
        assert ours.buffers == buffers  # the same OrtValues, never replaced
    for name in ours.past_inputs:
        held = ours.buffers[name].numpy()  # (B, Hkv, width + steps, D)
        assert held.shape[2] == width + steps
        for r, n in enumerate(lengths):
            # the row's last positions (all of them, or the reference's window-trimmed cache)
            last = min(n + steps - 1, ref.past[name].shape[2])
            np.testing.assert_allclose(held[r, :, n + steps - 1 - last:n + steps - 1],
                                       ref.past[name][r, :, -last:], atol=ATOL)


def test_steady_run_reports_failures_as_ours() -> None:
    """Session.steady, the binding ag.generate keeps for one-token steps: a step onnxruntime
    refuses (token ids of the wrong type) raises RuntimeFailure naming the call, not
    onnxruntime's error; a good step writes the preallocated logits in place."""
    model, params, _ = stepper("llama", "reference")
    session = ag.Session(ag.export(model, params, kv_cache=True), ["CPUExecutionProvider"])
    buffers = {name: session.buffer((1, t.shape[1], 4, t.shape[3]), t.dtype)
               for name, t in session.inputs.items() if name.startswith("past_key_values.")}
    alias = {name: name.replace("past_key_values.", "present.") for name in buffers}
    logits = np.zeros((1, 1, VOCAB), np.float32)
    run = session.steady(buffers, alias, {"logits": logits})
    run({"input_ids": np.array([[3]]), "attention_mask": np.ones((1, 1), np.int64)})
    want = model.predict(params, {"input_ids": np.array([[3]])})["logits"]
    np.testing.assert_allclose(logits, want, atol=ATOL)
    with pytest.raises(ag.RuntimeFailure, match="Session.steady"):
        run({"input_ids": np.array([[3.0]]), "attention_mask": np.ones((1, 2), np.int64)})


def test_a_buffer_too_big_is_our_error() -> None:
    session = ag.Session(ag.export(tiny("llama"), tiny("llama").init(), kv_cache=True))
    with pytest.raises(ag.RuntimeFailure, match=r"cannot allocate a \[1, 2, 1099511627776, 16\] "
                                                r"float32 buffer \(1.31e\+05 GiB\) on cpu: "
                                                r"Unable to allocate.*fewer"):
        session.buffer((1, 2, 2**40, 16), "float32")


def test_shared_buffer_float16() -> None:
    """A float16 shared-buffer export: float16 buffers, logits near the float32 reference."""
    from attngraph.generation import _backend

    model, params, _ = stepper("llama", "reference")
    proto = ag.export(model, params, kv_cache=True, dtype="float16")
    session = ag.Session(proto, ["CPUExecutionProvider"])
    assert session.metadata["attngraph.share_buffer"] == "true"
    ids = np.random.default_rng(9).integers(0, VOCAB, (2, 6))
    mask = np.array([[0, 0, 1, 1, 1, 1], [1] * 6])
    ours, ref = _backend(session, None), _backend(model, params)
    ours.reserve(10)
    a, b = ours.start(ids, mask), ref.start(ids, mask)
    assert ours.buffers["past_key_values.0.key"].numpy().dtype == np.float16
    for _ in range(3):
        assert np.abs(a - b).max() < 2e-2
        mask = np.concatenate([mask, np.ones((2, 1), np.int64)], axis=1)
        token = b.argmax(-1)[:, None]
        a, b = ours.step(token, mask), ref.step(token, mask)
