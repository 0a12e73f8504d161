"""Robustness of the library API: parameter dtypes, masks with symbolic dims, onnxruntime's
errors in attngraph's words, providers, feeds, one table renderer."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

import attngraph as ag

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# -- item 4: parameter dtypes ---------------------------------------------------------------


def _dense_model() -> ag.Model:
    x = ag.input("x", ("batch", 5))
    return ag.Model(x, ag.dense(x, 3, name="proj"))


@pytest.mark.parametrize("dtype", ["int64", "int32", "uint8", "int8", "bool", "complex64"])
def test_non_float_kernels_are_refused_everywhere(tmp_path, dtype: str) -> None:
    model = _dense_model()
    params = model.init(seed=1)
    params["proj.kernel"] = np.ones((5, 3), dtype=dtype)
    feeds = {"x": np.ones((2, 5), np.float32)}
    for call in (lambda: model.predict(params, feeds), lambda: ag.export(model, params)):
        with pytest.raises(ag.ParamError, match=rf"'proj.kernel': expected a float array.*"
                           rf"given dtype {dtype}.*dense defined at test_robustness_api.py:\d+"):
            call()
    if dtype != "complex64":  # safetensors stores the rest; loading with the model refuses
        path = tmp_path / "p.safetensors"
        ag.save_params(params, path)
        with pytest.raises(ag.ParamError, match="quantized|expected a float array"):
            ag.load_params(path, model)


@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_float_kernels_of_other_widths_are_converted(dtype: str) -> None:
    model = _dense_model()
    params = model.init(seed=1)
    params["proj.kernel"] = params["proj.kernel"].astype(dtype)
    feeds = {"x": np.random.default_rng(3).standard_normal((2, 5)).astype(np.float32)}
    exact = {k: v.astype(np.float32) for k, v in params.items()}
    got, want = model.predict(params, feeds), model.predict(exact, feeds)
    np.testing.assert_array_equal(next(iter(got.values())), next(iter(want.values())))
    proto = ag.export(model, params)
    kernel = next(t for t in proto.graph.initializer if t.name == "proj.kernel")
    assert kernel.data_type == 1  # FLOAT


# -- item 10: save_params of things that are not arrays ------------------------------------


@pytest.mark.parametrize("params, needle", [
    ({"a": "hello"}, "'a' is not a numeric array (given str)"),
    ({"a": np.array(["x", "y"])}, "'a' is not a numeric array"),
    ({"a": [{}]}, "'a' is not a numeric array"),
    ({1: np.ones(2)}, "name 1 is not a string"),
    ([np.ones(2)], "must be a dict"),
])
@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_save_params_refuses_non_arrays(tmp_path, params: object, needle: str,
                                        suffix: str) -> None:
    path = tmp_path / f"p{suffix}"
    with pytest.raises(ag.ParamError, match=re.escape(needle)):
        ag.save_params(params, path)  # type: ignore[arg-type]
    assert not path.exists()


# -- item 5: masks with symbolic dims ---------------------------------------------------------


def test_2d_mask_over_batch_is_refused_at_build_time_with_a_hint() -> None:
    x = ag.input("x", ("batch", "seq", 16))
    m = ag.input("m", ("batch", "seq"), "bool")
    with pytest.raises(ag.AttnGraphError, match=r"multi_head_attention 'attn': mask must "
                       r"broadcast .* given bool\[batch,seq\]; .*goes in key_padding_mask=.*"
                       r"defined at test_robustness_api.py:\d+"):
        ag.multi_head_attention(x, num_heads=2, mask=m, name="attn")
    # a [q_seq, kv_seq] mask (or one that broadcasts) is fine
    ok = ag.input("ok", ("seq", "seq"), "bool")
    ag.multi_head_attention(x, num_heads=2, mask=ok, name="attn2")


def test_padding_mask_checked_at_predict_time_when_dims_are_symbolic() -> None:
    x = ag.input("x", ("batch", "seq", 16))
    kpm = ag.input("kpm", ("batch", 7), "bool")
    model = ag.Model([x, kpm], ag.multi_head_attention(x, num_heads=2, key_padding_mask=kpm,
                                                       name="attn"))
    params = model.init(seed=2)
    r = np.random.default_rng(0)
    good = {"x": r.standard_normal((2, 7, 16)).astype(np.float32), "kpm": np.ones((2, 7), bool)}
    assert next(iter(model.predict(params, good).values())).shape == (2, 7, 16)
    bad = {"x": r.standard_normal((2, 5, 16)).astype(np.float32), "kpm": np.ones((2, 7), bool)}
    with pytest.raises(ag.FeedError, match=r"multi_head_attention 'attn': key_padding_mask must "
                       r"be \[batch, kv_seq\] = \[2,5\] for these feeds, given \[2, 7\] "
                       r"\(defined at test_robustness_api.py:\d+\)"):
        model.predict(params, bad)
    with pytest.raises(ag.FeedError, match="'attn'"):
        ag.validate(model, params, bad, targets=("decomposed",))
    for target in ("ort", "onnx", "decomposed"):  # a Session of the Model checks first
        session = ag.Session(model, params=params, target=target)
        with pytest.raises(ag.FeedError, match=r"^Session.run: multi_head_attention 'attn': "
                           r"key_padding_mask must be \[batch, kv_seq\] = \[2,5\]"):
            session.run(bad)
        np.testing.assert_allclose(session.run(good)["output"],
                                   model.predict(params, good)["output"], atol=1e-4)


def test_sdpa_mask_checked_at_predict_time_with_a_hint() -> None:
    q = ag.input("q", ("batch", 3, "sq", 8))
    kv = ag.input("kv", ("batch", 3, "sk", 8))
    m = ag.input("m", ("b2", "sk"), "bool")  # a padding mask passed as mask=
    model = ag.Model([q, kv, m], ag.scaled_dot_product_attention(q, kv, kv, mask=m, name="sd"))
    r = np.random.default_rng(1)
    feeds = {"q": r.standard_normal((2, 3, 5, 8)).astype(np.float32),
             "kv": r.standard_normal((2, 3, 4, 8)).astype(np.float32),
             "m": np.ones((2, 4), bool)}
    with pytest.raises(ag.FeedError, match=r"attention 'sd': mask must broadcast to \[batch, "
                       r"heads, q_seq, kv_seq\] = \[2,3,5,4\] for these feeds, given \[2, 4\]; "
                       r".*key_padding_mask="):
        model.predict({}, feeds)
    feeds["m"] = np.ones((5, 4), bool)  # [q_seq, kv_seq] is what it broadcasts from
    assert model.predict({}, feeds)["output"].shape == (2, 3, 5, 8)


# -- item 7: onnxruntime's errors in our words, and its logger quiet ---------------------------


@pytest.fixture(scope="module")
def small_gpt(tmp_path_factory) -> tuple[ag.Model, dict[str, np.ndarray], str]:
    model = ag.models.gpt(vocab_size=50, n_positions=11, n_embd=16, n_layer=1, n_head=2)
    params = model.init(seed=4)
    path = str(tmp_path_factory.mktemp("gpt") / "g.onnx")
    ag.export(model, params, path)
    return model, params, path


@pytest.mark.parametrize("target", ["ort", "decomposed"])
def test_onnxruntime_failures_name_the_layer_and_log_nothing(
        small_gpt, target: str, tmp_path, capfd: pytest.CaptureFixture[str]) -> None:
    model, params, _ = small_gpt
    path = str(tmp_path / f"{target}.onnx")
    ag.export(model, params, path, target=target)
    session = ag.Session(path)  # a file: onnxruntime's failure, translated
    long_ids = np.ones((2, 13), np.int64)
    with pytest.raises(ag.AttnGraphError, match=r"^Session.run: positional_encoding 'wpe': "
                       r"sequence length 13 exceeds max_len=11"):
        session.run({"input_ids": long_ids})
    with pytest.raises(ag.AttnGraphError, match=r"^Session.run: embedding 'wte': ids must lie "
                       r"in \[0, 50\), given 300$"):
        session.run({"input_ids": np.array([[1, 2, 300]])})
    out, err = capfd.readouterr()  # file-descriptor level: onnxruntime's C++ logger included
    assert "onnxruntime" not in err and "\x1b[" not in err and out == "", err
    # a Session of a Model checks the limits before onnxruntime runs, negative ids included
    # (onnxruntime's Gather would wrap them around silently)
    checked = ag.Session(model, params=params, target=target)
    for ids, needle in ((long_ids, "sequence length 13 exceeds max_len=11"),
                        (np.array([[1, -1, 3]]), "given values in [-1, 3]")):
        with pytest.raises(ag.FeedError, match=re.escape(needle)):
            checked.run({"input_ids": ids})
    # the reference says the same things, naming the same layers
    with pytest.raises(ag.FeedError, match=r"positional_encoding 'wpe': sequence length 13 "
                       r"exceeds max_len=11 \(defined at test_robustness_api.py:\d+\)"):
        model.predict(params, {"input_ids": long_ids})
    with pytest.raises(ag.FeedError, match=r"embedding 'wte': ids must lie in \[0, 50\)"):
        model.predict(params, {"input_ids": np.array([[1, 2, 300]])})


def test_cli_run_past_max_positions_is_one_clear_line(small_gpt, tmp_path) -> None:
    _, _, path = small_gpt
    result = subprocess.run([sys.executable, "-m", "attngraph", "run", path, "--seq", "40"],
                            check=False, capture_output=True, text=True, cwd=str(tmp_path),
                            timeout=120)
    assert result.returncode == 2
    assert result.stderr == ("error: Session.run: positional_encoding 'wpe': sequence length 40 "
                             "exceeds max_len=11 (the positions it was built with)\n")


# -- item 13: one table renderer; item 10: the validation report says why ----------------------


def test_one_renderer_for_every_table() -> None:
    from attngraph._table import render

    plain = render(["a", "bb"], [[1, None], ["ccc", 2.5]], align="lr")
    assert plain.splitlines() == ["a     bb", "---  ---", "1", "ccc  2.5"]
    grid = render(["a", "b"], [["x", "yy"]], style="grid").splitlines()
    assert grid == ["+---+----+", "| a | b  |", "+---+----+", "| x | yy |", "+---+----+"]
    assert render(["n"], [[3]], style="markdown", align="r").splitlines()[1] == "| --: |"
    with pytest.raises(ValueError, match="2 cells"):
        render(["a"], [[1, 2]])
    # no module keeps a hand-written table: column widths are computed in _table.py only
    for path in ("_summary.py", "_validate.py", "analysis.py"):
        with open(os.path.join(REPO, "attngraph", path)) as f:
            text = f.read()
        assert "render(" in text and "ljust" not in text and "widths" not in text, path
    with open(os.path.join(REPO, "examples", "demo.py")) as f:
        demo = f.read()
    assert "render(" in demo and "ljust" not in demo
    bench = os.path.join(REPO, "bench")
    with open(os.path.join(bench, "_attention_report.py")) as f:
        assert 'style="markdown"' in f.read()
    for name in os.listdir(bench):  # the attention benchmark is split into small modules
        if name.endswith(".py") and name.startswith(("attention", "_attention")):
            with open(os.path.join(bench, name)) as f:
                assert len(f.read().splitlines()) < 400, name


def test_validation_report_states_the_tolerance_and_why_a_case_passes() -> None:
    from attngraph._validate import compare

    ref = np.array([1e-5, 2.0, -3.0])
    got = ref + np.array([1.5e-5, 1e-4, 0.0])  # rel err 1.5 at the near-zero element
    check = compare("ort", "y", got, ref, "float32")
    assert check.passed and check.max_rel == pytest.approx(1.5)
    # the worst element uses |1e-4| / (1e-4 + 1e-4 * 2) = 1/3 of its tolerance
    assert check.used == pytest.approx(1 / 3, rel=1e-3)
    report = str(ag.ValidationReport("float32", [check]))
    assert "1e-04 + 1e-04*|ref|" in report and "pass (worst element at 33.3% of its tolerance)" \
        in report and "|got - ref| <= atol + rtol*|ref|" in report
    bad = compare("ort", "y", ref + 1e-3, ref, "float32")
    assert not bad.passed and "FAIL: worst element at" in bad.verdict()


# -- item 10: API edges -------------------------------------------------------------------------


@pytest.mark.parametrize("providers, needle", [
    (["CPUExecutionProvdier"], "did you mean 'CPUExecutionProvider'"),
    (["NoSuchExecutionProvider"], "unavailable execution provider(s) ['NoSuchExecutionProvider']"),
    ("CPUExecutionProvider", "must be a non-empty list"),
    ([], "must be a non-empty list"),
])
def test_session_refuses_unknown_providers(providers: object, needle: str,
                                           capfd: pytest.CaptureFixture[str]) -> None:
    model = _dense_model()
    proto = ag.export(model, model.init())
    with pytest.raises(ag.ConfigError, match=re.escape(needle)):
        ag.Session(proto, providers=providers)  # type: ignore[arg-type]
    assert "EP Error" not in capfd.readouterr().out  # onnxruntime never got to fall back
    assert ag.Session(proto, providers=["CPUExecutionProvider"]).device == "cpu"
    assert ag.Session(proto, providers=[("CPUExecutionProvider", {})]).device == "cpu"


def test_feed_error_lists_the_inputs_once() -> None:
    model = _dense_model()
    with pytest.raises(ag.FeedError) as info:
        model.predict(model.init(), {"y": np.ones((2, 5), np.float32)})
    message = str(info.value)
    assert message == ("predict: missing feed(s) ['x']; unknown feed(s) ['y']; the model's "
                       "inputs are ['x']")


def test_int_window_is_causal_whatever_causal_says_and_the_docs_say_so() -> None:
    x = ag.input("x", ("batch", "seq", 16))
    outs = {c: ag.multi_head_attention(x, num_heads=2, window=3, causal=c, name=f"a{int(c)}")
            for c in (False, True)}
    model = ag.Model(x, {str(c): v for c, v in outs.items()})
    params = model.init(seed=3)
    params.update({k.replace("a0.", "a1."): v for k, v in params.items() if k.startswith("a0.")})
    feeds = {"x": np.random.default_rng(2).standard_normal((2, 6, 16)).astype(np.float32)}
    got = model.predict(params, feeds)
    np.testing.assert_array_equal(got["False"], got["True"])
    doc = ag.scaled_dot_product_attention.__doc__ or ""
    assert "causal=False does not" in " ".join(doc.split())
    with open(os.path.join(REPO, "README.md")) as f:
        assert "`causal=False` does not make it two-sided" in " ".join(f.read().split())


def test_package_is_typed() -> None:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # tomllib is new in Python 3.11; the test extra installs tomli before it
        import tomli as tomllib

    assert os.path.isfile(os.path.join(REPO, "attngraph", "py.typed"))
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        package_data = tomllib.load(f)["tool"]["setuptools"]["package-data"]
    assert "py.typed" in package_data["attngraph"]


@pytest.mark.parametrize("where", ["predict", "ort", "onnx", "decomposed"])
def test_an_empty_sequence_is_refused_naming_the_dim(where: str) -> None:
    x = ag.input("x", ("batch", "seq", 8))
    model = ag.Model(x, ag.multi_head_attention(x, num_heads=2, causal=True, name="attn"))
    params = model.init(seed=0)
    empty = {"x": np.zeros((2, 0, 8), np.float32)}
    with pytest.raises(ag.FeedError, match=r"'x'.*empty along axis 1 \('seq' = 0\)"):
        if where == "predict":
            model.predict(params, empty)
        else:
            ag.Session(model, params=params, target=where).run(empty)


def test_an_empty_cache_is_still_fed() -> None:
    from attngraph._decode import cache_layers, empty_past

    ids = ag.input("ids", ("batch", "seq"), "int64")
    h = ag.embedding(ids, 11, 8, name="embed")
    model = ag.Model(ids, ag.dense(ag.multi_head_attention(h, num_heads=2, causal=True,
                                                           name="attn"), 11, name="head"))
    params = model.init(seed=0)
    tokens = np.array([[1, 2, 3]])
    feeds = {"input_ids": tokens, "attention_mask": np.ones((1, 3), np.int64),
             **empty_past(cache_layers(model), 1)}
    session = ag.Session(ag.export(model, params, kv_cache=True, share_buffer=False))
    np.testing.assert_allclose(session.run(feeds)["logits"],
                               model.predict(params, {"ids": tokens})["output"], atol=1e-5)


def test_a_step_model_takes_empty_state_through_session_run() -> None:
    x = ag.input("x", ("batch", "seq", 8))
    model = ag.Model(x, ag.multi_head_attention(x, num_heads=2, causal=True, name="attn"))
    params = model.init(seed=0)
    session = ag.Session(ag.export(model, params, streaming=True))
    frames = np.random.default_rng(1).standard_normal((1, 3, 8)).astype(np.float32)
    feeds = {"x": frames}
    for name, t in session.inputs.items():
        if name.startswith("state."):  # nothing seen yet: empty caches, zero frames
            feeds[name] = np.zeros([1 if d == "batch" else d if isinstance(d, int) else 0
                                    for d in t.shape], t.dtype)
    np.testing.assert_allclose(session.run(feeds)["output"],
                               model.predict(params, {"x": frames})["output"], atol=1e-5)


def test_another_exporters_empty_cache_is_not_refused() -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Concat", ["cache_k", "new_k"], ["present_k"], axis=1)], "foreign",
        [helper.make_tensor_value_info("cache_k", TensorProto.FLOAT, ["batch", "past", 4]),
         helper.make_tensor_value_info("new_k", TensorProto.FLOAT, ["batch", 1, 4])],
        [helper.make_tensor_value_info("present_k", TensorProto.FLOAT, ["batch", "total", 4])])
    foreign = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    foreign.ir_version = 10
    new = np.ones((2, 1, 4), np.float32)
    got = ag.Session(foreign).run({"cache_k": np.zeros((2, 0, 4), np.float32), "new_k": new})
    np.testing.assert_array_equal(got["present_k"], new)
