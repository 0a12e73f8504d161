"""Every user mistake raises an ag.AttnGraphError at the call that made it, naming the layer,
what was expected, what was given and where it was written (DESIGN §7)."""

from __future__ import annotations

import os

import numpy as np
import pytest

import attngraph as ag

HERE = os.path.basename(__file__)


def x3(dim: int = 512) -> ag.Value:
    return ag.input("x", ("batch", "seq", dim))


def simple_model() -> ag.Model:
    x = x3(8)
    return ag.Model(x, ag.dense(x, 4, name="proj"))


BUILD_MISTAKES = [
    ("heads_not_dividing", lambda: ag.multi_head_attention(x3(), num_heads=6, name="attn_0"),
     ag.ConfigError, r"multi_head_attention 'attn_0': num_heads=6 does not divide embed dim 512"),
    ("kv_not_dividing", lambda: ag.multi_head_attention(x3(), num_heads=8, num_kv_heads=3),
     ag.ConfigError, "num_kv_heads=3 does not divide num_heads=8"),
    ("zero_heads", lambda: ag.multi_head_attention(x3(), num_heads=0),
     ag.ConfigError, "num_heads must be a positive int, given 0"),
    ("window_zero", lambda: ag.multi_head_attention(x3(), num_heads=8, window=0),
     ag.ConfigError, "window must be >= 1"),
    ("window_negative_pair", lambda: ag.multi_head_attention(x3(), num_heads=8, window=(-1, 2)),
     ag.ConfigError, r"window must be an int K >= 1 or a pair"),
    ("window_string", lambda: ag.multi_head_attention(x3(), num_heads=8, window="big"),
     ag.ConfigError, "given 'big'"),
    ("causal_not_bool", lambda: ag.multi_head_attention(x3(), num_heads=8, causal="yes"),
     ag.ConfigError, "causal must be True or False"),
    ("negative_softcap", lambda: ag.multi_head_attention(x3(), num_heads=8, softcap=-1.0),
     ag.ConfigError, "softcap must be > 0"),
    ("zero_scale", lambda: ag.multi_head_attention(x3(), num_heads=8, scale=0),
     ag.ConfigError, "scale must be > 0"),
    ("context_wrong_rank", lambda: ag.multi_head_attention(
        x3(), ag.input("c", ("batch", 5)), num_heads=8),
     ag.AttnGraphError, "context"),
    ("kpm_wrong_dtype", lambda: ag.multi_head_attention(
        x3(), num_heads=8, key_padding_mask=ag.input("m", ("batch", "seq"), "float32")),
     ag.ShapeError, "key_padding_mask must be bool or int"),
    ("mask_not_broadcastable", lambda: ag.multi_head_attention(
        ag.input("x", ("batch", 5, 512)), num_heads=8, mask=ag.input("m", (4, 6), "bool")),
     ag.ShapeError, r"mask must broadcast to \[batch, heads, q_seq, kv_seq\]"),
    ("sdpa_rank", lambda: ag.scaled_dot_product_attention(x3(), x3(), x3()),
     ag.ShapeError, r"q must be \[batch, heads, seq, head_dim\], given f32\[batch,seq,512\]"),
    ("sdpa_head_dims_differ", lambda: ag.scaled_dot_product_attention(
        ag.input("q", (2, 4, 5, 8)), ag.input("k", (2, 4, 5, 6)), ag.input("v", (2, 4, 5, 6))),
     ag.ShapeError, "q and k head_dim differ"),
    ("sdpa_kv_heads", lambda: ag.scaled_dot_product_attention(
        ag.input("q", (2, 4, 5, 8)), ag.input("k", (2, 3, 5, 8)), ag.input("v", (2, 3, 5, 8))),
     ag.ShapeError, r"kv heads \(3\) must divide query heads \(4\)"),
    ("dense_units", lambda: ag.dense(x3(), -3), ag.ConfigError, "units must be a positive int"),
    ("dense_not_value", lambda: ag.dense(np.zeros((2, 3)), 4), ag.ConfigError,
     "input must be a graph value"),
    ("dense_symbolic_features", lambda: ag.dense(ag.input("x", ("b", "f")), 4), ag.ConfigError,
     "needs a static last dim"),
    ("add_shapes", lambda: ag.add(x3(4), x3(5)), ag.ShapeError, "do not broadcast"),
    ("add_dtypes", lambda: ag.add(x3(4), ag.input("i", ("batch", "seq", 4), "int64")),
     ag.ShapeError, "share a dtype"),
    ("input_bad_dtype", lambda: ag.input("x", (2, 3), "complex64"), ag.ConfigError,
     "dtype must be one of"),
    ("input_bad_shape", lambda: ag.input("x", (2, -3)), ag.ConfigError, "shape entries"),
    ("gelu_approx", lambda: ag.gelu(x3(), approximate="fast"), ag.ConfigError,
     r"approximate must be one of \['none', 'tanh'\]"),
    ("learned_pos_needs_max_len", lambda: ag.positional_encoding(x3(), "learned"),
     ag.ConfigError, "needs max_len"),
    ("pos_kind", lambda: ag.positional_encoding(x3(), "rotary-ish"), ag.ConfigError, "kind"),
    ("embedding_float_ids", lambda: ag.embedding(x3(), 10, 4), ag.ShapeError,
     "ids must be an integer tensor"),
    ("concat_axis", lambda: ag.concatenate([x3(), x3()], axis=5), ag.ConfigError, "axis"),
    ("dropout_rate", lambda: ag.dropout(x3(), 1.5), ag.ConfigError, r"rate must lie in"),
    ("name_empty", lambda: ag.dense(x3(), 3, name=""), ag.ConfigError, "name must be"),
]


