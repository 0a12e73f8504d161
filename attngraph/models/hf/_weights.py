"""Hugging Face and PyTorch weights for attngraph's presets and layers (numpy only).

    from attngraph.models import hf
    model = hf.build_preset("llama", hf_model.config.to_dict())
    state = {k: v.numpy() for k, v in hf_model.state_dict().items()}  # or safetensors.numpy
    params = hf.load_hf_weights("llama", state, model)
    model.predict(params, {"input_ids": ids})["logits"]  # == hf_model(ids).logits

Kinds: "gpt" (alias "gpt2": GPT2LMHeadModel / GPT2Model), "bert" (BertModel), "t5"
(T5ForConditionalGeneration), "llama" (LlamaForCausalLM), "mistral" (MistralForCausalLM),
"qwen2" (Qwen2ForCausalLM), "gemma2" (Gemma2ForCausalLM), "phi3" (Phi3ForCausalLM).

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
  A decoder built with tie_word_embeddings=True has no `lm_head` parameter (its head reads
  the embeddings); one built untied but given no `lm_head.weight` gets the transposed token
  embeddings as its LM head.
- Phi-3's packed `qkv_proj` [(H + 2 Hkv) D, E] splits into query / key / value rows, its
  `gate_up_proj` [2 I, E] into gate (first half) and up (second half).
- Gemma's RMSNorm multiplies by (1 + weight): the norm's `scale` is stored as 1 + weight.
- Buffers that are not parameters (position_ids, causal-mask `attn.bias`, `inv_freq`) are
  skipped. Anything else that has no place in the preset (a task head, biases the preset does
  not have, ...) is an error: every problem is listed in one `ag.ParamError`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..._errors import ParamError
from ..._model import Model
from ..._params import check_params
from ._config import DECODERS, kind_of

# kind -> wrapper prefixes of the HF model classes (stripped before mapping)
_PREFIXES = {"gpt": ("transformer.",), "bert": ("bert.",), "t5": (),
             **{k: ("model.",) for k in DECODERS}}
# buffers (not parameters) that some versions put in the state dict
_BUFFERS = {
    "gpt": (r"h\.\d+\.attn\.(bias|masked_bias)",),
    "bert": (r"embeddings\.(position_ids|token_type_ids)",),
    "t5": (r"decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight",),
    **{k: (r"(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq",) for k in DECODERS},
}


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


def _rules(kind: str, model: Model | None = None) -> list[_Rule]:
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
    layer = r"layers\.(\d+)\."
    rules: list[_Rule] = [
        (r"embed_tokens\.(?P<p>weight)", _same("embed_tokens", _EMB)),
        (layer + r"self_attn\.(q|k|v|o)_proj" + _W, lambda m, a: _linear(
            rf"layers.\1.attn.{_ATTN[m.group(2)]}")(m, a)),
        (layer + r"mlp\.(gate|up|down)_proj" + _W, _linear(r"layers.\1.ffn.\2")),
        (r"norm\.(?P<p>weight)", _same("norm", _NORM)),
        (r"lm_head" + _W, _linear("lm_head")),
    ]
    norms = {"input_layernorm": "norm1", "post_attention_layernorm": "norm2"}
    if kind == "gemma2":
        norms = {"input_layernorm": "norm1", "post_attention_layernorm": "post_attn_norm",
                 "pre_feedforward_layernorm": "norm2", "post_feedforward_layernorm":
                 "post_ffn_norm"}
    for hf_name, ours in norms.items():
        rules.append((layer + hf_name + r"\.(?P<p>weight)", _same(rf"layers.\1.{ours}", _NORM)))
    if kind == "phi3":
        rules += [(layer + r"self_attn\.qkv_proj\.weight", _split_rows(
                      ("attn.query", "attn.key", "attn.value"), model)),
                  (layer + r"mlp\.gate_up_proj\.weight", _split_rows(("ffn.gate", "ffn.up"),
                                                                       model))]
    return rules


def _split_rows(subs: tuple[str, ...], model: Model | None
                ) -> Callable[[re.Match[str], np.ndarray], list[tuple[str, np.ndarray]]]:
    """A packed nn.Linear weight [sum(outs), in] -> one kernel [in, out] per sub-layer, the
    rows split at the sizes the model's kernels have (views, no copy)."""
    def f(m: re.Match[str], a: np.ndarray) -> list[tuple[str, np.ndarray]]:
        names = [f"layers.{m.group(1)}.{sub}.kernel" for sub in subs]
        if model is None or any(n not in model.param_specs for n in names):
            return []
        sizes = [model.param_specs[n][1].shape[1] for n in names]
        if a.ndim != 2 or a.shape[0] != sum(sizes):
            raise ValueError(f"expected a packed [{' + '.join(map(str, sizes))}, in] weight "
                             f"for {', '.join(names)}")
        cuts = np.cumsum(sizes)[:-1]
        return [(n, part.T) for n, part in zip(names, np.split(a, cuts, axis=0))]
    return f


# tied names -> the owner's name in the (prefix-stripped) HF state dict
_TIED: dict[str, dict[str, str]] = {
    "gpt": {"lm_head.weight": "wte.weight"},
    "bert": {},
    "t5": {"encoder.embed_tokens.weight": "shared.weight",
           "decoder.embed_tokens.weight": "shared.weight", "lm_head.weight": "shared.weight"},
}


