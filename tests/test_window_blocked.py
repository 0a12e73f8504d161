"""The blocked form of sliding-window attention (DESIGN §8) on every target.

Every test exports with `window_impl="blocked"` (checked: the graph runs the blocks in a
Scan), compares onnxruntime with the reference interpreter, and first checks that the feature
it covers changes the reference output, so a blocked form that dropped it would fail.
Windows of 3 keys use blocks of 8 positions, so S = 7, 8, 9, 17 are the block edges
b - 1, b, b + 1, 2b + 1. Every test runs twice: with all blocks in one Scan iteration, and with
groups of 2 blocks per iteration (several iterations from S = 17 on, the last one padded), the
path long sequences take.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import randn, rng

import attngraph as ag
from attngraph._export._builder import all_nodes
from attngraph.ops import _attention_blocked
from attngraph.ops._attention_blocked import block_size

FUSED = {"MultiHeadAttention", "GroupQueryAttention", "Attention"}
B, HQ, HKV, D = 2, 6, 2, 8


@pytest.fixture(autouse=True, params=["one_group", "groups_of_2"])
def groups(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Query positions per Scan iteration: the default, or 16 (2 blocks of 8)."""
    positions = _attention_blocked.GROUP_POSITIONS if request.param == "one_group" else 16
    monkeypatch.setattr(_attention_blocked, "GROUP_POSITIONS", positions)
    return positions


def run(model: ag.Model, params: dict, feeds: dict, target: str, impl: str = "blocked",
        dtype: str = "float32") -> np.ndarray:
    proto = ag.export(model, params, target=target, window_impl=impl, dtype=dtype)
    ops = [n.op_type for n in proto.graph.node]
    assert ("Scan" in ops) == (impl == "blocked"), f"{impl} form expected, got {ops}"
    return ag.Session(proto, ["CPUExecutionProvider"]).run(feeds)["output"]


def check(model: ag.Model, feeds: dict, target: str, params: dict | None = None,
          atol: float = 1e-4) -> np.ndarray:
    """Blocked export vs the reference; returns the reference output."""
    params = model.init(seed=1) if params is None else params
    ref = model.predict(params, feeds)["output"]
    got = run(model, params, feeds, target)
    assert not np.isnan(got).any(), f"{target}: NaN in the blocked output"
    err = np.abs(got.astype(np.float64) - ref)
    worst = np.unravel_index(int(np.argmax(err)), err.shape)
    assert err.max() <= atol, f"{target}: max error {err.max():.2e} at {worst}"
    return ref


def differs(a: np.ndarray, b: np.ndarray) -> bool:
    return float(np.abs(a - b).max()) > 1e-3


def sdpa(sq: int, sk: int, hq: int = HQ, hkv: int = HKV, mask: tuple | None = None,
         mask_dtype: str = "bool", kpm: bool = False, **opts: object) -> ag.Model:
    qs, ks = ("seq", "seq") if sq == sk else ("q_seq", "kv_seq")
    q = ag.input("q", ("batch", hq, qs, D))
    k = ag.input("k", ("batch", hkv, ks, D))
    v = ag.input("v", ("batch", hkv, ks, D))
    inputs, extra = [q, k, v], {}
    if mask is not None:
        extra["mask"] = ag.input("mask", mask, mask_dtype)
        inputs.append(extra["mask"])
    if kpm:
        extra["key_padding_mask"] = ag.input("kpm", ("batch", ks), "bool")
        inputs.append(extra["key_padding_mask"])
    return ag.Model(inputs, ag.scaled_dot_product_attention(q, k, v, **extra, **opts))


def qkv(sq: int, sk: int, hq: int = HQ, hkv: int = HKV) -> dict[str, np.ndarray]:
    return {"q": randn(B, hq, sq, D, seed=1), "k": randn(B, hkv, sk, D, seed=2),
            "v": randn(B, hkv, sk, D, seed=3)}


def no_window(sq: int, sk: int, **kw: object) -> np.ndarray:
    model = sdpa(sq, sk, **{k: v for k, v in kw.items() if k != "feeds"})
    return model.predict({}, kw["feeds"])["output"]  # type: ignore[arg-type]


def test_block_size_covers_the_window() -> None:
    """Blocks of the window's reach up to 64 positions, else of an eighth of it but at least 64
    (multiples of 8)."""
    assert block_size(3) == 8 and block_size(60) == 64 and block_size(66) == 64
    assert block_size(256) == 64 and block_size(1024) == 128 and block_size(2000) == 256
    assert block_size((3, 10)) == 16 and block_size((3, 10), causal=True) == 8


