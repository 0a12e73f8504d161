"""Hugging Face `config.json` -> the keyword arguments of attngraph's presets.

Every setting the preset cannot express is collected and raised in one ConfigError naming
the key, never dropped: a different activation, biases a family does not have, a rope-scaling
kind other than "linear" / "llama3", ...

RoPE settings come in two layouts. transformers 4 writes `rope_theta` (and Phi-3's
`partial_rotary_factor`) at the top level and `rope_scaling` as {"type" or "rope_type": ...,
"factor": ...}; transformers 5 writes one `rope_parameters` dict holding `rope_type`,
`rope_theta`, the scaling fields and `partial_rotary_factor`. Both are read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..._errors import ConfigError
from ..._model import Model
from ...ops._rope import SCALING_KINDS, scaling_spec
from .. import _families

KINDS = ("gpt", "bert", "t5", "llama", "mistral", "qwen2", "gemma2", "phi3")
ALIASES = {"gpt2": "gpt"}
DECODERS = ("llama", "mistral", "qwen2", "gemma2", "phi3")  # RoPE decoders with a KV cache


def kind_of(kind: str) -> str:
    k = ALIASES.get(kind, kind)
    if k not in KINDS:
        raise ConfigError(f"hf: unknown kind {kind!r}; expected one of "
                          f"{list(KINDS) + list(ALIASES)}")
    return k


_DECODER_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads", "num_key_value_heads", "rms_norm_eps")
_PRESET_KEYS: dict[str, tuple[str, ...]] = {
    "gpt": ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner",
            "layer_norm_epsilon"),
    "bert": ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
             "intermediate_size", "max_position_embeddings", "type_vocab_size", "layer_norm_eps"),
    "t5": ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers",
           "num_heads", "relative_attention_num_buckets", "relative_attention_max_distance",
           "layer_norm_epsilon"),
    "llama": _DECODER_KEYS,
    "mistral": (*_DECODER_KEYS, "sliding_window", "layer_types"),
    "qwen2": (*_DECODER_KEYS, "use_sliding_window", "sliding_window", "max_window_layers",
              "tie_word_embeddings", "layer_types"),
    "phi3": (*_DECODER_KEYS, "sliding_window", "layer_types"),
    "gemma2": (*_DECODER_KEYS, "head_dim", "attention_bias", "query_pre_attn_scalar",
               "sliding_window", "layer_types", "final_logit_softcapping",
               "attn_logit_softcapping"),
}
# keyword-only options of llama() that mistral / phi3 pass through
_TIE_KINDS = ("llama", "mistral", "phi3")


def rope_settings(cfg: Mapping[str, Any], problems: list[str]
                  ) -> tuple[float, dict[str, Any] | None, float]:
    """(rope_theta, scaling dict or None, partial_rotary_factor) from either layout."""
    params, legacy = cfg.get("rope_parameters"), cfg.get("rope_scaling")
    key, rope = ("rope_parameters", params) if params else ("rope_scaling", legacy or {})
    if not isinstance(rope, dict):
        problems.append(f"{key}={rope!r} (expected a dict)")
        rope = {}
    if rope and all(isinstance(v, dict) for v in rope.values()):  # per layer type (Gemma 3)
        problems.append(f"{key}: one RoPE per layer type ({sorted(rope)}) is not implemented")
        rope = {}
    theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
    partial = rope.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
    scaling = dict(rope)
    if scaling.get("rope_type", scaling.get("type")) == "llama3":
        scaling.setdefault("original_max_position_embeddings",
                           cfg.get("original_max_position_embeddings",
                                   cfg.get("max_position_embeddings")))
    spec, bad = scaling_spec(scaling)
    problems += [f"{key}: {p}" for p in bad]

    def ok(v: Any) -> bool:
        return not isinstance(v, bool) and isinstance(v, (int, float)) and v > 0

    for name, value in (("rope_theta", theta), ("partial_rotary_factor", partial)):
        if not ok(value):
            problems.append(f"{name}={value!r} (expected a positive number)")
    clean = None if spec is None else {"rope_type": spec[0],
                                       **dict(zip(SCALING_KINDS[spec[0]], spec[1:]))}
    return (float(theta) if ok(theta) else 10000.0, clean,
            float(partial) if ok(partial) else 1.0)


def preset_kwargs(kind: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The preset's keyword arguments for a Hugging Face config (`config.to_dict()` or the
    parsed `config.json`).

    Raises ConfigError listing every setting the preset cannot express (another activation,
    biases the family does not have, an unimplemented rope scaling, an untied T5 head, ...)
    rather than building a different model.
    """
    k = kind_of(kind)
    if not isinstance(config, Mapping):
        raise ConfigError(f"hf: config must be a dict (config.json's contents or "
                          f"`config.to_dict()`), given {type(config).__name__}")
    cfg = dict(config)
    problems: list[str] = []

    def need(key: str, allowed: tuple[Any, ...]) -> None:
        if key in cfg and cfg[key] not in allowed:
            problems.append(f"{key}={cfg[key]!r} (supported: {', '.join(map(repr, allowed))})")

    if k == "gpt":
        need("activation_function", ("gelu_new", "gelu_pytorch_tanh"))
        need("scale_attn_weights", (True,))
        need("scale_attn_by_inverse_layer_idx", (False,))
        need("add_cross_attention", (False,))
    elif k == "bert":
        need("hidden_act", ("gelu",))
        need("position_embedding_type", ("absolute",))
        need("is_decoder", (False,))
        need("add_cross_attention", (False,))
    elif k == "t5":
        need("feed_forward_proj", ("relu",))
        need("scale_decoder_outputs", (True,))
        need("tie_word_embeddings", (True,))
    if cfg.get("quantization_config"):
        method = cfg["quantization_config"].get("quant_method", "?") \
            if isinstance(cfg["quantization_config"], dict) else "?"
        problems.append(f"quantization_config (a {method!r}-quantized checkpoint; attngraph "
                        f"reads float32 / float16 / bfloat16 weights)")
    out = {key: cfg[key] for key in _PRESET_KEYS[k] if key in cfg}
    if k in DECODERS:
        out.update(_decoder_kwargs(k, cfg, need, problems))
    if problems:
        raise ConfigError(f"hf.preset_kwargs({k!r}): the preset cannot express "
                          + "; ".join(problems))
    return out


