"""Qwen2, Gemma 2 and Phi-3 semantics, rope scaling and per-layer windows, against the
transformers goldens in tests/goldens/hf/ (see test_hf_checkpoints.py).

Each Gemma 2 feature is shown to matter: a model built without it (or with it changed the way
other exporters do) misses the golden logits by far more than the 1e-4 the real model meets,
so a target that dropped it would fail test_hf_checkpoints' per-target parity (ATOL 1e-4).
"""

from __future__ import annotations

import inspect
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import assert_parity, randn, run_target
from test_hf_checkpoints import ROOT, expected, feeds, golden, loaded

import attngraph as ag
from attngraph._graph import Value
from attngraph.models import _families, hf
from attngraph.ops._rope import inv_freq

DROPPED = 1e-3  # an ablated model misses the golden by more than 10x the 1e-4 tolerance


def logits_error(model: ag.Model, name: str, params: Any = None) -> float:
    params = params if params is not None else loaded(name)[1]
    own = {k: params[k] for k in model.param_specs}
    got = model.predict(own, feeds(name))["logits"]
    return float(np.abs(got - expected(name)["logits"]).max())


def windows(model: ag.Model) -> list[Any]:
    return [n.attrs["window"] for n in model.nodes if n.op == "multi_head_attention"]


def config(name: str) -> dict[str, Any]:
    return hf.read_config(ROOT / name)


# -- Gemma 2: every feature is needed to match transformers --------------------------------


def gemma2_variant(embed_scale: float | None = None, post_norms: bool = True,
                   **changes: Any) -> ag.Model:
    options = {k: p.default for k, p in inspect.signature(_families.gemma2).parameters.items()}
    options.update(hf.preset_kwargs("gemma2", config("gemma2")), **changes)
    return _families._gemma2(options, embed_scale, post_norms)


def test_gemma2_variant_builder_is_the_preset() -> None:
    assert logits_error(gemma2_variant(), "gemma2") <= 1e-4


@pytest.mark.parametrize("feature, changes, margin", [
    ("attention softcap", {"attn_logit_softcapping": None}, DROPPED),
    ("final logit softcap", {"final_logit_softcapping": None}, DROPPED),
    ("sliding window", {"sliding_window": None}, DROPPED),
    ("window on the other layers", {"layer_types": ["full_attention", "sliding_attention",
                                                    "full_attention"]}, DROPPED),
    ("window on every layer", {"layer_types": ["sliding_attention"] * 3}, DROPPED),
    ("query_pre_attn_scalar (1/sqrt(head_dim) instead)", {"query_pre_attn_scalar": 16}, DROPPED),
    ("post-norms", {"post_norms": False}, DROPPED),
    # 5.66 for sqrt(32) = 5.65685 (what other exporters write): 4x the parity tolerance
    ("embedding scale rounded to 2 decimals", {"embed_scale": round(math.sqrt(32), 2)},
     3e-4),
    ("embedding scale dropped", {"embed_scale": 1.0}, DROPPED),
])
def test_gemma2_feature_is_needed(feature: str, changes: dict[str, Any], margin: float
                                  ) -> None:
    assert config("gemma2")["query_pre_attn_scalar"] != 16 == config("gemma2")["head_dim"]
    error = logits_error(gemma2_variant(**changes), "gemma2")
    assert error > margin, f"dropping {feature} went unnoticed ({error:.2e})"


def test_gemma2_geglu_needs_tanh_gelu(monkeypatch: pytest.MonkeyPatch) -> None:
    """GeGLU's gate uses the tanh GELU (gelu_pytorch_tanh); the exact erf GELU misses the
    golden by 2.6e-4 with these small weights, 2.6x the parity tolerance."""
    exact = _families.gelu
    monkeypatch.setattr(_families, "gelu",
                        lambda x, approximate="none", name=None: exact(x, name=name))
    model = gemma2_variant()
    assert {n.attrs["approximate"] for n in model.nodes if n.op == "gelu"} == {"none"}
    error = logits_error(model, "gemma2")
    assert error > 2e-4, f"dropping the tanh GELU went unnoticed ({error:.2e})"


