"""Independent parity: attngraph against PyTorch and Hugging Face transformers, without torch.

The goldens (tests/goldens/hf_*.npz, torch_*.npz) are written by
`tests/goldens/make_hf_goldens.py`, which needs torch and transformers; these tests need only
numpy. Each file holds a module's state dict ("w/..."), its inputs ("in/..."), its outputs
("out/..."), its config and its parameter count. The weights load into the attngraph preset
or layer through `attngraph.models.hf` by their Hugging Face / PyTorch names; the outputs are
then compared on the reference interpreter and on every export target in onnxruntime.

Parameter counts: the golden's `param_count` is Hugging Face's `model.num_parameters()`, i.e.
`sum(p.numel() for p in model.parameters())`: a tied tensor (GPT-2's and T5's LM head and T5's
per-stack embed_tokens, which *are* the shared embedding) is counted once and buffers
(position_ids, causal-mask `attn.bias`, rotary `inv_freq`) are not counted. attngraph's
`model.param_shapes` holds tied tables once too (at their owning embedding), so the two counts
are equal exactly, and so is the "Total parameters" line of `model.summary()`. The state dict
itself is larger than param_count by exactly the tied duplicates, which is checked too.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
from typing import Any

import numpy as np
import pytest
from conftest import run_target

import attngraph as ag
from attngraph import models
from attngraph.models import hf

GOLDENS = os.path.join(os.path.dirname(__file__), "goldens")
ATOL = 1e-4
HF_KINDS = {"gpt2": "gpt", "bert": "bert", "t5": "t5", "llama": "llama", "mistral": "mistral"}
# HF names whose tensors are another parameter (torch's state_dict lists them under each name)
TIED = {"gpt2": ["lm_head.weight"],
        "t5": ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"]}
TORCH_LAYERS = ["torch_encoder_post_relu", "torch_encoder_pre_gelu", "torch_decoder_post_gelu",
                "torch_decoder_pre_relu"]


@functools.cache
def load_golden(name: str) -> dict[str, Any]:
    with np.load(os.path.join(GOLDENS, f"{name}.npz"), allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    gold: dict[str, Any] = {"w": {}, "in": {}, "out": {}}
    for key, value in arrays.items():
        group, _, rest = key.partition("/")
        if rest:
            gold[group][rest] = value
        else:
            gold[key] = value
    gold["config"] = json.loads(str(gold["config"]))
    if "defaults" in gold:
        gold["defaults"] = json.loads(str(gold["defaults"]))
    return gold


def assert_close(got: dict[str, np.ndarray], want: dict[str, np.ndarray], what: str,
                 atol: float = ATOL) -> None:
    assert sorted(got) == sorted(want), f"{what}: outputs {sorted(got)} != {sorted(want)}"
    for name, expected in want.items():
        actual = got[name]
        assert actual.shape == expected.shape, (
            f"{what}/{name}: shape {actual.shape} != golden {expected.shape}")
        assert np.isfinite(actual).all(), f"{what}/{name}: non-finite values"
        diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
        worst = np.unravel_index(int(np.argmax(diff)), diff.shape)
        assert diff.max() <= atol, (
            f"{what}/{name}: max abs error {diff.max():.3e} > {atol:.0e} at index {worst}: "
            f"got {actual[worst]!r}, golden {expected[worst]!r}")


# -- Hugging Face presets --------------------------------------------------------------------


@functools.cache
def hf_case(name: str) -> tuple[ag.Model, dict[str, np.ndarray], dict[str, Any]]:
    gold = load_golden(f"hf_{name}")
    model = hf.build_preset(HF_KINDS[name], gold["config"])
    params = hf.load_hf_weights(HF_KINDS[name], gold["w"], model)
    return model, params, gold


@pytest.mark.parametrize("name", list(HF_KINDS))
def test_hf_reference_matches_golden(name: str) -> None:
    model, params, gold = hf_case(name)
    assert_close(model.predict(params, gold["in"]), gold["out"], f"hf_{name}/reference")


@pytest.mark.parametrize("name", list(HF_KINDS))
def test_hf_targets_match_golden(name: str, target: str) -> None:
    model, params, gold = hf_case(name)
    assert_close(run_target(model, params, gold["in"], target), gold["out"],
                 f"hf_{name}/{target}")


@pytest.mark.parametrize("name", list(HF_KINDS))
def test_hf_parameter_count_and_summary(name: str) -> None:
    model, params, gold = hf_case(name)
    count = int(gold["param_count"])
    assert sum(int(np.prod(s)) for s in model.param_shapes.values()) == count
    assert sum(p.size for p in params.values()) == count
    assert f"Total parameters: {count:,}" in model.summary()
    # the state dict holds the tied tensors once more under each tied name, nothing else extra
    tied = sum(gold["w"][k].size for k in TIED.get(name, []))
    assert sum(a.size for a in gold["w"].values()) == count + tied


@pytest.mark.parametrize("name", list(HF_KINDS))
def test_hf_loads_without_tied_duplicates(name: str) -> None:
    """`save_pretrained` files omit tied names; they load to the same parameters."""
    model, params, gold = hf_case(name)
    weights = {k: v for k, v in gold["w"].items() if k not in TIED.get(name, [])}
    again = hf.load_hf_weights(HF_KINDS[name], weights, model)
    assert sorted(again) == sorted(params)
    for k in params:
        np.testing.assert_array_equal(again[k], params[k])


def test_hf_loader_reports_every_problem_at_once() -> None:
    model, _, gold = hf_case("llama")
    weights = dict(gold["w"])
    del weights["model.layers.1.mlp.up_proj.weight"]
    weights["model.layers.0.self_attn.q_proj.bias"] = np.zeros(64, np.float32)
    weights["score.weight"] = np.zeros((2, 64), np.float32)
    weights["model.norm.weight"] = np.ones(65, np.float32)
    with pytest.raises(ag.ParamError) as info:
        hf.load_hf_weights("llama", weights, model)
    text = str(info.value)
    assert "unmapped 'score.weight'" in text
    assert "'layers.0.attn.query.bias' (from the state dict) is not a parameter" in text
    assert "missing 'layers.1.ffn.up.kernel'" in text
    assert "'norm.scale': expected shape [64], given [65]" in text
    assert "4 problem(s)" in text


def test_hf_loader_rejects_an_untied_head_for_a_tied_preset() -> None:
    model, _, gold = hf_case("gpt2")
    weights = dict(gold["w"])
    weights["lm_head.weight"] = weights["lm_head.weight"] + 1.0
    with pytest.raises(ag.ParamError, match="'lm_head.weight' is tied to 'wte.weight'"):
        hf.load_hf_weights("gpt2", weights, model)


def test_hf_config_the_preset_cannot_express_is_an_error() -> None:
    config = dict(load_golden("hf_llama")["config"], attention_bias=True, hidden_act="gelu")
    with pytest.raises(ag.ConfigError, match="hidden_act='gelu'.*attention_bias=True"):
        hf.build_preset("llama", config)
    with pytest.raises(ag.ConfigError, match="feed_forward_proj='gated-gelu'"):
        hf.build_preset("t5", dict(load_golden("hf_t5")["config"], feed_forward_proj="gated-gelu"))
    with pytest.raises(ag.ConfigError, match="unknown kind 'opt'"):
        hf.build_preset("opt", {})


def _normalise(kind: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Resolve the 'None means derived' defaults the presets and HF spell differently."""
    out = dict(kwargs)
    if kind in ("llama", "mistral") and out.get("num_key_value_heads") is None:
        out["num_key_value_heads"] = out["num_attention_heads"]
    if kind == "t5" and out.get("num_decoder_layers") is None:
        out["num_decoder_layers"] = out["num_layers"]
    return out


