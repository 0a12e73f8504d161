"""LSTM / GRU against PyTorch goldens, on the reference and on every target; export details.

The goldens (tests/goldens/{lstm,gru}.npz) come from `tests/goldens/make_goldens.py`, which
needs torch; these tests need only numpy. PyTorch's state-dict names and shapes load as they
are under the layer name, so a mismatch in gate order or bias placement shows here.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import randn, run_target

import attngraph as ag

GOLDENS = os.path.join(os.path.dirname(__file__), "goldens")
TOL = 1e-5


def load_golden(kind: str) -> dict[str, np.ndarray]:
    with np.load(os.path.join(GOLDENS, f"{kind}.npz"), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def golden_model(kind: str, gold: dict[str, np.ndarray], return_sequences: bool = True
                 ) -> tuple[ag.Model, dict[str, np.ndarray]]:
    num_layers = sum(k.startswith("weight_ih_l") for k in gold)
    hidden = gold["weight_hh_l0"].shape[1]
    x = ag.input("x", ("batch", "seq", gold["x"].shape[2]))
    y = getattr(ag, kind)(x, hidden, num_layers=num_layers, return_sequences=return_sequences,
                          name="rnn")
    model = ag.Model(x, y)
    params = {f"rnn.{k}": v for k, v in gold.items() if k.startswith(("weight_", "bias_"))}
    return model, params


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_params_are_pytorch_state_dict(kind: str) -> None:
    gold = load_golden(kind)
    model, params = golden_model(kind, gold)
    init = model.init(seed=0)
    assert sorted(init) == sorted(params)
    for k, v in params.items():
        assert init[k].shape == v.shape, k


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_reference_matches_pytorch(kind: str) -> None:
    gold = load_golden(kind)
    model, params = golden_model(kind, gold)
    y = model.predict(params, {"x": gold["x"]})["output"]
    np.testing.assert_allclose(y, gold["y"], atol=TOL, rtol=0)
    model, params = golden_model(kind, gold, return_sequences=False)
    last = model.predict(params, {"x": gold["x"]})["output"]
    np.testing.assert_allclose(last, gold["h_n"][-1], atol=TOL, rtol=0)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("seqs", [True, False])
def test_targets_match_pytorch(target: str, kind: str, seqs: bool) -> None:
    gold = load_golden(kind)
    model, params = golden_model(kind, gold, return_sequences=seqs)
    got = run_target(model, params, {"x": gold["x"]}, target)["output"]
    np.testing.assert_allclose(got, gold["y"] if seqs else gold["h_n"][-1], atol=TOL, rtol=0)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_params_round_trip_npz(tmp_path: os.PathLike[str], kind: str) -> None:
    gold = load_golden(kind)
    model, params = golden_model(kind, gold)
    path = os.path.join(tmp_path, "p.npz")
    ag.save_params(params, path)
    loaded = ag.load_params(path, model)
    y = model.predict(loaded, {"x": gold["x"]})["output"]
    np.testing.assert_allclose(y, gold["y"], atol=TOL, rtol=0)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_standard_onnx_op_and_dynamic_seq(target: str, kind: str) -> None:
    x = ag.input("x", ("batch", "seq", 3))
    model = ag.Model(x, getattr(ag, kind)(x, 7, num_layers=2, name="rnn"))
    params = {k: v + randn(*v.shape, seed=len(k)) * 0.3 for k, v in model.init(seed=2).items()}
    proto = ag.export(model, params, target=target)
    rnn_nodes = [n for n in proto.graph.node if n.op_type == kind.upper()]
    assert len(rnn_nodes) == 2 and all(n.domain == "" for n in rnn_nodes)
    if kind == "gru":  # PyTorch's GRU applies the reset gate after the recurrent matmul
        for n in rnn_nodes:
            attrs = {a.name: a.i for a in n.attribute}
            assert attrs.get("linear_before_reset") == 1
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims[:2]] == ["batch", "seq"]
    session = ag.Session(proto, ["CPUExecutionProvider"])
    for batch, seq in ((1, 1), (3, 4), (2, 9)):
        xs = randn(batch, seq, 3, seed=seq)
        want = model.predict(params, {"x": xs})["output"]
        np.testing.assert_allclose(session.run({"x": xs})["output"], want, atol=1e-4, rtol=0)


def test_summary_counts_parameters() -> None:
    x = ag.input("x", ("batch", "seq", 3))
    model = ag.Model(x, ag.gru(x, 7, num_layers=2, name="rnn"))
    # layer 0: 3*7*(3 + 7) + 2*3*7; layer 1: 3*7*(7 + 7) + 2*3*7
    assert sum(v.size for v in model.init().values()) == 252 + 336
    assert "588" in model.summary()


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_misuse_raises_clear_errors(kind: str) -> None:
    build = getattr(ag, kind)
    x = ag.input("x", ("batch", "seq", 3))
    with pytest.raises(ag.ConfigError, match=rf"{kind} 'r': hidden must be a positive int, "
                                             r"given -2 \(defined at test_recurrent_goldens"):
        build(x, -2, name="r")
    with pytest.raises(ag.ConfigError, match="hidden must be a positive int, given 7.0"):
        build(x, 7.0)
    with pytest.raises(ag.ConfigError, match="hidden must be a positive int, given True"):
        build(x, True)
    with pytest.raises(ag.ConfigError, match="num_layers must be a positive int, given 0"):
        build(x, 4, num_layers=0)
    with pytest.raises(ag.ConfigError, match="return_sequences must be True or False"):
        build(x, 4, return_sequences="yes")
    with pytest.raises(ag.ConfigError, match=r"input must be \[batch, seq, features\], "
                                             r"given f32\[batch,seq,3,2\]"):
        build(ag.input("y", ("batch", "seq", 3, 2)), 4)
    with pytest.raises(ag.ConfigError, match="input must be a graph value"):
        build(np.zeros((2, 5, 3), np.float32), 4)
    with pytest.raises(ag.ConfigError, match="static last dim"):
        build(ag.input("z", ("batch", "seq", "features")), 4)
    with pytest.raises(ag.AttnGraphError, match="float"):
        build(ag.input("i", ("batch", "seq", 3), dtype="int64"), 4)


def test_wrong_feed_shape_is_a_feed_error() -> None:
    x = ag.input("x", ("batch", "seq", 3))
    model = ag.Model(x, ag.lstm(x, 4))
    with pytest.raises(ag.AttnGraphError):
        model.predict(model.init(), {"x": np.zeros((2, 5, 4), np.float32)})
