"""Wrong-typed arguments to the public API raise AttnGraphError subclasses naming the call,
what was expected and what was given: never a raw TypeError/AttributeError/ValueError."""

from __future__ import annotations

import numpy as np
import pytest

import attngraph as ag


@pytest.fixture(scope="module")
def setup():
    x = ag.input("x", ("batch", 5, 12))
    y = ag.multi_head_attention(x, num_heads=3, name="att")
    model = ag.Model(x, y)
    params = model.init(seed=3)
    feeds = {"x": np.random.default_rng(7).standard_normal((2, 5, 12)).astype(np.float32)}
    return model, params, feeds


def _other_node():
    x = ag.input("x", ("batch", 5, 12))
    return ag.relu(x, name="other").node


def _cases(model, params, feeds, tmp):
    report = ag.analyze(model, params, feeds)
    checked = ag.validate(model, params, feeds, targets=["decomposed"])
    cost = ag.attention_cost(model)["att"]
    png = str(tmp / "a.png")
    return {
        "from_pretrained(3)": (lambda: ag.models.hf.from_pretrained(3),
                               ag.ConfigError, "path (a checkpoint folder) must be a str"),
        "read_config(None)": (lambda: ag.models.hf.read_config(None),
                              ag.ConfigError, "given NoneType"),
        "build_preset config": (lambda: ag.models.hf.build_preset("llama", 3),
                                ag.ConfigError, "config must be a dict"),
        "head_importance model": (lambda: ag.head_importance("m", params, feeds),
                                  ag.ConfigError, "model must be an ag.Model"),
        "head_importance layers": (lambda: ag.head_importance(model, params, feeds, layers=3),
                                   ag.ConfigError, "layers must be a name or a list of names"),
        "metric returns str": (lambda: ag.head_importance(model, params, feeds,
                                                          metric=lambda out: "x"),
                               ag.ConfigError, "metric must return one number"),
        "metric returns array": (lambda: ag.head_importance(
            model, params, feeds, metric=lambda out: out["output"]),
            ag.ConfigError, "given an array of shape [2, 5, 12]"),
        "metric returns None": (lambda: ag.head_importance(model, params, feeds,
                                                           metric=lambda out: None),
                                ag.ConfigError, "given NoneType"),
        "analyze model": (lambda: ag.analyze("m", params, feeds),
                          ag.ConfigError, "model must be an ag.Model"),
        "validate model": (lambda: ag.validate("m", params, feeds),
                           ag.ExportError, "model must be an ag.Model"),
        "validate targets": (lambda: ag.validate(model, params, feeds, targets=3),
                             ag.ExportError, "targets must be a target name"),
        "export model": (lambda: ag.export("m", params),
                         ag.ExportError, "model must be an ag.Model"),
        "export path": (lambda: ag.export(model, params, 3),
                        ag.ExportError, "path must be a str or os.PathLike, given int"),
        "init seed": (lambda: model.init(seed="a"), ag.ConfigError, "seed must be an int"),
        "Model name": (lambda: ag.Model(model.inputs["x"], model.outputs["output"], name=3),
                       ag.GraphError, "name must be a non-empty string"),
        "Model output name": (lambda: ag.Model(model.inputs["x"], {3: model.outputs["output"]}),
                              ag.GraphError, "outputs names must be non-empty strings, given 3"),
        "predict check_finite": (lambda: model.predict(params, feeds, check_finite="yes"),
                                 ag.ConfigError, "check_finite must be True or False"),
        "save_params path": (lambda: ag.save_params(params, 3),
                             ag.ParamError, "path must be a str"),
        "load_params path": (lambda: ag.load_params(3), ag.ParamError, "path must be a str"),
        "load_params model": (lambda: ag.load_params(tmp / "p.npz", 3),
                              ag.ParamError, "model must be an ag.Model"),
        "plot_attention report": (lambda: ag.plot_attention(3, png),
                                  ag.ConfigError, "report must be an AttentionReport"),
        "plot_attention path": (lambda: ag.plot_attention(report, 3),
                                ag.ConfigError, "path must be a str"),
        "plot_attention tokens": (lambda: ag.plot_attention(report, png, tokens=3),
                                  ag.ConfigError, "tokens must be a list of labels"),
        "plot_attention layers": (lambda: ag.plot_attention(report, png, layers=3),
                                  ag.ConfigError, "layers must be a name or a list of names"),
        "process_sequence model": (lambda: ag.process_sequence(3, params, feeds["x"][0, 0],
                                                               [feeds["x"][0, 0]]),
                                   ag.ConfigError, "model must be an ag.Model"),
        "with_shape": (lambda: model.inputs["x"].type.with_shape(3),
                       ag.ShapeError, "shape must be a tuple"),
        "with_dtype": (lambda: model.inputs["x"].type.with_dtype(3),
                       ag.ShapeError, "dtype must be one of"),
        "TensorType dtype": (lambda: ag.TensorType(3, (2, 5)),
                             ag.ShapeError, "dtype must be a dtype name"),
        "TensorType shape": (lambda: ag.TensorType("float32", 4),
                             ag.ShapeError, "shape must be a tuple"),
        "feed_forward activation": (lambda: ag.feed_forward(model.inputs["x"], 4,
                                                            activation="bogus", name="f"),
                                    ag.ConfigError, "activation must be one of"),
        "name_of int": (lambda: model.name_of(3),
                        ag.GraphError, "node must be a node of this model, given int"),
        "name_of other model's node": (lambda: model.name_of(_other_node()),
                                       ag.GraphError, "node must be a node of this model"),
        "worst int": (lambda: checked.worst(3),
                      ag.ExportError, "target must be one of ['ort', 'onnx', 'decomposed']"),
        "worst unknown": (lambda: checked.worst("onnxruntime"),
                          ag.ExportError, "given 'onnxruntime'"),
        "kv_cache_bytes context": (lambda: cost.kv_cache_bytes("5"),
                                   ag.ConfigError, "context must be an int >= 0, given '5'"),
        "kv_cache_bytes negative": (lambda: cost.kv_cache_bytes(-5),
                                    ag.ConfigError, "context must be an int >= 0, given -5"),
        "kv_cache_bytes batch": (lambda: cost.kv_cache_bytes(5, batch=2.5),
                                 ag.ConfigError, "batch must be a positive int, given 2.5"),
        "feed_forward input": (lambda: ag.feed_forward(3, 4, name="f"),
                               ag.ConfigError, "input must be a graph value"),
    }