def test_gemma2_layers_and_scales() -> None:
    model, _ = loaded("gemma2")
    assert windows(model) == [4, None, 4]  # layer_types: sliding, full, sliding
    attn = [n for n in model.nodes if n.op == "multi_head_attention"]
    assert all(n.attrs["softcap"] == 4.0 for n in attn)
    assert all(n.attrs["scale"] == 24 ** -0.5 for n in attn)
    (embed_scale,) = [n for n in model.nodes if model.node_names[n] == "embed_scale"]
    assert embed_scale.attrs["factor"] == math.sqrt(32)  # exact, not 5.66


# -- which layers are windowed -------------------------------------------------------------


def edited(name: str, tmp_path: Path, **changes: Any) -> Path:
    folder = tmp_path / name
    shutil.copytree(ROOT / name, folder)
    cfg = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.mark.parametrize("name, rule", [("qwen2", [None, 4, 4]), ("gemma2", [4, None, 4])])
def test_without_layer_types_transformers_rule_applies(name: str, rule: list[Any],
                                                       tmp_path: Path) -> None:
    """transformers 5 writes layer_types; older configs lack it. Both load the same model."""
    assert config(name)["layer_types"] is not None
    model, params = hf.from_pretrained(edited(name, tmp_path, layer_types=None))
    assert windows(model) == rule == windows(loaded(name)[0])
    assert logits_error(model, name, params) <= 1e-4


def test_layer_types_are_followed(tmp_path: Path) -> None:
    types = ["sliding_attention", "full_attention", "full_attention"]
    model, params = hf.from_pretrained(edited("qwen2", tmp_path, layer_types=types))
    assert windows(model) == [4, None, None]
    assert logits_error(model, "qwen2", params) > DROPPED  # the golden had [None, 4, 4]


def test_qwen2_sliding_window_needs_use_sliding_window(tmp_path: Path) -> None:
    model, params = hf.from_pretrained(edited("qwen2", tmp_path, use_sliding_window=False))
    assert windows(model) == [None, None, None]
    assert logits_error(model, "qwen2", params) > DROPPED
    assert windows(ag.models.qwen2(**hf.preset_kwargs("qwen2", dict(
        config("qwen2"), layer_types=None, max_window_layers=2)))) == [None, None, 4]


def test_mistral_without_layer_types_windows_every_layer(tmp_path: Path) -> None:
    assert "layer_types" not in config("mistral")  # transformers 5 writes none for Mistral
    model, _ = loaded("mistral")
    assert windows(model) == [4, 4]
    mixed = ["full_attention", "sliding_attention"]
    model, params = hf.from_pretrained(edited("mistral", tmp_path, layer_types=mixed))
    assert windows(model) == [None, 4]
    assert logits_error(model, "mistral", params) > DROPPED


def test_phi3_windows_every_layer_and_rotates_half_of_each_head() -> None:
    model, _ = loaded("phi3")
    assert windows(model) == [5, 5]
    attn = [n for n in model.nodes if n.op == "multi_head_attention"]
    assert all(n.attrs["rope"][0] == 8 and n.attrs["head_dim"] == 16 for n in attn)


def test_bad_layer_types_is_a_config_error() -> None:
    with pytest.raises(ag.ConfigError, match="layer_types must list 3"):
        ag.models.gemma2(**dict(hf.preset_kwargs("gemma2", config("gemma2")),
                                layer_types=["sliding_attention", "local"]))


# -- rope scaling, both config layouts -----------------------------------------------------


