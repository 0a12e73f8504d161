"""LSTM / GRU: reference against hand-written step loops, every target against the reference."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_parity, randn

import attngraph as ag


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("layers,seqs", [(1, True), (2, True), (2, False)])
def test_recurrent_parity(target: str, kind: str, layers: int, seqs: bool) -> None:
    x = ag.input("x", ("batch", "seq", 3))
    layer = getattr(ag, kind)(x, 7, num_layers=layers, return_sequences=seqs, name="rnn")
    model = ag.Model(x, layer)
    params = model.init(seed=4)
    for k in params:  # non-zero biases, so a misplaced bias would show
        params[k] = params[k] + randn(*params[k].shape, seed=len(k)) * 0.3
    assert_parity(model, params, {"x": randn(2, 5, 3, seed=9)}, target)


def test_lstm_reference_by_hand() -> None:
    x = ag.input("x", (1, 3, 2))
    model = ag.Model(x, ag.lstm(x, 2, name="l"))
    p = {k: randn(*v.shape, seed=i) for i, (k, v) in enumerate(model.init().items())}
    xs = randn(1, 3, 2, seed=7)
    h, c = np.zeros(2), np.zeros(2)
    want = []
    for t in range(3):
        gates = p["l.weight_ih_l0"] @ xs[0, t] + p["l.bias_ih_l0"] + p["l.weight_hh_l0"] @ h \
            + p["l.bias_hh_l0"]
        i, f, g, o = gates[:2], gates[2:4], gates[4:6], gates[6:]
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
        want.append(h)
    np.testing.assert_allclose(model.predict(p, {"x": xs})["output"][0], want, atol=1e-5)


def test_gru_reference_by_hand() -> None:
    x = ag.input("x", (1, 3, 2))
    model = ag.Model(x, ag.gru(x, 2, name="g"))
    p = {k: randn(*v.shape, seed=i) for i, (k, v) in enumerate(model.init().items())}
    xs = randn(1, 3, 2, seed=8)
    h = np.zeros(2)
    want = []
    for t in range(3):
        gi = p["g.weight_ih_l0"] @ xs[0, t] + p["g.bias_ih_l0"]
        gh = p["g.weight_hh_l0"] @ h + p["g.bias_hh_l0"]
        r, z = sigmoid(gi[:2] + gh[:2]), sigmoid(gi[2:4] + gh[2:4])
        n = np.tanh(gi[4:] + r * gh[4:])
        h = (1 - z) * n + z * h
        want.append(h)
    np.testing.assert_allclose(model.predict(p, {"x": xs})["output"][0], want, atol=1e-5)


def test_recurrent_errors() -> None:
    x = ag.input("x", ("batch", "seq", 3))
    with pytest.raises(ag.ConfigError, match="hidden must be a positive int"):
        ag.lstm(x, 0)
    with pytest.raises(ag.ConfigError, match="num_layers must be a positive int"):
        ag.gru(x, 4, num_layers=0)
    with pytest.raises(ag.ConfigError, match=r"input must be \[batch, seq, features\]"):
        ag.lstm(ag.input("y", ("batch", 3)), 4)
