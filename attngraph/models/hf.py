"""Hugging Face and PyTorch weights for attngraph's presets and layers (numpy only).

    from attngraph.models import hf
    model = hf.build_preset("llama", hf_model.config.to_dict())
    state = {k: v.numpy() for k, v in hf_model.state_dict().items()}  # or safetensors.numpy
    params = hf.load_hf_weights("llama", state, model)
    model.predict(params, {"input_ids": ids})["logits"]  # == hf_model(ids).logits

Kinds: "gpt" (alias "gpt2": GPT2LMHeadModel / GPT2Model), "bert" (BertModel), "t5"
(T5ForConditionalGeneration), "llama" (LlamaForCausalLM), "mistral" (MistralForCausalLM).

What the mapping does:
- `torch.nn.Linear` weights are [out, in]; attngraph kernels are [in, out]: transposed.
- GPT-2's `Conv1D` weights are already [in, out]; its fused `c_attn` [E, 3E] is split into
  the query / key / value kernels (columns 0:E, E:2E, 2E:3E), its bias likewise.
- Norm `weight` -> `scale`, `bias` -> `bias`; `nn.Embedding.weight` -> `embeddings`.
- T5's `relative_attention_bias` lives in block 0 of each stack (HF computes the bias there
  and passes it on): it becomes the stack's one `{encoder,decoder}.relative_attention_bias`.
- Tied weights (GPT-2 `lm_head`, T5 `encoder/decoder.embed_tokens` and `lm_head`) are one
  attngraph parameter owned by the embedding; a state dict may list them or not (torch's
  `state_dict()` lists them, `save_pretrained` files do not), but they must equal the owner.
  A Llama / Mistral state dict without `lm_head.weight` (tie_word_embeddings=True) gets the
  transposed token embeddings as its LM head.
- Buffers that are not parameters (position_ids, causal-mask `attn.bias`, `inv_freq`) are
  skipped. Anything else that has no place in the preset (a task head, biases the preset does
  not have, ...) is an error: every problem is listed in one `ag.ParamError`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .._errors import ConfigError, ParamError
from .._model import Model
from .._params import check_params
from . import _families

KINDS = ("gpt", "bert", "t5", "llama", "mistral")
ALIASES = {"gpt2": "gpt"}

# kind -> wrapper prefixes of the HF model classes (stripped before mapping)
_PREFIXES = {"gpt": ("transformer.",), "bert": ("bert.",), "t5": (), "llama": ("model.",),
             "mistral": ("model.",)}
# buffers (not parameters) that some versions put in the state dict
_BUFFERS = {
    "gpt": (r"h\.\d+\.attn\.(bias|masked_bias)",),
    "bert": (r"embeddings\.(position_ids|token_type_ids)",),
    "t5": (r"decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight",),
    "llama": (r"(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq",),
    "mistral": (r"(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq",),
}


def _kind(kind: str) -> str:
    k = ALIASES.get(kind, kind)
    if k not in KINDS:
        raise ConfigError(f"hf: unknown kind {kind!r}; expected one of "
                          f"{list(KINDS) + list(ALIASES)}")
    return k


# -- configs ---------------------------------------------------------------------------------

_PRESET_KEYS = {
    "gpt": ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner",
            "layer_norm_epsilon"),
    "bert": ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
             "intermediate_size", "max_position_embeddings", "type_vocab_size", "layer_norm_eps"),
    "t5": ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers",
           "num_heads", "relative_attention_num_buckets", "relative_attention_max_distance",
           "layer_norm_epsilon"),
    "llama": ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "num_key_value_heads", "rms_norm_eps"),
}
_PRESET_KEYS["mistral"] = (*_PRESET_KEYS["llama"], "sliding_window")


def preset_kwargs(kind: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The preset's keyword arguments for a Hugging Face config (`config.to_dict()`).

    Raises ConfigError for a setting the preset cannot express (another activation, biases
    in Llama, rope scaling, an untied T5 head, ...) rather than building a different model.
    """
    k = _kind(kind)
    cfg = dict(config)
    problems = []

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
    else:
        need("hidden_act", ("silu",))
        need("attention_bias", (False,))
        need("mlp_bias", (False,))
        need("rope_scaling", (None,))
        rope = cfg.get("rope_parameters") or {}
        if rope.get("rope_type", "default") != "default":
            problems.append(f"rope_parameters={rope!r} (supported: rope_type 'default')")
        heads, hidden = cfg.get("num_attention_heads"), cfg.get("hidden_size")
        derived = hidden // heads if isinstance(heads, int) and isinstance(hidden, int) else None
        if cfg.get("head_dim") not in (None, derived):
            problems.append(f"head_dim={cfg['head_dim']} (supported: hidden_size // "
                            f"num_attention_heads = {derived})")
        if k == "llama" and cfg.get("sliding_window") is not None:
            problems.append("sliding_window (use kind 'mistral')")
    if problems:
        raise ConfigError(f"hf.preset_kwargs({k!r}): the preset cannot express "
                          + "; ".join(problems))
    out = {key: cfg[key] for key in _PRESET_KEYS[k] if key in cfg}
    if k in ("llama", "mistral"):
        rope = cfg.get("rope_parameters") or {}
        theta = rope.get("rope_theta", cfg.get("rope_theta"))
        if theta is not None:
            out["rope_theta"] = float(theta)
    return out