@pytest.mark.parametrize("case", BUILD_MISTAKES, ids=[c[0] for c in BUILD_MISTAKES])
def test_builder_mistakes(case) -> None:
    _, make, exc, pattern = case
    with pytest.raises(exc, match=pattern) as info:
        make()
    assert f"(defined at {HERE}:" in str(info.value), str(info.value)
    assert isinstance(info.value, ag.AttnGraphError)


def test_duplicate_layer_names() -> None:
    x = x3(8)
    a = ag.dense(x, 8, name="same")
    b = ag.dense(a, 8, name="same")
    with pytest.raises(ag.GraphError, match="layer name 'same' is used twice"):
        ag.Model(x, b)


def test_unlisted_input() -> None:
    x, y = x3(8), ag.input("y", ("batch", "seq", 8))
    with pytest.raises(ag.GraphError, match="input 'y' .* is not listed"):
        ag.Model(x, ag.add(x, y))


def test_unused_input() -> None:
    x, y = x3(8), ag.input("y", ("batch", "seq", 8))
    with pytest.raises(ag.GraphError, match="input 'y' .* does not reach any output"):
        ag.Model([x, y], ag.relu(x))


def test_output_not_a_value() -> None:
    with pytest.raises(ag.GraphError, match="not a graph value"):
        ag.Model(x3(8), {"y": 3})


def test_missing_and_unknown_feeds() -> None:
    model = simple_model()
    with pytest.raises(ag.FeedError, match=r"missing feed\(s\) \['x'\].*unknown feed\(s\) \['z'\]"):
        model.predict(model.init(), {"z": np.zeros((1, 2, 8), np.float32)})


def test_wrong_feed_shape_and_dtype() -> None:
    model = simple_model()
    with pytest.raises(ag.FeedError, match=r"expected f32\[batch,seq,8\], given float32\[2, 3, 7\]"):
        model.predict(model.init(), {"x": np.zeros((2, 3, 7), np.float32)})
    with pytest.raises(ag.FeedError, match="wrong dtype"):
        model.predict(model.init(), {"x": np.zeros((2, 3, 8), np.int64)})


def test_symbolic_dim_bound_twice() -> None:
    x, y = x3(8), ag.input("y", ("batch", "seq", 8))
    model = ag.Model([x, y], ag.add(x, y))
    with pytest.raises(ag.FeedError, match="dim 'batch' is 3 here but 2"):
        model.predict({}, {"x": np.zeros((2, 4, 8), np.float32), "y": np.zeros((3, 4, 8), np.float32)})


def test_nan_inputs_rejected_when_asked() -> None:
    model = simple_model()
    bad = np.zeros((1, 2, 8), np.float32)
    bad[0, 1, 3] = np.nan
    with pytest.raises(ag.FeedError, match="1 NaN"):
        model.predict(model.init(), {"x": bad}, check_finite=True)
    sess = ag.Session(ag.export(model, model.init()), ["CPUExecutionProvider"])
    with pytest.raises(ag.FeedError, match="1 NaN and 0 Inf"):
        sess.run({"x": bad}, check_finite=True)


def test_wrong_param_shapes_all_reported_at_once() -> None:
    model = simple_model()
    params = model.init()
    params["proj.kernel"] = np.zeros((3, 3), np.float32)
    del params["proj.bias"]
    params["extra"] = np.zeros(2, np.float32)
    with pytest.raises(ag.ParamError) as info:
        model.predict(params, {"x": np.zeros((1, 2, 8), np.float32)})
    text = str(info.value)
    assert "3 parameter problem(s)" in text
    assert "'proj.kernel': expected shape [8, 4], given [3, 3]" in text
    assert "missing 'proj.bias'" in text and "unknown parameter 'extra'" in text