@pytest.mark.parametrize("name", list(HF_KINDS))
def test_preset_defaults_are_hf_config_defaults(name: str) -> None:
    """The presets promise Hugging Face's configuration names *and defaults*."""
    kind = HF_KINDS[name]
    hf_defaults = hf.preset_kwargs(kind, load_golden(f"hf_{name}")["defaults"])
    signature = inspect.signature(getattr(models, kind)).parameters
    ours = {k: signature[k].default for k in hf_defaults}
    assert _normalise(kind, ours) == _normalise(kind, hf_defaults)


# -- PyTorch modules -------------------------------------------------------------------------


def _mha_model(cross: bool) -> ag.Model:
    x = ag.input("x", ("batch", "seq", 32))
    if cross:
        c = ag.input("context", ("batch", "ctx", 32))
        m = ag.input("context_padding_mask", ("batch", "ctx"), "bool")
        return ag.Model([x, c, m], ag.multi_head_attention(x, c, num_heads=4,
                                                           key_padding_mask=m, name="attn"))
    m = ag.input("key_padding_mask", ("batch", "seq"), "bool")
    return ag.Model([x, m], ag.multi_head_attention(x, num_heads=4, causal=True,
                                                    key_padding_mask=m, name="attn"))


def mha_case(cross: bool) -> tuple[ag.Model, dict[str, np.ndarray], dict[str, np.ndarray],
                                   np.ndarray]:
    gold = load_golden("torch_mha")
    model = _mha_model(cross)
    params = hf.load_torch_mha(gold["w"], model, name="attn")
    # PyTorch's key_padding_mask is True = ignore; attngraph's is True = attend
    if cross:
        feeds = {"x": gold["in"]["x"], "context": gold["in"]["context"],
                 "context_padding_mask": ~gold["in"]["context_padding_mask"]}
    else:
        feeds = {"x": gold["in"]["x"], "key_padding_mask": ~gold["in"]["key_padding_mask"]}
    return model, params, feeds, gold["out"]["cross" if cross else "self"]


@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
def test_torch_mha_matches_golden(cross: bool, target: str) -> None:
    model, params, feeds, want = mha_case(cross)
    assert_close(model.predict(params, feeds), {"output": want}, "torch_mha/reference")
    assert_close(run_target(model, params, feeds, target), {"output": want},
                 f"torch_mha/{target}")
    assert sum(p.size for p in params.values()) == int(load_golden("torch_mha")["param_count"])