def build_preset(kind: str, config: Mapping[str, Any]) -> Model:
    """The attngraph preset for a Hugging Face config dict (see `preset_kwargs`)."""
    k = _kind(kind)
    return getattr(_families, k)(**preset_kwargs(k, config))


# -- state dicts -----------------------------------------------------------------------------

_Rule = tuple[str, Callable[[re.Match[str], np.ndarray], list[tuple[str, np.ndarray]]]]


def _linear(target: str) -> Callable[[re.Match[str], np.ndarray], list[tuple[str, np.ndarray]]]:
    """nn.Linear: weight [out, in] -> kernel [in, out]; bias as is. `target` may use \\1."""
    def f(m: re.Match[str], a: np.ndarray) -> list[tuple[str, np.ndarray]]:
        leaf = "kernel" if m.group("p") == "weight" else "bias"
        return [(f"{m.expand(target)}.{leaf}", a.T if leaf == "kernel" else a)]
    return f


def _same(target: str, leaf_map: Mapping[str, str] | None = None
          ) -> Callable[[re.Match[str], np.ndarray], list[tuple[str, np.ndarray]]]:
    """An array kept as is (Conv1D kernels, norms, embeddings), its leaf renamed."""
    leaf_map = leaf_map or {"weight": "kernel", "bias": "bias"}

    def f(m: re.Match[str], a: np.ndarray) -> list[tuple[str, np.ndarray]]:
        return [(f"{m.expand(target)}.{leaf_map[m.group('p')]}", a)]
    return f


_NORM = {"weight": "scale", "bias": "bias"}
_EMB = {"weight": "embeddings"}