def test_unknown_target_dtype_opset(tmp_path) -> None:
    model = simple_model()
    with pytest.raises(ag.ExportError, match="unknown target 'tensorrt'"):
        ag.export(model, model.init(), target="tensorrt")
    with pytest.raises(ag.ExportError, match="dtype must be 'float32' or 'float16'"):
        ag.export(model, model.init(), dtype="bfloat16")
    with pytest.raises(ag.ExportError, match=r"target 'onnx' needs an opset in 23\.\.25"):
        ag.export(model, model.init(), target="onnx", opset=17)


def test_export_with_path_and_params_swapped(tmp_path) -> None:
    model = simple_model()
    path = str(tmp_path / "m.onnx")
    with pytest.raises(ag.ExportError) as info:
        ag.export(model, path, model.init())  # type: ignore[arg-type]
    text = str(info.value)
    assert f"params and path are swapped: call export(model, params, {path!r})" in text
    assert "test_errors.py:" in text and os.listdir(tmp_path) == []
    with pytest.raises(ag.ExportError, match="params must be a mapping of name -> array, "
                                             "given list"):
        ag.export(model, [1, 2])  # type: ignore[arg-type]


def test_unwritable_or_missing_directory(tmp_path) -> None:
    model = simple_model()
    with pytest.raises(ag.ExportError, match="does not exist"):
        ag.export(model, model.init(), tmp_path / "nope" / "m.onnx")
    (tmp_path / "taken").mkdir()
    with pytest.raises(ag.ExportError, match="cannot write"):
        ag.export(model, model.init(), tmp_path / "taken")  # a directory sits at that path
    assert (tmp_path / "taken").is_dir() and not list((tmp_path / "taken").iterdir())
    assert sorted(os.listdir(tmp_path)) == ["taken"]  # no temporary file left behind
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    real_access = os.access

    def access(path: object, mode: int, *args: object, **kwargs: object) -> bool:
        # root passes every permission check, so the read-only folder is made so for it too
        if os.fspath(path) == str(locked) and mode & os.W_OK:  # type: ignore[arg-type]
            return False
        return real_access(path, mode, *args, **kwargs)  # type: ignore[arg-type]

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(os, "access", access)
            with pytest.raises(ag.ExportError, match="not writable"):
                ag.export(model, model.init(), locked / "m.onnx")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def test_non_onnx_file(tmp_path) -> None:
    path = tmp_path / "notes.onnx"
    path.write_text("hello, not a model")
    with pytest.raises(ag.AttnGraphError, match="is it an ONNX model"):
        ag.Session(str(path))
    with pytest.raises(ag.ExportError, match="no such file"):
        ag.Session(str(tmp_path / "missing.onnx"))


def test_session_feed_checks() -> None:
    model = simple_model()
    sess = ag.Session(ag.export(model, model.init()), ["CPUExecutionProvider"])
    with pytest.raises(ag.FeedError, match=r"Session.run: missing feed\(s\) \['x'\]"):
        sess.run({})
    with pytest.raises(ag.FeedError, match="rank 2"):
        sess.run({"x": np.zeros((2, 8), np.float32)})


def test_params_files_roundtrip_and_mismatch(tmp_path) -> None:
    model = simple_model()
    params = model.init(seed=5)
    for ext in ("safetensors", "npz"):
        path = tmp_path / f"p.{ext}"
        ag.save_params(params, path)
        loaded = ag.load_params(path, model)
        assert all(np.array_equal(loaded[k], params[k]) for k in params)
    x = x3(8)
    other = ag.Model(x, ag.dense(x, 5, name="proj"))
    with pytest.raises(ag.ParamError, match=r"'proj.kernel': expected shape \[8, 5\], given \[8, 4\]"):
        ag.load_params(tmp_path / "p.npz", other)
    with pytest.raises(ag.ParamError, match="must end in .safetensors or .npz"):
        ag.save_params(params, tmp_path / "p.pkl")
    (tmp_path / "bad.npz").write_bytes(b"junk")
    with pytest.raises(ag.ParamError, match="cannot read"):
        ag.load_params(tmp_path / "bad.npz")


def test_validate_unknown_target() -> None:
    model = simple_model()
    with pytest.raises(ag.ExportError, match="unknown target 'gpu'"):
        ag.validate(model, model.init(), {"x": np.zeros((1, 2, 8), np.float32)}, targets=("gpu",))