def to_transformers4(cfg: dict[str, Any], key: str = "rope_type") -> dict[str, Any]:
    """transformers 4's layout: rope_theta (and Phi-3's partial_rotary_factor) at the top, the
    scaling in rope_scaling."""
    rope = dict(cfg.pop("rope_parameters"))
    cfg["rope_theta"] = rope.pop("rope_theta")
    if "partial_rotary_factor" in rope:
        cfg["partial_rotary_factor"] = rope.pop("partial_rotary_factor")
    kind = rope.pop("rope_type")
    cfg["rope_scaling"] = None if kind == "default" else {key: kind, **rope}
    return cfg


@pytest.mark.parametrize("name, key", [("llama", "rope_type"), ("qwen2", "type"),
                                       ("gemma2", "rope_type"), ("phi3", "rope_type")])
def test_transformers4_rope_layout_gives_the_same_model(name: str, key: str,
                                                        tmp_path: Path) -> None:
    folder = tmp_path / name
    shutil.copytree(ROOT / name, folder)
    cfg = to_transformers4(json.loads((folder / "config.json").read_text()), key)
    (folder / "config.json").write_text(json.dumps(cfg))
    model, params = hf.from_pretrained(folder)
    assert logits_error(model, name, params) <= 1e-4


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_rope_scaling_is_needed(name: str) -> None:
    kwargs = hf.preset_kwargs(name, config(name))
    assert kwargs["rope_scaling"]["rope_type"] == {"llama": "llama3", "qwen2": "linear"}[name]
    del kwargs["rope_scaling"]
    assert logits_error(getattr(ag.models, name)(**kwargs), name) > DROPPED


@pytest.mark.parametrize("layout", ["rope_parameters", "rope_scaling"])
@pytest.mark.parametrize("kind", ["dynamic", "yarn", "longrope"])
def test_other_rope_kinds_are_config_errors_naming_the_key(layout: str, kind: str) -> None:
    cfg = dict(config("llama"))
    rope = {"rope_type": kind, "rope_theta": 1000.0, "factor": 2.0}
    if layout == "rope_scaling":
        cfg = to_transformers4(cfg)
        rope.pop("rope_theta")
    cfg[layout] = rope
    with pytest.raises(ag.ConfigError, match=rf"{layout}: rope_type '{kind}' is not "
                                             r"implemented \(supported: 'default', 'linear', "
                                             r"'llama3'\)"):
        hf.build_preset("llama", cfg)


def test_llama3_frequencies_by_band() -> None:
    """Wavelengths below L/high keep their frequency, above L/low are divided by the factor,
    those between are interpolated: here 8 pairs with wavelengths 6.3 ... 2650, L = 64."""
    plain = inv_freq(16, 1000.0)
    scaled = inv_freq(16, 1000.0, ("llama3", 8.0, 1.0, 4.0, 64.0))
    wavelen = 2 * np.pi / plain
    high, low = wavelen < 16, wavelen > 64
    assert high.sum() == 2 and low.sum() == 5
    np.testing.assert_array_equal(scaled[high], plain[high])
    np.testing.assert_allclose(scaled[low], plain[low] / 8, rtol=1e-15)
    mid = ~(high | low)
    smooth = (64 / wavelen[mid] - 1) / 3
    np.testing.assert_allclose(scaled[mid], plain[mid] * ((1 - smooth) / 8 + smooth))
    np.testing.assert_allclose(inv_freq(16, 1000.0, ("linear", 2.0)), plain / 2)