def test_every_wrong_type_is_a_clear_error(setup, tmp_path) -> None:
    model, params, feeds = setup
    ag.save_params(params, tmp_path / "p.npz")
    raw = []
    for label, (call, error, words) in _cases(model, params, feeds, tmp_path).items():
        try:
            call()
        except ag.AttnGraphError as exc:
            if not isinstance(exc, error) or words not in str(exc):
                raw.append(f"{label}: {type(exc).__name__}: {exc}")
        except Exception as exc:  # noqa: BLE001 - what this test looks for
            raw.append(f"{label}: raw {type(exc).__name__}: {exc}")
        else:
            raw.append(f"{label}: no error")
    assert not raw, "\n".join(raw)


def test_layers_accepts_one_name_as_a_one_item_list(setup) -> None:
    model, params, feeds = setup
    one = ag.head_importance(model, params, feeds, layers="att")
    listed = ag.head_importance(model, params, feeds, layers=["att"])
    assert [(s.layer, s.head) for s in one] == [(s.layer, s.head) for s in listed]
    assert [s.score for s in one] == [s.score for s in listed]
    assert sorted(s.head for s in one) == [0, 1, 2]


def test_metric_may_return_a_scalar_array(setup) -> None:
    model, params, feeds = setup
    scores = ag.head_importance(model, params, feeds,
                                metric=lambda out: np.square(out["output"]).sum())
    floats = ag.head_importance(model, params, feeds,
                                metric=lambda out: float(np.square(out["output"]).sum()))
    assert [s.score for s in scores] == pytest.approx([s.score for s in floats])


def test_plot_attention_takes_one_layer_name(setup, tmp_path) -> None:
    pytest.importorskip("matplotlib")
    model, params, feeds = setup
    report = ag.analyze(model, params, feeds)
    out = ag.plot_attention(report, tmp_path / "one.png", layers="att")
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_worst_is_nan_for_a_target_not_checked(setup) -> None:
    model, params, feeds = setup
    checked = ag.validate(model, params, feeds, targets=["decomposed"])
    assert np.isnan(checked.worst("ort"))
    assert 0.0 <= checked.worst("decomposed") < 1e-4


def test_timestep_index_outside_the_sequence_is_a_clear_error() -> None:
    x = ag.input("x", ("batch", 5, 7))
    with pytest.raises(ag.ShapeError, match=r"index 5 is outside a sequence of 5"):
        ag.timestep(x, 5, name="cls")
    y = ag.input("y", ("batch", "seq", 7))
    model = ag.Model(y, ag.timestep(y, -4, name="cls"))
    feeds = {"y": np.random.default_rng(5).standard_normal((2, 3, 7)).astype(np.float32)}
    with pytest.raises(ag.FeedError, match=r"cls.*index -4 is outside a sequence of 3"):
        model.predict(model.init(seed=1), feeds)
    longer = {"y": np.random.default_rng(5).standard_normal((2, 4, 7)).astype(np.float32)}
    got = model.predict(model.init(seed=1), longer)["output"]
    np.testing.assert_array_equal(got, longer["y"][:, 0, :])


def test_session_run_outputs_must_be_names(setup) -> None:
    model, params, feeds = setup
    session = ag.Session(model, params=params)
    for bad in (3, [3], {"output": 1}.values()):
        with pytest.raises(ag.FeedError, match=r"outputs must be a list of output names"):
            session.run(feeds, outputs=bad)
    one = session.run(feeds, outputs="output")  # one name, as a one-item list
    assert list(one) == ["output"]
    np.testing.assert_allclose(one["output"], session.run(feeds)["output"], atol=0)