def _tied(kind: str, model: Model) -> dict[str, str]:
    if kind in DECODERS:  # tie_word_embeddings: the preset has no lm_head of its own
        return {} if "lm_head.kernel" in model.param_specs else \
            {"lm_head.weight": "embed_tokens.weight"}
    return _TIED[kind]


def post_transform(kind: str, name: str) -> Callable[[np.ndarray], np.ndarray] | None:
    """What happens to a parameter after it is read and converted (Gemma: scale = 1 + w)."""
    if kind == "gemma2" and name.endswith(".scale"):  # 1 + w in float32, rounded once
        return lambda a: (a.astype(np.float32) + np.float32(1)).astype(a.dtype)
    return None


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


def spec_problems(params: Mapping[str, np.ndarray], model: Model, source: str,
                  problems: list[str]) -> None:
    """Every name of `params` that the model lacks, every model parameter `params` lacks and
    every shape that differs, appended to `problems`."""
    for name in params:
        if name not in model.param_specs:
            problems.append(f"{name!r} (from the {source}) is not a parameter of the model")
    for name, (node, spec) in model.param_specs.items():
        if name not in params:
            problems.append(f"missing {name!r}: expected f32{list(spec.shape)} "
                            f"({node.op} defined at {node.location}); nothing in the "
                            f"{source} maps to it")
        elif tuple(params[name].shape) != spec.shape:
            problems.append(f"{name!r}: expected shape {list(spec.shape)}, given "
                            f"{list(params[name].shape)} ({node.op} defined at "
                            f"{node.location})")


def raise_problems(who: str, problems: list[str]) -> None:
    if problems:
        raise ParamError(f"{who}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))


def _finish(who: str, params: dict[str, np.ndarray], problems: list[str],
            model: Model | None) -> dict[str, np.ndarray]:
    if model is not None:
        spec_problems(params, model, "state dict", problems)
    raise_problems(who, problems)
    if model is None:
        return {k: v.astype(np.float32, copy=False) for k, v in params.items()}
    try:
        return check_params(model.param_specs, params)
    except ParamError as exc:
        raise ParamError(f"{who}: {exc}") from None


def map_state(kind: str, arrays: Mapping[str, np.ndarray], model: Model, source: str,
              problems: list[str]) -> dict[str, np.ndarray]:
    """HF names -> the model's parameter names, as views of `arrays` (transposed / split,
    never copied); every problem appended to `problems`."""
    k = kind_of(kind)
    arrays = {_strip(k, name): a for name, a in arrays.items()}
    rules = [(re.compile(pattern), fn) for pattern, fn in _rules(k, model)]
    buffers = [re.compile(p) for p in _BUFFERS[k]]
    tied = _tied(k, model)
    params: dict[str, np.ndarray] = {}
    for name, a in arrays.items():
        if any(b.fullmatch(name) for b in buffers):
            continue
        if name in tied:
            owner = tied[name]
            if owner in arrays and not np.array_equal(arrays[owner], a):
                problems.append(f"{name!r} is tied to {owner!r} in the preset, but the "
                                f"{source} gives different values (an untied head cannot "
                                f"load)")
            continue
        mapped = None
        try:
            for pattern, fn in rules:
                m = pattern.fullmatch(name)
                if m is not None:
                    mapped = fn(m, a)
                    if mapped:
                        break
        except ValueError as exc:
            problems.append(f"{name!r} {list(a.shape)}: {exc}")
            continue
        if not mapped:
            problems.append(f"unmapped {name!r} {list(a.shape)}: no parameter of the {k} "
                            f"preset corresponds to it")
            continue
        for target, value in mapped:
            if target in params:
                problems.append(f"{name!r} maps to {target!r}, which is already filled")
            params[target] = value
    if k in DECODERS and "lm_head.kernel" not in params and \
            "embed_tokens.embeddings" in params and "lm_head.kernel" in model.param_specs:
        params["lm_head.kernel"] = params["embed_tokens.embeddings"].T  # a tied checkpoint
    return params


def load_hf_weights(kind: str, state_dict: Mapping[str, Any], model: Model
                    ) -> dict[str, np.ndarray]:
    """Map a Hugging Face state dict (name -> numpy array) onto `model`'s parameter names.

    `model` is the preset built with the same config (`build_preset`, or `ag.models.<kind>`
    with the HF config's values). Returns params for `model.predict` / `ag.export`, checked
    name by name and shape by shape. Raises ParamError listing every HF name that has no
    place in the model, every model parameter that nothing fills, tied weights that differ,
    and shape mismatches, all at once. (`from_pretrained` reads a checkpoint folder.)
    """
    k = kind_of(kind)
    who = f"hf.load_hf_weights({k!r})"
    problems: list[str] = []
    params = map_state(k, _as_arrays(state_dict, who), model, "state dict", problems)
    spec_problems(params, model, "state dict", problems)
    raise_problems(who, problems)
    for name in params:
        post = post_transform(k, name)
        if post is not None:
            params[name] = post(params[name].astype(np.float32))
    try:
        return check_params(model.param_specs, params)
    except ParamError as exc:
        raise ParamError(f"{who}: {exc}") from None
