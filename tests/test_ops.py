"""Every non-attention op: reference vs every target; the reference vs numpy by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import assert_parity, randn
from hypothesis import given, settings
from hypothesis import strategies as st

import attngraph as ag
from attngraph._registry import OPS
from attngraph.ops.sequence import sinusoidal_table


def x_in(dim: int = 6) -> ag.Value:
    return ag.input("x", ("batch", "seq", dim))


def add_multiply() -> ag.Value:
    x = x_in()
    return ag.multiply(ag.add(x, x, x), ag.dense(x, 1))


def concat() -> ag.Value:
    x = x_in()
    return ag.concatenate([x, ag.dense(x, 2)], axis=-1)


X = {"x": randn(2, 5, 6, seed=21) * 2}

CASES = {
    "dense": lambda: ag.dense(x_in(), 7),
    "dense_nobias": lambda: ag.dense(x_in(), 3, use_bias=False),
    "relu": lambda: ag.relu(x_in()),
    "gelu": lambda: ag.gelu(x_in()),
    "gelu_tanh": lambda: ag.gelu(x_in(), approximate="tanh"),
    "silu": lambda: ag.silu(x_in()),
    "sigmoid": lambda: ag.sigmoid(x_in()),
    "tanh": lambda: ag.tanh(x_in()),
    "softmax": lambda: ag.softmax(x_in(), axis=1),
    "dropout": lambda: ag.dropout(x_in(), 0.3),
    "scale": lambda: ag.scale(x_in(), -0.75),
    "layer_norm": lambda: ag.layer_norm(x_in()),
    "rms_norm": lambda: ag.rms_norm(x_in()),
    "sinusoidal": lambda: ag.positional_encoding(x_in()),
    "sinusoidal_odd_dim": lambda: ag.positional_encoding(ag.input("x", ("batch", "seq", 5))),
    "learned": lambda: ag.positional_encoding(x_in(), "learned", max_len=9),
    "last_timestep": lambda: ag.last_timestep(x_in()),
    "mean_pool": lambda: ag.mean_pool(x_in()),
    "timestep": lambda: ag.timestep(x_in(), 1),
    "add_multiply": add_multiply,
    "concatenate": concat,
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_op_parity(target: str, case: str) -> None:
    out = CASES[case]()
    model = ag.Model([_find_input(out)], out)
    feeds = X if case != "sinusoidal_odd_dim" else {"x": randn(2, 5, 5)}
    params = model.init(seed=2)
    for name in params:  # non-trivial norm scales and biases
        params[name] = params[name] + np.linspace(0.1, 0.5, params[name].size).reshape(
            params[name].shape).astype(np.float32)
    assert_parity(model, params, feeds, target)


def _find_input(v: ag.Value) -> ag.Value:
    stack = [v.node]
    while stack:
        node = stack.pop()
        if node.op == "input":
            return ag.Value(node)
        stack.extend(i.node for i in node.inputs if i is not None)
    raise AssertionError("no input")


def test_embedding_and_masked_mean_pool(target: str) -> None:
    ids = ag.input("ids", ("batch", "seq"), "int64")
    mask = ag.input("mask", ("batch", "seq"), "bool")
    model = ag.Model([ids, mask], ag.mean_pool(ag.embedding(ids, 11, 6), mask))
    feeds = {"ids": np.array([[1, 4, 10], [0, 2, 2]]), "mask": np.array([[1, 1, 0], [0, 0, 0]],
                                                                         bool)}
    ref = assert_parity(model, None, feeds, target)["output"]
    assert np.all(ref[1] == 0)


def test_sinusoidal_formula_by_hand() -> None:
    table = sinusoidal_table(7, 6)
    for pos in range(7):
        for i in range(3):
            angle = pos / 10000 ** (2 * i / 6)
            assert math.isclose(table[pos, 2 * i], math.sin(angle), abs_tol=1e-6)
            assert math.isclose(table[pos, 2 * i + 1], math.cos(angle), abs_tol=1e-6)


def test_references_by_hand() -> None:
    x = X["x"]
    p = {"kernel": randn(6, 7, seed=3), "bias": randn(7, seed=4)}
    xi = x_in()
    m = ag.Model(xi, {"d": ag.dense(xi, 7, name="d"), "ln": ag.layer_norm(xi, name="ln"),
                      "g": ag.gelu(xi)})
    params = {"d.kernel": p["kernel"], "d.bias": p["bias"], "ln.scale": np.full(6, 2.0, np.float32),
              "ln.bias": np.full(6, 0.5, np.float32)}
    out = m.predict(params, X)
    np.testing.assert_allclose(out["d"], np.einsum("bsi,io->bso", x, p["kernel"]) + p["bias"],
                               atol=1e-5)
    mu, sd = x.mean(-1, keepdims=True), x.std(-1, keepdims=True)
    np.testing.assert_allclose(out["ln"], (x - mu) / np.sqrt(sd**2 + 1e-5) * 2 + 0.5, atol=1e-5)
    erf = np.vectorize(math.erf)
    np.testing.assert_allclose(out["g"], 0.5 * x * (1 + erf(x / math.sqrt(2))), atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 3), st.integers(1, 6), st.integers(2, 9),
       st.floats(-30, 30, allow_nan=False))
def test_softmax_rows_sum_to_one(b: int, s: int, d: int, shift: float) -> None:
    x = ag.input("x", (b, s, d))
    model = ag.Model(x, ag.softmax(x))
    out = model.predict({}, {"x": randn(b, s, d) * 10 + shift})["output"]
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)


def test_registry_every_op_has_rule_reference_and_decomposed_lowering() -> None:
    for name, op in OPS.items():
        assert callable(op.infer) and callable(op.reference), name
        assert callable(op.lowering("decomposed")), name
        for target in ("ort", "onnx"):
            assert callable(op.lowering(target)), (name, target)
    tested = {c for c in ("dense", "relu", "gelu", "silu", "sigmoid", "tanh", "softmax",
                          "dropout", "layer_norm", "rms_norm", "positional_encoding",
                          "last_timestep", "mean_pool", "add", "multiply", "concatenate",
                          "embedding", "attention", "multi_head_attention", "input",
                          "relative_position_bias", "alibi_bias", "lstm", "gru",
                          "timestep", "tied_projection", "scale")}
    tested |= {"strided_pattern", "block_sparse_pattern"}  # tests/test_patterns.py
    tested |= {"split_heads", "merge_heads"}  # attention_module in tests/test_seeds.py
    assert set(OPS) <= tested, f"ops without a parity test: {set(OPS) - tested}"


def test_tied_projection_shares_the_embedding_table(target: str) -> None:
    ids = ag.input("ids", ("batch", "seq"), "int64")
    emb = ag.embedding(ids, 13, 6, name="wte")
    model = ag.Model(ids, ag.tied_projection(ag.relu(emb), emb, name="lm_head"))
    assert list(model.param_shapes) == ["wte.embeddings"]
    assert "78" in model.summary()  # 13 * 6 counted once
    params = model.init()
    proto = ag.export(model, params, target=target)
    assert [t.name for t in proto.graph.initializer if t.dims == [13, 6]] == ["wte.embeddings"]
    assert_parity(model, params, {"ids": np.array([[0, 5, 12], [3, 3, 1]])}, target)