def layer_case(name: str) -> tuple[ag.Model, dict[str, np.ndarray], dict[str, np.ndarray],
                                   np.ndarray]:
    gold = load_golden(name)
    cfg = gold["config"]
    decoder = cfg["module"] == "TransformerDecoderLayer"
    x = ag.input("x", ("batch", "seq", cfg["d_model"]))
    options: dict[str, Any] = {
        "num_heads": cfg["nhead"], "ffn_dim": cfg["dim_feedforward"],
        "norm_position": "pre" if cfg["norm_first"] else "post",
        "activation": cfg["activation"], "norm_eps": cfg["layer_norm_eps"], "name": "layer"}
    if decoder:
        mem = ag.input("memory", ("batch", "mem", cfg["d_model"]))
        m = ag.input("memory_mask", ("batch", "mem"), "bool")
        y = ag.transformer_block(x, mem, causal=True, context_padding_mask=m, **options)
        model = ag.Model([x, mem, m], y)
        feeds = {"x": gold["in"]["x"], "memory": gold["in"]["memory"],
                 "memory_mask": ~gold["in"]["memory_key_padding_mask"]}
    else:
        m = ag.input("mask", ("batch", "seq"), "bool")
        model = ag.Model([x, m], ag.transformer_block(x, key_padding_mask=m, **options))
        feeds = {"x": gold["in"]["x"], "mask": ~gold["in"]["src_key_padding_mask"]}
    params = hf.load_torch_transformer_layer(gold["w"], model, name="layer")
    return model, params, feeds, gold["out"]["output"]


@pytest.mark.parametrize("name", TORCH_LAYERS)
def test_torch_transformer_layer_matches_golden(name: str, target: str) -> None:
    model, params, feeds, want = layer_case(name)
    assert_close(model.predict(params, feeds), {"output": want}, f"{name}/reference")
    assert_close(run_target(model, params, feeds, target), {"output": want}, f"{name}/{target}")
    count = int(load_golden(name)["param_count"])
    assert sum(int(np.prod(s)) for s in model.param_shapes.values()) == count
    assert f"Total parameters: {count:,}" in model.summary()


def test_torch_loader_reports_unmapped_and_missing() -> None:
    gold = load_golden("torch_decoder_pre_relu")
    weights = {k: v for k, v in gold["w"].items() if not k.startswith("norm3.")}
    weights["linear3.weight"] = np.zeros((2, 2), np.float32)
    x = ag.input("x", ("batch", "seq", 32))
    model = ag.Model(x, ag.transformer_block(x, x, num_heads=4, ffn_dim=64, name="layer"))
    with pytest.raises(ag.ParamError) as info:
        hf.load_torch_transformer_layer(weights, model, name="layer")
    text = str(info.value)
    assert "unmapped 'linear3.weight'" in text
    assert "missing 'layer.norm3.scale'" in text and "missing 'layer.norm3.bias'" in text


def test_goldens_are_small_and_complete() -> None:
    names = sorted(f[:-4] for f in os.listdir(GOLDENS)
                   if f.startswith(("hf_", "torch_")) and f.endswith(".npz"))
    assert names == sorted([f"hf_{k}" for k in HF_KINDS] + ["torch_mha", *TORCH_LAYERS])
    for name in names:
        assert os.path.getsize(os.path.join(GOLDENS, f"{name}.npz")) < 200_000, name
        gold = load_golden(name)
        assert gold["w"] and gold["in"] and gold["out"] and int(gold["param_count"]) > 0


def test_golden_scripts_share_one_table_of_configs(monkeypatch) -> None:
    """make_hf_goldens.py takes the GPT-2 / BERT / T5 configs, the classes and the norm epsilon
    from hf_checkpoints.py (one source of truth), and its tables still describe the committed
    hf_*.npz files (the configs transformers recorded in them)."""
    monkeypatch.syspath_prepend(GOLDENS)
    import hf_checkpoints
    import make_hf_goldens

    shared = hf_checkpoints.CHECKPOINTS
    assert make_hf_goldens.HF_CONFIGS["bert"] is shared["bert"]
    assert make_hf_goldens.HF_CONFIGS["t5"] is shared["t5"]
    assert make_hf_goldens.HF_CONFIGS["gpt2"] == {**shared["gpt2"], "n_positions": 16}
    assert make_hf_goldens.NORM_EPS is hf_checkpoints.NORM_EPS
    assert all(make_hf_goldens.HF_CLASSES[k] is hf_checkpoints.CLASSES[k]
               for k in make_hf_goldens.HF_CONFIGS)
    for kind, config in make_hf_goldens.HF_CONFIGS.items():
        with np.load(os.path.join(GOLDENS, f"hf_{kind}.npz"), allow_pickle=False) as data:
            recorded = json.loads(str(data["config"]))
        rope = recorded.get("rope_parameters") or {}  # transformers 5 moves rope_theta there
        for key, value in config.items():
            got = rope.get(key) if key == "rope_theta" and key not in recorded else recorded[key]
            assert got == value, (kind, key, got, value)
