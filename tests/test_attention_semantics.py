"""DESIGN §4 on every target: each feature is checked against the reference, and each test
first checks that the feature changes the reference output, so a target that dropped the
feature would fail."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_parity, randn, rng

import attngraph as ag

B, HQ, HKV, SQ, SK, D, DV = 2, 6, 2, 5, 7, 8, 8


def sdpa_model(sq: int = SQ, sk: int = SK, hq: int = HQ, hkv: int = HKV, d: int = D,
               dv: int = DV, mask_shape: tuple | None = None, mask_dtype: str = "bool",
               kpm: bool = False, **opts: object) -> ag.Model:
    # equal lengths share one symbol, so the exporter knows Sq == Sk (self-attention)
    q_seq, kv_seq = ("seq", "seq") if sq == sk else ("q_seq", "kv_seq")
    q = ag.input("q", ("batch", hq, q_seq, d))
    k = ag.input("k", ("batch", hkv, kv_seq, d))
    v = ag.input("v", ("batch", hkv, kv_seq, dv))
    inputs = [q, k, v]
    extra = {}
    if mask_shape is not None:
        extra["mask"] = ag.input("mask", mask_shape, mask_dtype)
        inputs.append(extra["mask"])
    if kpm:
        extra["key_padding_mask"] = ag.input("kpm", ("batch", kv_seq), "bool")
        inputs.append(extra["key_padding_mask"])
    out = ag.scaled_dot_product_attention(q, k, v, **extra, **opts)
    return ag.Model(inputs, out)


def qkv(sq: int = SQ, sk: int = SK, hq: int = HQ, hkv: int = HKV, d: int = D, dv: int = DV,
        b: int = B) -> dict[str, np.ndarray]:
    return {"q": randn(b, hq, sq, d, seed=1), "k": randn(b, hkv, sk, d, seed=2),
            "v": randn(b, hkv, sk, dv, seed=3)}


def assert_parity_out(*args: object) -> np.ndarray:
    return assert_parity(*args)["output"]


def ref(model: ag.Model, feeds: dict) -> np.ndarray:
    return model.predict({}, feeds)["output"]


def differs(a: np.ndarray, b: np.ndarray) -> bool:
    return float(np.abs(a - b).max()) > 1e-3


# -- the reference against a hand-written loop -------------------------------------------------


def loop_attention(q, k, v, allow, scale, softcap=None):
    """One query row at a time, with plain Python loops over heads (the slow, obvious way)."""
    b_, hq, sq, _ = q.shape
    group = hq // k.shape[1]
    out = np.zeros((b_, hq, sq, v.shape[-1]))
    for b in range(b_):
        for h in range(hq):
            for i in range(sq):
                kh = h // group
                keys = [j for j in range(k.shape[2]) if allow(b, h, i, j)]
                if not keys:
                    continue
                s = np.array([q[b, h, i] @ k[b, kh, j] * scale for j in keys])
                if softcap:
                    s = softcap * np.tanh(s / softcap)
                w = np.exp(s - s.max())
                w /= w.sum()
                out[b, h, i] = sum(wj * v[b, kh, j] for wj, j in zip(w, keys))
    return out


@pytest.mark.parametrize("sq,sk", [(5, 7), (7, 7), (7, 5)])
def test_reference_matches_loop_causal_window_padding(sq: int, sk: int) -> None:
    feeds = qkv(sq, sk)
    pad = np.ones((B, sk), bool)
    pad[1, :3] = False
    feeds["kpm"] = pad
    model = sdpa_model(sq, sk, kpm=True, causal=True, window=3, softcap=2.5)
    got = ref(model, feeds)
    scale = 1 / np.sqrt(D)

    def allow(b, h, i, j):
        p = sk - sq + i
        return j <= p and j > p - 3 and pad[b, j]

    want = loop_attention(feeds["q"], feeds["k"], feeds["v"], allow, scale, 2.5)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_reference_matches_loop_local_window_and_mask() -> None:
    feeds = qkv()
    m = rng(4).random((SQ, SK)) > 0.3
    feeds["mask"] = m
    model = sdpa_model(mask_shape=(SQ, SK), window=(1, 2))

    def allow(b, h, i, j):
        p = SK - SQ + i
        return p - 1 <= j <= p + 2 and m[i, j]

    want = loop_attention(feeds["q"], feeds["k"], feeds["v"], allow, 1 / np.sqrt(D))
    np.testing.assert_allclose(ref(model, feeds), want, atol=1e-5)


# -- each feature on every target --------------------------------------------------------------


def test_plain_gqa(target: str) -> None:
    feeds = qkv()
    assert_parity(sdpa_model(), {}, feeds, target)


@pytest.mark.parametrize("hkv", [1, 2, 6])
def test_head_mapping(target: str, hkv: int) -> None:
    """MQA / GQA / MHA: query head h reads kv head h // (Hq // Hkv)."""
    feeds = qkv(hkv=hkv)
    model = sdpa_model(hkv=hkv)
    out = ref(model, feeds)
    if 1 < hkv < HQ:  # another head mapping (interleaved h % Hkv) gives another answer
        perm = [(h % hkv) * (HQ // hkv) + h // hkv for h in range(HQ)]
        assert differs(out, ref(model, {**feeds, "q": feeds["q"][:, perm]})[:, np.argsort(perm)])
    assert_parity(model, {}, feeds, target)


def test_scale_and_temperature(target: str) -> None:
    feeds = qkv()
    temperature = 0.5
    model = sdpa_model(scale=1 / (temperature * np.sqrt(D)))
    assert differs(ref(model, feeds), ref(sdpa_model(), feeds))
    assert_parity(model, {}, feeds, target)


def test_softcap_without_mask(target: str) -> None:
    feeds = {k: v * 3 for k, v in qkv().items()}
    model = sdpa_model(softcap=1.5)
    assert differs(ref(model, feeds), ref(sdpa_model(), feeds))
    assert_parity(model, {}, feeds, target)


@pytest.mark.parametrize("sq,sk", [(7, 7), (5, 7)])
def test_causal_bottom_right(target: str, sq: int, sk: int) -> None:
    feeds = qkv(sq, sk)
    model = sdpa_model(sq, sk, causal=True)
    out = ref(model, feeds)
    assert differs(out, ref(sdpa_model(sq, sk), feeds))
    if sq != sk:  # top-left alignment would give another answer
        top_left = np.arange(sk)[None, :] <= np.arange(sq)[:, None]
        feeds_tl = {**feeds, "mask": top_left}
        assert differs(out, ref(sdpa_model(sq, sk, mask_shape=(sq, sk)), feeds_tl))
    assert_parity(model, {}, feeds, target)


def test_causal_more_queries_than_keys_gives_zero_rows(target: str) -> None:
    feeds = qkv(7, 5)
    out = assert_parity_out(sdpa_model(7, 5, causal=True), {}, feeds, target)
    assert np.all(out[:, :, :2] == 0) and np.all(np.abs(out[:, :, 2:]).sum(-1) > 0)


@pytest.mark.parametrize("sq,sk", [(7, 7), (5, 7)])
def test_sliding_window(target: str, sq: int, sk: int) -> None:
    feeds = qkv(sq, sk)
    model = sdpa_model(sq, sk, window=3)
    assert differs(ref(model, feeds), ref(sdpa_model(sq, sk, causal=True), feeds))
    assert_parity(model, {}, feeds, target)


def test_sliding_window_with_causal_flag(target: str) -> None:
    feeds = qkv(7, 7)
    model = sdpa_model(7, 7, window=2, causal=True)
    assert differs(ref(model, feeds), ref(sdpa_model(7, 7, causal=True), feeds))
    assert_parity(model, {}, feeds, target)


@pytest.mark.parametrize("window", [(1, 2), (0, 0), (3, 0)])
def test_local_window(target: str, window: tuple[int, int]) -> None:
    feeds = qkv()
    model = sdpa_model(window=window)
    assert differs(ref(model, feeds), ref(sdpa_model(), feeds))
    assert_parity(model, {}, feeds, target)


def test_key_padding_mask(target: str) -> None:
    feeds = qkv()
    pad = np.ones((B, SK), bool)
    pad[0, 5:] = False  # right padding
    pad[1, :2] = False  # left padding
    feeds["kpm"] = pad
    model = sdpa_model(kpm=True)
    assert differs(ref(model, feeds), ref(sdpa_model(), {k: feeds[k] for k in "qkv"}))
    assert_parity(model, {}, feeds, target)


@pytest.mark.parametrize("hkv", [HKV, HQ])
@pytest.mark.parametrize("same_len", [False, True])
def test_key_padding_mask_int_and_fully_padded_batch(target: str, hkv: int,
                                                     same_len: bool) -> None:
    """Every op route (MHA's own padding input, GQA's bias, the standard op's mask)."""
    q_seq, kv_seq = ("seq", "seq") if same_len else ("q_seq", "kv_seq")
    q = ag.input("q", ("batch", HQ, q_seq, D))
    k = ag.input("k", ("batch", hkv, kv_seq, D))
    v = ag.input("v", ("batch", hkv, kv_seq, DV))
    kpm = ag.input("kpm", ("batch", kv_seq), "int64")
    model = ag.Model([q, k, v, kpm], ag.scaled_dot_product_attention(q, k, v, key_padding_mask=kpm,
                                                                     causal=same_len))
    sk = SQ if same_len else SK
    feeds = qkv(SQ, sk, hkv=hkv)
    feeds["kpm"] = np.ones((B, sk), np.int64)
    feeds["kpm"][1] = 0  # every key of batch 1 is padding
    out = assert_parity_out(model, {}, feeds, target)
    assert np.all(out[1] == 0) and np.all(np.abs(out[0]).sum(-1) > 0)


def test_padding_with_causal_left_padding_rows(target: str) -> None:
    """Left padding + causal: the first query rows see only padding and must be zeros."""
    feeds = qkv(7, 7)
    pad = np.ones((B, 7), bool)
    pad[1, :3] = False
    feeds["kpm"] = pad
    out = assert_parity_out(sdpa_model(7, 7, kpm=True, causal=True), {}, feeds, target)
    assert np.all(out[1, :, :3] == 0)


@pytest.mark.parametrize("shape", [(SQ, SK), ("batch", 1, SQ, SK), (1, HQ, SQ, SK)])
def test_bool_mask_broadcasting(target: str, shape: tuple) -> None:
    feeds = qkv()
    concrete = tuple(B if d == "batch" else d for d in shape)
    m = rng(5).random(concrete) > 0.4
    feeds["mask"] = m
    model = sdpa_model(mask_shape=shape)
    assert differs(ref(model, feeds), ref(sdpa_model(), {k: feeds[k] for k in "qkv"}))
    assert_parity(model, {}, feeds, target)


def test_bool_mask_fully_masked_rows_are_zero(target: str) -> None:
    feeds = qkv()
    m = np.ones((B, 1, SQ, SK), bool)
    m[0, 0, 2] = False
    m[1, 0, 4] = False
    feeds["mask"] = m
    out = assert_parity_out(sdpa_model(mask_shape=("batch", 1, SQ, SK)), {}, feeds, target)
    assert np.all(out[0, :, 2] == 0) and np.all(out[1, :, 4] == 0)


def test_additive_float_mask_with_neg_inf_rows(target: str) -> None:
    feeds = qkv()
    m = rng(6).standard_normal((1, HQ, SQ, SK)).astype(np.float32)
    m[0, 1, 3] = -np.inf  # one fully masked row
    m[0, 2, 0, :4] = -np.inf
    feeds["mask"] = m
    model = sdpa_model(mask_shape=(1, HQ, SQ, SK), mask_dtype="float32")
    out = assert_parity_out(model, {}, feeds, target)
    assert differs(out, ref(sdpa_model(), {k: feeds[k] for k in "qkv"}))
    assert np.all(out[:, 1, 3] == 0)


def test_everything_at_once(target: str) -> None:
    feeds = qkv(7, 7)
    pad = np.ones((B, 7), bool)
    pad[0, 6] = False
    feeds["kpm"] = pad
    feeds["mask"] = rng(7).random((7, 7)) > 0.2
    model = sdpa_model(7, 7, mask_shape=(7, 7), kpm=True, window=4, scale=0.3)
    assert_parity(model, {}, feeds, target)


@pytest.mark.parametrize("sq,sk", [(7, 7), (5, 7)])
def test_value_head_dim_differs(target: str, sq: int, sk: int) -> None:
    feeds = qkv(sq, sk, dv=3)
    assert_parity(sdpa_model(sq, sk, dv=3, causal=True), {}, feeds, target)


def test_odd_head_dim(target: str) -> None:
    feeds = qkv(7, 7, d=5, dv=5)
    assert_parity(sdpa_model(7, 7, d=5, dv=5, window=3), {}, feeds, target)


@pytest.mark.parametrize("opts", [{"causal": True}, {"window": 3}, {"window": (1, 2)},
                                  {"softcap": 2.0, "causal": True}])
def test_float16_features_and_dead_rows(target: str, opts: dict) -> None:
    """The same semantics in a float16 export (MHA, GQA and the standard op all take fp16)."""
    feeds = qkv(7, 7)
    pad = np.ones((B, 7), bool)
    pad[1, :3] = False
    feeds["kpm"] = pad
    model = sdpa_model(7, 7, kpm=True, **opts)
    report = ag.validate(model, {}, feeds, targets=(target,), dtype="float16")
    assert report.passed, str(report)
    got = ag.Session(ag.export(model, {}, target=target, dtype="float16"),
                     ["CPUExecutionProvider"]).run(
        {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in feeds.items()})
    if opts.get("causal") or isinstance(opts.get("window"), int):
        assert np.all(got["output"][1, :, :3] == 0)