def _split_qkv(m: re.Match[str], a: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """GPT-2 c_attn: Conv1D weight [E, 3E] / bias [3E] -> query, key, value."""
    block = m.group(1)
    leaf = "kernel" if m.group("p") == "weight" else "bias"
    parts = np.split(a, 3, axis=-1)
    return [(f"h.{block}.attn.{sub}.{leaf}", part)
            for sub, part in zip(("query", "key", "value"), parts)]


_W = r"\.(?P<p>weight|bias)"
_ATTN = {"q": "query", "k": "key", "v": "value", "o": "output"}


def _rules(kind: str) -> list[_Rule]:
    if kind == "gpt":
        return [
            (r"wte\.(?P<p>weight)", _same("wte", _EMB)),
            (r"wpe\.(?P<p>weight)", _same("wpe", _EMB)),
            (r"h\.(\d+)\.ln_1" + _W, _same(r"h.\1.norm1", _NORM)),
            (r"h\.(\d+)\.ln_2" + _W, _same(r"h.\1.norm2", _NORM)),
            (r"h\.(\d+)\.attn\.c_attn" + _W, _split_qkv),
            (r"h\.(\d+)\.attn\.c_proj" + _W, _same(r"h.\1.attn.output")),
            (r"h\.(\d+)\.mlp\.c_fc" + _W, _same(r"h.\1.ffn.up")),
            (r"h\.(\d+)\.mlp\.c_proj" + _W, _same(r"h.\1.ffn.down")),
            (r"ln_f" + _W, _same("ln_f", _NORM)),
        ]
    if kind == "bert":
        layer = r"encoder\.layer\.(\d+)\."
        return [
            (r"embeddings\.(word_embeddings|position_embeddings|token_type_embeddings)"
             + r"\.(?P<p>weight)", _same(r"embeddings.\1", _EMB)),
            (r"embeddings\.LayerNorm" + _W, _same("embeddings.LayerNorm", _NORM)),
            (layer + r"attention\.self\.(query|key|value)" + _W,
             _linear(r"encoder.layer.\1.attn.\2")),
            (layer + r"attention\.output\.dense" + _W, _linear(r"encoder.layer.\1.attn.output")),
            (layer + r"attention\.output\.LayerNorm" + _W,
             _same(r"encoder.layer.\1.norm1", _NORM)),
            (layer + r"intermediate\.dense" + _W, _linear(r"encoder.layer.\1.ffn.up")),
            (layer + r"output\.dense" + _W, _linear(r"encoder.layer.\1.ffn.down")),
            (layer + r"output\.LayerNorm" + _W, _same(r"encoder.layer.\1.norm2", _NORM)),
            (r"pooler\.dense" + _W, _linear("pooler.dense")),
        ]
    if kind == "t5":
        def attn(m: re.Match[str], a: np.ndarray) -> list[tuple[str, np.ndarray]]:
            stack, block, which, proj = m.group(1), m.group(2), m.group(3), m.group(4)
            sub = "attn" if which == "SelfAttention" else "cross_attn"
            return [(f"{stack}.block.{block}.{sub}.{_ATTN[proj]}.kernel", a.T)]

        def norm(m: re.Match[str], a: np.ndarray) -> list[tuple[str, np.ndarray]]:
            stack, block, i = m.group(1), m.group(2), int(m.group(3))
            return [(f"{stack}.block.{block}.norm{i + 1}.scale", a)]

        def ffn(m: re.Match[str], a: np.ndarray) -> list[tuple[str, np.ndarray]]:
            stack, block, i, w = m.group(1), m.group(2), int(m.group(3)), m.group(4)
            if (stack == "encoder") != (i == 1):
                return []  # the feed-forward is layer 1 (encoder) or 2 (decoder): no match
            sub = {"wi": "up", "wi_0": "gate", "wi_1": "up", "wo": "down"}[w]
            return [(f"{stack}.block.{block}.ffn.{sub}.kernel", a.T)]

        block = r"(encoder|decoder)\.block\.(\d+)\.layer\."
        return [
            (r"shared\.(?P<p>weight)", _same("shared", _EMB)),
            (r"(encoder|decoder)\.block\.0\.layer\.0\.SelfAttention\.relative_attention_bias"
             + r"\.(?P<p>weight)", _same(r"\1.relative_attention_bias", _EMB)),
            (block + r"\d\.(SelfAttention|EncDecAttention)\.([qkvo])\.weight", attn),
            (block + r"(\d)\.layer_norm\.weight", norm),
            (block + r"(\d)\.DenseReluDense\.(wi|wi_0|wi_1|wo)\.weight", ffn),
            (r"(encoder|decoder)\.final_layer_norm\.(?P<p>weight)",
             _same(r"\1.final_layer_norm", _NORM)),
        ]
    # llama / mistral
    layer = r"layers\.(\d+)\."
    return [
        (r"embed_tokens\.(?P<p>weight)", _same("embed_tokens", _EMB)),
        (layer + r"self_attn\.(q|k|v|o)_proj" + _W, lambda m, a: _linear(
            rf"layers.\1.attn.{_ATTN[m.group(2)]}")(m, a)),
        (layer + r"mlp\.(gate|up|down)_proj" + _W, _linear(r"layers.\1.ffn.\2")),
        (layer + r"input_layernorm\.(?P<p>weight)", _same(r"layers.\1.norm1", _NORM)),
        (layer + r"post_attention_layernorm\.(?P<p>weight)", _same(r"layers.\1.norm2", _NORM)),
        (r"norm\.(?P<p>weight)", _same("norm", _NORM)),
        (r"lm_head" + _W, _linear("lm_head")),
    ]


# tied names -> the owner's name in the (prefix-stripped) HF state dict
_TIED = {
    "gpt": {"lm_head.weight": "wte.weight"},
    "bert": {},
    "t5": {"encoder.embed_tokens.weight": "shared.weight",
           "decoder.embed_tokens.weight": "shared.weight", "lm_head.weight": "shared.weight"},
    "llama": {},
    "mistral": {},
}


def _strip(kind: str, name: str) -> str:
    for prefix in _PREFIXES[kind]:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def _as_arrays(state_dict: Mapping[str, Any], who: str) -> dict[str, np.ndarray]:
    if not isinstance(state_dict, Mapping):
        raise ParamError(f"{who}: state_dict must be a dict name -> array, given "
                         f"{type(state_dict).__name__}")
    out, bad = {}, []
    for name, value in state_dict.items():
        try:
            out[name] = np.asarray(value)
        except Exception:  # noqa: BLE001 - anything numpy cannot read is a user mistake
            bad.append(f"{name!r}: not an array (given {type(value).__name__}; pass numpy "
                       f"arrays, e.g. tensor.detach().cpu().numpy())")
    if bad:
        raise ParamError(f"{who}: {len(bad)} problem(s):\n  " + "\n  ".join(bad))
    return out


def _finish(who: str, params: dict[str, np.ndarray], problems: list[str],
            model: Model | None) -> dict[str, np.ndarray]:
    if model is not None:
        for name in params:
            if name not in model.param_specs:
                problems.append(f"{name!r} (from the state dict) is not a parameter of the "
                                f"model")
        for name, (node, spec) in model.param_specs.items():
            if name not in params:
                problems.append(f"missing {name!r}: expected f32{list(spec.shape)} "
                                f"({node.op} defined at {node.location}); nothing in the "
                                f"state dict maps to it")
            elif tuple(params[name].shape) != spec.shape:
                problems.append(f"{name!r}: expected shape {list(spec.shape)}, given "
                                f"{list(params[name].shape)} ({node.op} defined at "
                                f"{node.location})")
    if problems:
        raise ParamError(f"{who}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    if model is None:
        return {k: v.astype(np.float32, copy=False) for k, v in params.items()}
    try:
        return check_params(model.param_specs, params)
    except ParamError as exc:
        raise ParamError(f"{who}: {exc}") from None


def load_hf_weights(kind: str, state_dict: Mapping[str, Any], model: Model
                    ) -> dict[str, np.ndarray]:
    """Map a Hugging Face state dict (name -> numpy array) onto `model`'s parameter names.

    `model` is the preset built with the same config (`build_preset`, or `ag.models.<kind>`
    with the HF config's values). Returns params for `model.predict` / `ag.export`, checked
    name by name and shape by shape. Raises ParamError listing every HF name that has no
    place in the model, every model parameter that nothing fills, tied weights that differ,
    and shape mismatches, all at once.
    """
    k = _kind(kind)
    who = f"hf.load_hf_weights({k!r})"
    arrays = {_strip(k, name): a for name, a in _as_arrays(state_dict, who).items()}
    rules = [(re.compile(pattern), fn) for pattern, fn in _rules(k)]
    buffers = [re.compile(p) for p in _BUFFERS[k]]
    params: dict[str, np.ndarray] = {}
    problems: list[str] = []
    for name, a in arrays.items():
        if any(b.fullmatch(name) for b in buffers):
            continue
        if name in _TIED[k]:
            owner = _TIED[k][name]
            if owner in arrays and not np.array_equal(arrays[owner], a):
                problems.append(f"{name!r} is tied to {owner!r} in the preset, but the state "
                                f"dict gives different values (an untied head cannot load)")
            continue
        mapped = None
        for pattern, fn in rules:
            m = pattern.fullmatch(name)
            if m is not None:
                mapped = fn(m, a)
                if mapped:
                    break
        if not mapped:
            problems.append(f"unmapped {name!r} {list(a.shape)}: no parameter of the {k} "
                            f"preset corresponds to it")
            continue
        for target, value in mapped:
            if target in params:
                problems.append(f"{name!r} maps to {target!r}, which is already filled")
            params[target] = value
    if k in ("llama", "mistral") and "lm_head.kernel" not in params and \
            "embed_tokens.embeddings" in params and "lm_head.kernel" in model.param_specs:
        params["lm_head.kernel"] = params["embed_tokens.embeddings"].T  # tie_word_embeddings
    return _finish(who, params, problems, model)


# -- torch.nn modules ------------------------------------------------------------------------


def _mha_params(arrays: dict[str, np.ndarray], prefix: str, name: str,
                used: set[str], problems: list[str]) -> dict[str, np.ndarray]:
    """nn.MultiheadAttention's parameters under `prefix` -> `{name}.query/key/value/output`."""
    out: dict[str, np.ndarray] = {}
    subs = ("query", "key", "value")
    if f"{prefix}in_proj_weight" in arrays:
        w = arrays[f"{prefix}in_proj_weight"]
        used.add(f"{prefix}in_proj_weight")
        if w.ndim != 2 or w.shape[0] % 3:
            problems.append(f"{prefix}in_proj_weight: expected [3E, E], given {list(w.shape)}")
            return out
        for sub, part in zip(subs, np.split(w, 3, axis=0)):
            out[f"{name}.{sub}.kernel"] = part.T
    else:  # kdim / vdim != embed_dim: separate projections
        for sub, short in zip(subs, "qkv"):
            key = f"{prefix}{short}_proj_weight"
            if key in arrays:
                used.add(key)
                out[f"{name}.{sub}.kernel"] = arrays[key].T
            else:
                problems.append(f"missing {key!r} (or {prefix}in_proj_weight)")
    if f"{prefix}in_proj_bias" in arrays:
        used.add(f"{prefix}in_proj_bias")
        for sub, part in zip(subs, np.split(arrays[f"{prefix}in_proj_bias"], 3)):
            out[f"{name}.{sub}.bias"] = part
    for leaf, target in (("weight", "kernel"), ("bias", "bias")):
        key = f"{prefix}out_proj.{leaf}"
        if key in arrays:
            used.add(key)
            out[f"{name}.output.{target}"] = arrays[key].T if leaf == "weight" else arrays[key]
    for key in (f"{prefix}bias_k", f"{prefix}bias_v"):
        if key in arrays:
            used.add(key)
            problems.append(f"{key!r}: add_bias_kv=True has no attngraph equivalent")
    return out


def _unused(arrays: Mapping[str, np.ndarray], used: set[str], prefix: str) -> list[str]:
    return [f"unmapped {k!r} {list(a.shape)}" for k, a in arrays.items()
            if k.startswith(prefix) and k not in used]


def load_torch_mha(state_dict: Mapping[str, Any], model: Model | None = None, *,
                   name: str, prefix: str = "") -> dict[str, np.ndarray]:
    """`torch.nn.MultiheadAttention` weights -> `ag.multi_head_attention(..., name=name)`.

    `in_proj_weight` [3E, E] splits into the query / key / value kernels (transposed to
    [E, E] each), `in_proj_bias` likewise; `out_proj` becomes `output`. `prefix` selects a
    submodule's keys (e.g. "self_attn."). With `model`, the result is checked against all of
    the model's parameters. Note PyTorch's key_padding_mask is True = ignore, attngraph's is
    True = attend: pass `~mask`.
    """
    who = f"hf.load_torch_mha({name!r})"
    arrays = _as_arrays(state_dict, who)
    used: set[str] = set()
    problems: list[str] = []
    params = _mha_params(arrays, prefix, name, used, problems)
    problems += _unused(arrays, used, prefix)
    return _finish(who, params, problems, model)


def load_torch_transformer_layer(state_dict: Mapping[str, Any], model: Model | None = None, *,
                                 name: str, prefix: str = "") -> dict[str, np.ndarray]:
    """`torch.nn.TransformerEncoderLayer` / `TransformerDecoderLayer` weights ->
    `ag.transformer_block(..., name=name)`.

    self_attn -> `{name}.attn`, multihead_attn -> `{name}.cross_attn`, linear1 / linear2 ->
    `{name}.ffn.up` / `.down`, norm1..3 -> `{name}.norm1..3`. Build the block with the same
    `norm_position` ("pre" for norm_first=True, else "post"), `activation`, `norm_eps`
    (layer_norm_eps) and, for a decoder, `causal=True` (tgt_mask) and `context=memory`.
    """
    who = f"hf.load_torch_transformer_layer({name!r})"
    arrays = _as_arrays(state_dict, who)
    used: set[str] = set()
    problems: list[str] = []
    params = _mha_params(arrays, f"{prefix}self_attn.", f"{name}.attn", used, problems)
    if any(k.startswith(f"{prefix}multihead_attn.") for k in arrays):
        params.update(_mha_params(arrays, f"{prefix}multihead_attn.", f"{name}.cross_attn",
                                  used, problems))
    for torch_name, ag_name in (("linear1", "ffn.up"), ("linear2", "ffn.down"),
                                ("norm1", "norm1"), ("norm2", "norm2"), ("norm3", "norm3")):
        for leaf in ("weight", "bias"):
            key = f"{prefix}{torch_name}.{leaf}"
            if key not in arrays:
                continue
            used.add(key)
            a = arrays[key]
            if torch_name.startswith("linear"):
                params[f"{name}.{ag_name}.{'kernel' if leaf == 'weight' else 'bias'}"] = \
                    a.T if leaf == "weight" else a
            else:
                params[f"{name}.{ag_name}.{_NORM[leaf]}"] = a
    problems += _unused(arrays, used, prefix)
    return _finish(who, params, problems, model)


__all__ = ["ALIASES", "KINDS", "build_preset", "load_hf_weights", "load_torch_mha",
           "load_torch_transformer_layer", "preset_kwargs"]