@pytest.mark.parametrize("scaling", [
    {"rope_type": "linear", "factor": 3.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 16},
], ids=["linear", "llama3"])
@pytest.mark.parametrize("head_dim, kv", [(16, 1), (14, 3)], ids=["fused", "unfused"])
def test_scaled_rope_on_every_target(scaling: dict[str, Any], head_dim: int, kv: int,
                                     target: str) -> None:
    x = ag.input("x", ("batch", "seq", 24))
    y = ag.multi_head_attention(x, num_heads=3, num_kv_heads=kv, head_dim=head_dim,
                                causal=True, rope=True, rope_scaling=scaling, name="attn")
    plain = ag.multi_head_attention(x, num_heads=3, num_kv_heads=kv, head_dim=head_dim,
                                    causal=True, rope=True, name="attn")
    model = ag.Model(x, y)
    params = model.init(seed=3)
    data = {"x": randn(2, 11, 24, seed=4)}
    ref = assert_parity(model, params, data, target)
    unscaled = ag.Model(x, plain).predict(params, data)
    assert np.abs(ref["output"] - unscaled["output"]).max() > DROPPED  # scaling matters


def test_rope_scaling_option_errors() -> None:
    x = ag.input("x", ("batch", "seq", 24))
    with pytest.raises(ag.ConfigError, match="rope_type 'dynamic' is not implemented"):
        ag.multi_head_attention(x, num_heads=3, rope=True, rope_scaling={"rope_type": "dynamic"})
    with pytest.raises(ag.ConfigError, match="needs a positive number 'low_freq_factor'"):
        ag.multi_head_attention(x, num_heads=3, rope=True,
                                rope_scaling={"rope_type": "llama3", "factor": 8.0})
    with pytest.raises(ag.ConfigError, match="rope_scaling is given but rope=False"):
        ag.multi_head_attention(x, num_heads=3, rope_scaling={"rope_type": "linear",
                                                              "factor": 2.0})


# -- presets follow transformers' names and defaults ---------------------------------------


@pytest.mark.parametrize("name", ["qwen2", "gemma2", "phi3"])
def test_preset_defaults_are_transformers_defaults(name: str) -> None:
    defaults = json.loads(str(golden(name)["defaults"]))
    theirs = hf.preset_kwargs(name, defaults)
    signature = inspect.signature(getattr(ag.models, name)).parameters
    ours = {k: signature[k].default for k in theirs if k in signature}
    # transformers fills in layer_types (its own rule) and num_key_value_heads; the presets
    # derive the same from None
    if theirs.get("layer_types") is not None:
        rule = windows(getattr(ag.models, name)(**dict(theirs, layer_types=None)))
        assert rule == windows(getattr(ag.models, name)(**theirs))
        theirs["layer_types"] = None
    if theirs.get("use_sliding_window") is False:  # Qwen2Config drops its 4096 then
        assert theirs["sliding_window"] is None and ours["sliding_window"] == 4096
        theirs["sliding_window"] = ours["sliding_window"]
    if ours.get("num_key_value_heads") is None:
        ours["num_key_value_heads"] = theirs["num_attention_heads"]
    assert {k: theirs[k] for k in ours} == ours


def test_qwen2_biases_query_key_value_but_not_output() -> None:
    names = set(loaded("qwen2")[1])
    assert {"layers.0.attn.query.bias", "layers.0.attn.key.bias",
            "layers.0.attn.value.bias"} <= names
    assert "layers.0.attn.output.bias" not in names
    assert not any(n.startswith("layers.0.ffn") and n.endswith("bias") for n in names)


def test_gemma2_embedding_scale_is_exact_on_every_target(target: str) -> None:
    """The scaled embeddings themselves, on every target: sqrt(32) = 5.65685 to float32
    precision (5.66 would be off by 6e-4 relative)."""
    model, params = loaded("gemma2")
    (node,) = [n for n in model.nodes if model.node_names[n] == "embed_scale"]
    ids = feeds("gemma2")["input_ids"]
    scaled = ag.Model(model.inputs, {"h": Value(node)})
    own = {"embed_tokens.embeddings": params["embed_tokens.embeddings"]}
    got = run_target(scaled, own, {"input_ids": ids}, target)["h"]
    want = own["embed_tokens.embeddings"][ids].astype(np.float64) * math.sqrt(32)
    np.testing.assert_allclose(got, want, rtol=2e-7, atol=0)