def _decoder_kwargs(k: str, cfg: dict[str, Any], need: Any, problems: list[str]
                    ) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if k == "gemma2":
        need("hidden_activation", ("gelu_pytorch_tanh", "gelu_new"))
        need("hidden_act", ("gelu_pytorch_tanh", "gelu_new"))
        need("tie_word_embeddings", (True,))
        need("use_bidirectional_attention", (None, False))
    else:
        need("hidden_act", ("silu",))
        need("mlp_bias", (False,))
        if k != "qwen2":
            need("attention_bias", (False,))
    theta, scaling, partial = rope_settings(cfg, problems)
    out["rope_theta"] = theta
    if scaling is not None:
        out["rope_scaling"] = scaling
    if k == "phi3":
        out["partial_rotary_factor"] = partial
    elif partial != 1.0:
        problems.append(f"partial_rotary_factor={partial} (supported for phi3 only)")
    if k in _TIE_KINDS and cfg.get("tie_word_embeddings"):
        out["tie_word_embeddings"] = True
    heads, hidden = cfg.get("num_attention_heads"), cfg.get("hidden_size")
    derived = hidden // heads if isinstance(heads, int) and isinstance(hidden, int) else None
    if k != "gemma2" and cfg.get("head_dim") not in (None, derived):
        if k in ("llama", "mistral"):
            out["head_dim"] = cfg["head_dim"]
        else:
            problems.append(f"head_dim={cfg['head_dim']} (supported: hidden_size // "
                            f"num_attention_heads = {derived})")
    if k == "llama" and cfg.get("sliding_window") is not None:
        problems.append("sliding_window (use kind 'mistral')")
    return out


def build_preset(kind: str, config: Mapping[str, Any]) -> Model:
    """The attngraph preset for a Hugging Face config dict (see `preset_kwargs`)."""
    k = kind_of(kind)
    return getattr(_families, k)(**preset_kwargs(k, config))
