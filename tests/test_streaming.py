"""Streaming (DESIGN §9): a 200-frame sequence fed in chunks of 1, 3, 7 and mixed sizes gives,
at every chunk end, what `model.predict` gives on the whole prefix, on the reference step and on
every target; reset, bounded state, batch rows, fp16, refusals naming the layer, and the
last-query evaluation of ordinary exports."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import attngraph as ag
from attngraph._registry import TARGETS

FRAMES = 200
ATOL = 1e-4
BACKENDS = ("reference", *TARGETS)


def _mixed_sizes() -> list[int]:
    sizes, rng = [], np.random.default_rng(11)
    while sum(sizes) < FRAMES:
        sizes.append(int(rng.integers(1, 10)))
    sizes[-1] -= sum(sizes) - FRAMES
    return sizes


CHUNKS: dict[str, list[int]] = {
    "1": [1] * FRAMES,
    "3": [3] * (FRAMES // 3) + [FRAMES % 3],
    "7": [7] * (FRAMES // 7) + [FRAMES % 7],
    "mixed": _mixed_sizes(),
}


def causal_rope_gqa() -> ag.Model:
    """Float frames -> two pre-norm causal blocks with RoPE and grouped kv heads."""
    x = ag.input("x", ("batch", "seq", 7))
    h = ag.dense(x, 24, name="proj")
    for i in range(2):
        h = ag.transformer_block(h, num_heads=4, num_kv_heads=2, ffn_dim=20, causal=True,
                                 rope=True, norm="rms", name=f"blk{i}")
    return ag.Model(x, {"y": ag.dense(h, 5, name="head")}, name="rope_gqa")


def windowed_and_global() -> ag.Model:
    """A sliding window (qk_layernorm, softcap), a GRU stack, a global causal layer with partial
    RoPE and a (3, 0) band; learned positions; a sequence and a last-frame output."""
    x = ag.input("x", ("batch", "seq", 5))
    h = ag.positional_encoding(ag.dense(x, 16, name="proj"), "learned", max_len=256,
                               name="pos")
    h = ag.add(h, ag.multi_head_attention(h, num_heads=2, window=4, qk_layernorm=True,
                                          softcap=4.0, name="local"))
    h = ag.gru(h, 16, num_layers=2, name="gru")
    h = ag.add(h, ag.multi_head_attention(h, num_heads=2, head_dim=8, causal=True, rope=True,
                                          rotary_dim=4, name="global"))
    h = ag.add(h, ag.multi_head_attention(h, num_heads=2, window=(3, 0), name="band"))
    return ag.Model(x, {"y": ag.dense(h, 3, name="head"), "last": ag.last_timestep(h)},
                    name="mixed")


def tiny_sliding_window(window: int = 5) -> ag.Model:
    return ag.models.sliding_window(embed_dim=6, window_size=window, num_heads=2, head_dim=8,
                                    num_layers=2, ffn_dim=12)


MODELS: dict[str, Callable[[], ag.Model]] = {
    "sliding_window": tiny_sliding_window,
    "hybrid": lambda: ag.models.hybrid(embed_dim=5, lstm_hidden=7, num_heads=2, head_dim=8),
    "hybrid_w6": lambda: ag.models.hybrid(embed_dim=5, lstm_hidden=7, num_heads=2, head_dim=8,
                                          window_size=6),
    "hybrid_mlp": lambda: ag.models.hybrid_mlp(embed_dim=5, lstm_hidden=7, num_heads=3,
                                               head_dim=5, mlp_sizes=(9, 4)),
    "hybrid_mlp_w4": lambda: ag.models.hybrid_mlp(embed_dim=5, lstm_hidden=7, num_heads=3,
                                                  head_dim=5, mlp_sizes=(9, 4), window_size=4),
    "rope_gqa": causal_rope_gqa,
    "mixed": windowed_and_global,
}
_BUILT: dict[Any, Any] = {}


def built(name: str) -> tuple[ag.Model, dict[str, np.ndarray], np.ndarray, list[dict]]:
    """(model, params, frames (2, FRAMES, F), predict on every prefix), once per module."""
    if name not in _BUILT:
        model = MODELS[name]()
        params = model.init(seed=3)
        (key, value), = model.inputs.items()
        x = np.random.default_rng(5).standard_normal((2, FRAMES, value.shape[2]))
        x = x.astype(np.float32)
        prefix = [model.predict(params, {key: x[:, :t]}) for t in range(1, FRAMES + 1)]
        _BUILT[name] = (model, params, x, prefix)
    return _BUILT[name]


def stream_of(name: str, backend: str, dtype: str = "float32") -> ag.Stream:
    model, params = built(name)[:2]
    if backend == "reference":
        return ag.Stream(model, params)
    if (name, backend, dtype) not in _BUILT:
        proto = ag.export(model, params, target=backend, dtype=dtype, streaming=True)
        _BUILT[(name, backend, dtype)] = ag.Session(proto, ["CPUExecutionProvider"])
    return ag.Stream(_BUILT[(name, backend, dtype)])


def feed(stream: ag.Stream, key: str, x: np.ndarray, sizes: list[int]) -> list[dict]:
    outs, t = [], 0
    for size in sizes:
        outs.append(stream.step({key: x[:, t:t + size]}))
        t += size
    return outs


def check_chunks(name: str, outs: list[dict], sizes: list[int], atol: float) -> None:
    prefix = built(name)[3]
    t = 0
    for size, got in zip(sizes, outs):
        t += size
        for out, want in prefix[t - 1].items():
            want = want[:, -size:] if want.ndim == 3 else want  # the chunk's frames
            diff = float(np.abs(got[out].astype(np.float64) - want).max())
            assert got[out].shape == want.shape and diff <= atol, (
                f"{name}/{out}: chunk ending at frame {t} (size {size}): shape "
                f"{got[out].shape} vs {want.shape}, max abs error {diff:.2e} > {atol:.0e}")


@pytest.mark.parametrize("chunks", list(CHUNKS))
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(MODELS))
def test_chunks_equal_predict_on_every_prefix(name: str, backend: str, chunks: str) -> None:
    model, _, x, _ = built(name)
    sizes = CHUNKS[chunks]
    check_chunks(name, feed(stream_of(name, backend), next(iter(model.inputs)), x, sizes),
                 sizes, ATOL)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", ["sliding_window", "rope_gqa"])
def test_float16_step_models(name: str, target: str) -> None:
    model, _, x, _ = built(name)
    sizes = CHUNKS["mixed"][:30]
    outs = feed(stream_of(name, target, "float16"), next(iter(model.inputs)), x, sizes)
    assert all(v.dtype == np.float16 for o in outs for v in o.values())
    check_chunks(name, outs, sizes, 2e-2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_reset_reproduces_a_fresh_stream(backend: str) -> None:
    _model, _, x, _ = built("mixed")
    stream, sizes = stream_of("mixed", backend), CHUNKS["mixed"][:12]
    first = feed(stream, "x", x, sizes)
    assert stream.frames == sum(sizes) and stream.state_bytes > 0
    stream.reset()
    assert stream.frames == 0 and stream.state_bytes == 0
    again = feed(stream, "x", x, sizes)
    fresh = feed(stream_of("mixed", backend), "x", x, sizes)
    for a, b, c in zip(first, again, fresh):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
            np.testing.assert_array_equal(b[k], c[k])


@pytest.mark.parametrize("backend", BACKENDS)
def test_windowed_state_stays_bounded(backend: str) -> None:
    """Windowed layers only: the state after 10,000 frames is the state after W frames; an
    unwindowed cache grows."""
    window, dim = 3, 4
    model = ag.models.sliding_window(embed_dim=dim, window_size=window, num_heads=1,
                                     head_dim=8, num_layers=2, ffn_dim=4)
    params = model.init(seed=0)
    if backend == "reference":
        stream = ag.Stream(model, params)
    else:
        stream = ag.Stream(ag.Session(ag.export(model, params, target=backend, streaming=True),
                                      ["CPUExecutionProvider"]))
    frames = np.random.default_rng(0).standard_normal((1, 500, dim)).astype(np.float32)
    stream.step({"input": frames[:, :window]})
    at_window = stream.state_bytes
    for _ in range(20):
        stream.step({"input": frames})
    assert stream.frames == 10_000 + window
    assert stream.state_bytes == at_window
    growing = stream_of("hybrid", backend)
    x = built("hybrid")[2]
    growing.step({"input": x[:, :4]})
    small = growing.state_bytes
    growing.step({"input": x[:, 4:20]})
    assert growing.state_bytes > small


@pytest.mark.parametrize("target", TARGETS)
def test_steady_state_turns_stay_exact(target: str) -> None:
    """Once a windowed model's state keeps its shapes, onnxruntime steps take turns between two
    preallocated state sets (`_Bound._steady_step`); a new chunk length leaves that form and a
    later run of equal chunks takes it again, exact throughout. A growing cache never does."""
    sizes = [1] * 12 + [3] * 4 + [1] * 10 + [2, 2, 2]
    stream = stream_of("sliding_window", target)
    x = built("sliding_window")[2]
    outs, t, turns = [], 0, []
    for size in sizes:
        outs.append(stream.step({"input": x[:, t:t + size]}))
        # the binding objects themselves (held, so that no id is reused)
        turns.append(sorted((binding for binding, _ in stream._backend.turns), key=id))
        t += size
    check_chunks("sliding_window", outs, sizes, ATOL)
    assert not turns[3] and turns[5]  # settled once the window of 5 was full
    assert turns[11] == turns[5]  # the same two bindings, turn about
    assert turns[12] and turns[12] != turns[11]  # chunks of 3: the general form, settled anew
    assert turns[-1] and turns[-1] != turns[-4]  # and again for chunks of 2
    growing = stream_of("hybrid", target)
    for u in range(12):
        growing.step({"input": built("hybrid")[2][:, u:u + 1]})
        assert not growing._backend.turns


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_rows_equal_rows_streamed_alone(backend: str) -> None:
    _model, _, x, _ = built("rope_gqa")
    x3 = np.concatenate([x, x[:1, ::-1]], axis=0)[:, :40]  # 3 rows
    sizes = [1, 4, 2, 7, 3, 1, 9, 5, 8]
    together = feed(stream_of("rope_gqa", backend), "x", x3, sizes)
    for row in range(3):
        alone = feed(stream_of("rope_gqa", backend), "x", x3[row:row + 1], sizes)
        for t, a in zip(together, alone):
            np.testing.assert_allclose(t["y"][row:row + 1], a["y"], atol=1e-5)


def test_state_inputs_and_outputs_are_named_after_layers() -> None:
    model, params = built("mixed")[:2]
    proto = ag.export(model, params, target="ort", streaming=True)
    ins = [i.name for i in proto.graph.input]
    outs = [o.name for o in proto.graph.output]
    assert ins == ["x", "state.frames", "state.local.key", "state.local.value", "state.gru.h",
                   "state.global.key", "state.global.value", "state.band.key",
                   "state.band.value"]
    assert outs == ["y", "last"] + ["new_state." + n[len("state."):] for n in ins[1:]]
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
            for i in proto.graph.input}
    assert dims["x"] == ["batch", "chunk", 5]
    assert dims["state.local.key"] == ["batch", 2, "past_w4", 8]
    assert dims["state.global.key"] == ["batch", 2, "past", 8]
    assert dims["state.band.key"] == ["batch", 2, "past_w4", 8]  # (3, 0): 4 positions
    assert dims["state.gru.h"] == [2, "batch", 16]


def looking_ahead() -> dict[str, tuple[ag.Model, str]]:
    """Models that cannot stream, with the layer each refusal must name."""
    x = ag.input("x", ("batch", "seq", 8))
    bidir = ag.multi_head_attention(x, num_heads=2, name="bidir")
    band = ag.multi_head_attention(x, num_heads=2, window=(2, 1), name="ahead")
    pooled = ag.mean_pool(ag.dense(x, 4, name="d"), name="pool")
    first = ag.timestep(ag.dense(x, 4, name="d2"), 0, name="cls")
    return {
        "bidirectional": (ag.Model(x, {"y": bidir}), "bidir"),
        "bidirectional, later positions used": (
            ag.Model(x, {"y": ag.last_timestep(ag.add(bidir, ag.multi_head_attention(
                bidir, num_heads=2, causal=True, name="after")))}), "bidir"),
        "window looking ahead": (ag.Model(x, {"y": band}), "ahead"),
        "mean_pool": (ag.Model(x, {"y": pooled}), "pool"),
        "fixed timestep": (ag.Model(x, {"y": first}), "cls"),
    }


def test_a_fixed_sequence_length_is_refused() -> None:
    model = ag.models.sliding_window(embed_dim=6, window_size=3, num_heads=2, head_dim=4,
                                     num_layers=1, ffn_dim=5, seq_len=12)
    with pytest.raises(ag.UnsupportedError, match="input 'input'.*symbolic seq dim.*"
                                                  "test_streaming.py"):
        ag.export(model, model.init(), streaming=True)


@pytest.mark.parametrize("case", list(looking_ahead()))
def test_models_that_look_ahead_are_refused_naming_the_layer(case: str) -> None:
    model, layer = looking_ahead()[case]
    params = model.init(seed=0)
    for target in TARGETS:
        with pytest.raises(ag.UnsupportedError, match=f"'{layer}'.*streaming"):
            ag.export(model, params, target=target, streaming=True)
    with pytest.raises(ag.UnsupportedError, match=f"'{layer}'.*Stream"):
        ag.Stream(model, params)


def test_stream_checks_its_arguments_and_feeds(tmp_path: Any) -> None:
    model, params, x, _ = built("mixed")
    with pytest.raises(ag.ConfigError, match="params"):
        ag.Stream(model)
    plain = tmp_path / "plain.onnx"
    ag.export(model, params, plain)
    with pytest.raises(ag.ConfigError, match="streaming=True"):
        ag.Stream(str(plain))
    for backend in ("reference", "ort"):
        stream = stream_of("mixed", backend)
        with pytest.raises(ag.FeedError, match="'chunk' = 0"):
            stream.step({"x": x[:, :0]})
        stream.step({"x": x[:, :2]})
        with pytest.raises(ag.FeedError, match="'chunk' = 0"):  # after a chunk: the same
            stream.step({"x": x[:, :0]})
        with pytest.raises(ag.FeedError, match="reset"):
            stream.step({"x": x[:1, 2:3]})
        with pytest.raises(ag.FeedError, match="missing"):
            stream.step({"frames": x[:, 2:3]})
        stream.reset()
        stream.step({"x": np.zeros((2, 250, 5), np.float32)})
        with pytest.raises(ag.FeedError, match="'pos'.*max_len=256"):
            stream.step({"x": x[:, :7]})


@pytest.mark.parametrize("target", TARGETS)
def test_last_query_exports_match_the_reference(target: str) -> None:
    """hybrid's attention is read only at the last frame: the export evaluates that query
    alone (no [S, S] scores), and matches the full reference."""
    for name in ("hybrid", "hybrid_mlp_w4"):
        model, params, x, prefix = built(name)
        proto = ag.export(model, params, target=target)
        assert any(n.name == "attn/last_query" for n in proto.graph.node)
        got = ag.Session(proto, ["CPUExecutionProvider"]).run({"input": x[:, :37]})
        np.testing.assert_allclose(got["output"], prefix[36]["output"], atol=ATOL)
    model, params, x, prefix = built("mixed")  # "band" feeds both outputs: every query
    proto = ag.export(model, params, target=target)
    assert not any(n.name.startswith("band/last_query") for n in proto.graph.node)
    got = ag.Session(proto, ["CPUExecutionProvider"]).run({"x": x[:, :23]})
    for key in ("y", "last"):
        np.testing.assert_allclose(got[key], prefix[22][key], atol=ATOL)


@pytest.mark.parametrize("target", TARGETS)
def test_last_query_with_rope_and_a_window(target: str) -> None:
    """A bidirectional RoPE layer and a (2, 3) band read only at the last frame: exact."""
    x = ag.input("x", ("batch", "seq", 16))
    bidir = ag.multi_head_attention(x, num_heads=2, rope=True, num_kv_heads=1, name="bidir")
    band = ag.multi_head_attention(x, num_heads=2, window=(2, 3), name="band")
    model = ag.Model(x, ag.dense(ag.last_timestep(ag.add(bidir, band)), 3, name="out"))
    params = model.init(seed=2)
    frames = np.random.default_rng(1).standard_normal((2, 11, 16)).astype(np.float32)
    proto = ag.export(model, params, target=target)
    assert sum(n.name.endswith("/last_query") for n in proto.graph.node) == 2
    got = ag.Session(proto, ["CPUExecutionProvider"]).run({"x": frames})
    np.testing.assert_allclose(got["output"], model.predict(params, {"x": frames})["output"],
                               atol=ATOL)
    stream = ag.Stream(ag.Session(ag.export(model, params, target=target, streaming=True),
                                  ["CPUExecutionProvider"]))
    for t, size in ((3, 3), (4, 1), (11, 7)):
        got = stream.step({"x": frames[:, t - size:t]})["output"]
        np.testing.assert_allclose(got, model.predict(params, {"x": frames[:, :t]})["output"],
                                   atol=ATOL)


@pytest.mark.parametrize("target", TARGETS)
def test_value_dim_streams(target: str) -> None:
    """Value heads narrower than key heads: the value cache has its own width."""
    x = ag.input("x", ("batch", "seq", 12))
    y = ag.multi_head_attention(x, num_heads=2, head_dim=8, value_dim=5, window=3, name="att")
    model = ag.Model(x, {"y": y, "last": ag.last_timestep(ag.multi_head_attention(
        x, num_heads=2, head_dim=8, value_dim=3, name="lastq"))})
    params = model.init(seed=4)
    frames = np.random.default_rng(2).standard_normal((2, 9, 12)).astype(np.float32)
    proto = ag.export(model, params, target=target, streaming=True)
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
            for i in proto.graph.input}
    assert dims["state.att.value"] == ["batch", 2, "past_w3", 5]
    assert dims["state.lastq.value"] == ["batch", 2, "past", 3]
    stream = ag.Stream(ag.Session(proto, ["CPUExecutionProvider"]))
    for t, size in ((2, 2), (3, 1), (9, 6)):
        got = stream.step({"x": frames[:, t - size:t]})
        want = model.predict(params, {"x": frames[:, :t]})
        np.testing.assert_allclose(got["y"], want["y"][:, -size:], atol=ATOL)
        np.testing.assert_allclose(got["last"], want["last"], atol=ATOL)


@pytest.mark.parametrize("target", TARGETS)
def test_token_ids_stream(target: str) -> None:
    """Int inputs stream too: a small GPT (learned positions, tied head) chunk by chunk."""
    model = ag.models.gpt(vocab_size=37, n_positions=40, n_embd=24, n_layer=2, n_head=3)
    params = model.init(seed=6)
    ids = np.random.default_rng(3).integers(0, 37, (2, 17))
    stream = ag.Stream(ag.Session(ag.export(model, params, target=target, streaming=True),
                                  ["CPUExecutionProvider"]))
    (key,), (out,) = model.inputs, model.outputs
    t = 0
    for size in (5, 1, 4, 7):
        got = stream.step({key: ids[:, t:t + size]})[out]
        t += size
        want = model.predict(params, {key: ids[:, :t]})[out][:, -size:]
        np.testing.assert_allclose(got, want, atol=ATOL)