def test_each_iteration_holds_one_group(target: str, groups: int) -> None:
    """The Scan runs one iteration per (batch row, group of blocks): its stacked output is
    [B · groups, per, bs, Hq · D], so only one group's scores are alive at a time."""
    import onnx

    seq, bs = 40, 8  # 5 blocks
    model = sdpa(seq, seq, window=3)
    proto = ag.export(model, {}, target=target, window_impl="blocked")
    (scan,) = [n for n in proto.graph.node if n.op_type == "Scan"]
    proto.graph.output.append(onnx.helper.make_tensor_value_info(scan.output[0],
                                                                 onnx.TensorProto.FLOAT, None))
    feeds = qkv(seq, seq)
    outs = ag.Session(proto, ["CPUExecutionProvider"]).run(feeds)
    per_group = max(1, groups // bs)  # blocks per group at most
    n_groups = -(-5 // per_group)
    per = -(-5 // n_groups)
    assert outs[scan.output[0]].shape == (B * n_groups, per, bs, HQ * D)
    np.testing.assert_allclose(outs["output"], model.predict({}, feeds)["output"], atol=1e-4)


# -- lengths against the block size -------------------------------------------------------------


@pytest.mark.parametrize("seq", [7, 8, 9, 17, 2])  # b - 1, b, b + 1, 2b + 1, S < W
@pytest.mark.parametrize("window", [3, 1, (2, 3)])
def test_block_edges(target: str, seq: int, window: int | tuple[int, int]) -> None:
    feeds = qkv(seq, seq)
    ref = check(sdpa(seq, seq, window=window), feeds, target)
    if seq > 2:
        assert differs(ref, sdpa(seq, seq).predict({}, feeds)["output"])


@pytest.mark.parametrize("window", [150, (130, 70)])
def test_windows_reaching_several_blocks(target: str, window: int | tuple[int, int]) -> None:
    """Wide windows use blocks of 64 that read 3 blocks back (and 2 ahead): S = 203 is 4 blocks,
    the last one short."""
    assert block_size(window) == 64
    feeds = {**qkv(203, 203), "kpm": rng(12).random((B, 203)) > 0.1}
    ref = check(sdpa(203, 203, kpm=True, window=window), feeds, target)
    assert differs(ref, sdpa(203, 203, kpm=True).predict({}, feeds)["output"])


def test_wide_window_with_mask_and_cross_attention(target: str) -> None:
    """A full bool mask and bottom-right cross-attention cut into blocks that read 3 back."""
    mask = rng(13).random((150, 203)) > 0.2
    feeds = {**qkv(150, 203), "mask": mask}
    model = sdpa(150, 203, mask=(150, 203), window=(130, 70))
    ref = check(model, feeds, target)
    assert differs(ref, model.predict({}, dict(feeds, mask=np.ones_like(mask)))["output"])


@pytest.mark.parametrize("seq,window", [(9, 9), (9, 30), (20, 20)])  # W >= S
def test_window_at_least_the_sequence(target: str, seq: int, window: int) -> None:
    feeds = qkv(seq, seq)
    ref = check(sdpa(seq, seq, window=window), feeds, target)
    assert differs(ref, sdpa(seq, seq).predict({}, feeds)["output"])  # still causal


def test_local_window_with_causal_flag(target: str) -> None:
    feeds = qkv(17, 17)
    ref = check(sdpa(17, 17, window=(4, 3), causal=True), feeds, target)
    assert differs(ref, sdpa(17, 17, window=(4, 3)).predict({}, feeds)["output"])


# -- masks ---------------------------------------------------------------------------------------


def test_key_padding_with_fully_padded_rows(target: str) -> None:
    feeds = {**qkv(17, 17), "kpm": rng(4).random((B, 17)) > 0.3}
    feeds["kpm"][1, :10] = False  # rows 0..9 of batch 1 see no key in their window
    ref = check(sdpa(17, 17, kpm=True, window=3), feeds, target)
    assert np.all(ref[1, :, :10] == 0) and differs(ref, no_window(17, 17, feeds=feeds,
                                                                      kpm=True, window=3) * 0)
    full = dict(feeds, kpm=np.ones((B, 17), bool))
    assert differs(ref, sdpa(17, 17, kpm=True, window=3).predict({}, full)["output"])


@pytest.mark.parametrize("shape", [(17, 17), ("batch", 1, 17, 17), (1, HQ, 17, 17),
                                   ("batch", 1, 1, 17), (17, 1)])
def test_bool_mask_with_window(target: str, shape: tuple) -> None:
    dims = [B if d == "batch" else d for d in shape]
    mask = rng(5).random(dims) > 0.3
    feeds = {**qkv(17, 17), "mask": mask}
    model = sdpa(17, 17, mask=shape, window=(3, 2))
    ref = check(model, feeds, target)
    assert differs(ref, model.predict({}, dict(feeds, mask=np.ones(dims, bool)))["output"])


@pytest.mark.parametrize("shape", [(17, 17), ("batch", 1, 1, 17)])
def test_additive_mask_with_window(target: str, shape: tuple) -> None:
    dims = [B if d == "batch" else d for d in shape]
    bias = rng(6).standard_normal(dims).astype(np.float32)
    bias[rng(7).random(dims) > 0.8] = -np.inf
    feeds = {**qkv(17, 17), "mask": bias}
    model = sdpa(17, 17, mask=shape, mask_dtype="float32", window=5)
    ref = check(model, feeds, target)
    zero = np.zeros(dims, np.float32)
    assert differs(ref, model.predict({}, dict(feeds, mask=zero))["output"])


def test_mask_padding_and_local_window_together(target: str) -> None:
    feeds = {**qkv(17, 17), "mask": rng(8).random((17, 17)) > 0.2,
             "kpm": rng(9).random((B, 17)) > 0.2}
    check(sdpa(17, 17, mask=(17, 17), kpm=True, window=(4, 3)), feeds, target)


# -- score features ------------------------------------------------------------------------------


def test_softcap_with_window(target: str) -> None:
    feeds = qkv(17, 17)
    ref = check(sdpa(17, 17, window=3, softcap=0.5), feeds, target)
    assert differs(ref, sdpa(17, 17, window=3).predict({}, feeds)["output"])


@pytest.mark.parametrize("hkv", [1, 3, HQ])  # MQA, GQA, MHA
def test_grouped_heads_with_window(target: str, hkv: int) -> None:
    feeds = qkv(17, 17, hkv=hkv)
    check(sdpa(17, 17, hkv=hkv, window=3), feeds, target)


def mha(embed: int = 48, heads: int = 3, **opts: object) -> ag.Model:
    x = ag.input("x", ("batch", "seq", embed))
    return ag.Model(x, ag.multi_head_attention(x, num_heads=heads, name="attn", **opts))


@pytest.mark.parametrize("opts", [{"rope": True}, {"rope": True, "rope_interleaved": True},
                                  {"qk_layernorm": True}, {"num_kv_heads": 1, "softcap": 1.0},
                                  {"rope": True, "num_kv_heads": 1}])
def test_projected_layer_with_window(target: str, opts: dict) -> None:
    """RoPE rotates by absolute position before the sequence is cut into blocks."""
    model = mha(window=3, **opts)
    params = model.init(seed=2)
    feeds = {"x": randn(B, 17, 48, seed=4)}
    ref = check(model, feeds, target, params)
    plain = mha(window=3, num_kv_heads=opts.get("num_kv_heads"))
    shared = {k: v for k, v in params.items() if "_norm." not in k}
    assert differs(ref, plain.predict(shared, feeds)["output"])


# -- cross-attention: bottom-right alignment ---------------------------------------------------


@pytest.mark.parametrize("sq,sk", [(5, 19), (19, 5), (9, 17)])
@pytest.mark.parametrize("window", [3, (2, 1)])
def test_cross_attention_with_window(target: str, sq: int, sk: int,
                                     window: int | tuple[int, int]) -> None:
    feeds = {**qkv(sq, sk), "kpm": rng(10).random((B, sk)) > 0.2}
    ref = check(sdpa(sq, sk, kpm=True, window=window), feeds, target)
    assert differs(ref, sdpa(sq, sk, kpm=True).predict({}, feeds)["output"])


# -- float16, the three implementations, node counts -------------------------------------------


def test_float16_blocked(target: str) -> None:
    model = mha(window=3, num_kv_heads=1, rope=True)
    params = model.init(seed=5)
    feeds = {"x": randn(B, 17, 48, seed=6)}
    ref = model.predict(params, feeds)["output"]
    got = run(model, params, {"x": feeds["x"].astype(np.float16)}, target, dtype="float16")
    assert got.dtype == np.float16 and not np.isnan(got).any()
    np.testing.assert_allclose(got.astype(np.float32), ref, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("seq", [5, 17, 40])
def test_window_impl_choices_agree(target: str, seq: int) -> None:
    model = mha(window=4, num_kv_heads=1)
    params = model.init(seed=7)
    x = randn(B, seq, 48, seed=8)
    outs = {}
    for impl in ("blocked", "direct", "auto"):
        proto = ag.export(model, params, target=target, window_impl=impl)
        outs[impl] = ag.Session(proto, ["CPUExecutionProvider"]).run({"x": x})["output"]
    np.testing.assert_allclose(outs["blocked"], outs["direct"], atol=1e-4)
    np.testing.assert_allclose(outs["auto"], outs["direct"], atol=1e-4)


@pytest.mark.parametrize("impl", ["blocked", "auto"])
@pytest.mark.parametrize("target", ["ort", "onnx"])
def test_one_fused_node_per_windowed_layer(target: str, impl: str) -> None:
    x = ag.input("x", ("batch", "seq", 24))
    h = x
    for i, window in enumerate([3, (2, 1), 5, 60]):
        h = ag.add(h, ag.multi_head_attention(h, num_heads=4, window=window, name=f"l{i}"))
    model = ag.Model(x, h)
    proto = ag.export(model, model.init(), target=target, window_impl=impl)
    ops = [n.op_type for n in all_nodes(proto.graph)]  # Scan bodies included
    assert sum(op in FUSED for op in ops) == 4 and "Softmax" not in ops, ops
    assert not any(op in FUSED for op in (n.op_type for n in proto.graph.node))  # in Scans
    feeds = {"x": randn(1, 150, 24)}
    got = ag.Session(proto, ["CPUExecutionProvider"]).run(feeds)["output"]
    np.testing.assert_allclose(got, model.predict(model.init(), feeds)["output"], atol=1e-4)


def test_auto_keeps_the_direct_form_below_opset_23_on_ort() -> None:
    """The blocked form needs the standard Attention op (opset 23); "auto" falls back to the
    direct form there, "blocked" says what is missing."""
    model = mha(window=3)
    params = model.init(seed=9)
    proto = ag.export(model, params, target="ort", opset=21)
    assert "Scan" not in [n.op_type for n in proto.graph.node]
    feeds = {"x": randn(B, 40, 48, seed=10)}
    got = ag.Session(proto, ["CPUExecutionProvider"]).run(feeds)["output"]
    np.testing.assert_allclose(got, model.predict(params, feeds)["output"], atol=1e-4)
    with pytest.raises(ag.UnsupportedError, match="opset 23"):
        ag.export(model, params, target="ort", opset=21, window_impl="blocked")


def test_bad_window_impl() -> None:
    model = mha(window=3)
    with pytest.raises(ag.ExportError, match="window_impl must be one of"):
        ag.export(model, model.init(), window_impl="fast")


def test_memory_efficient_reference_skips_far_keys() -> None:
    """The reference's memory_efficient mode equals the standard one with a window, for
    self- and cross-attention, and reads only the key chunks the window reaches."""
    from attngraph.ops import _attention_modes as modes

    for sq, sk, window in ((40, 40, 3), (9, 40, (2, 5)), (40, 9, 4)):
        model = sdpa(sq, sk, kpm=True, window=window)
        feeds = {**qkv(sq, sk), "kpm": rng(11).random((B, sk)) > 0.2}
        standard = model.predict({}, feeds)["output"]
        lean = model.predict({}, feeds, attention="memory_efficient", chunk_size=4)["output"]
        np.testing.assert_allclose(lean, standard, atol=1e-5)
    seen: list[tuple[int, int]] = []
    original = modes._block

    def spy(q, k, rows, cols, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append((rows.start, cols.start))
        return original(q, k, rows, cols, *args, **kwargs)

    modes._block = spy
    try:
        model = sdpa(64, 64, window=3)
        model.predict({}, qkv(64, 64), attention="memory_efficient", chunk_size=8)
    finally:
        modes._block = original
    assert len(seen) <= 2 * 8 and all(r - 8 <= c <= r for r, c in seen), seen
