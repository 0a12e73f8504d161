"""`ag.save_genai`: a folder that onnxruntime-genai's `og.Model(folder)` loads and generates with.

The folder holds `model.onnx` (a cached decoder, `export(..., kv_cache=True)`; external data
beside it when large), `genai_config.json` and, when a tokenizer folder is given, its tokenizer
files. The config is onnxruntime-genai's decoder-only layout: sizes, the input/output names
with `%d` for the layer, bos/eos/pad ids, search defaults and `past_present_share_buffer`,
which is true exactly when the export uses the shared past/present buffer (DESIGN §10).

Facts about onnxruntime-genai 0.18 (CPU; its src/config.cpp, models/kv_cache.cpp,
models/windowed_kv_cache.cpp and models/position_inputs.cpp) that shape the file:
- with the shared buffer it allocates every cache at `search.max_length` and feeds the
  attention mask [batch, current length]; the shared form reads each row's token count from it.
- `decoder.sliding_window` takes `window_size`, `layers` (the windowed layers' indices),
  `slide_key_value_cache`, `slide_inputs`, `alignment`, `pad_value` and `cache_slack`. Sliding
  the inputs or the cache (both default true) makes genai feed the prompt in window-sized
  chunks into a cache it trims itself, so both are written false. It then sizes each listed
  layer's cache at min(window_size + slack, max_length), slack being `cache_slack` or, when 0,
  16 on CPU: a size meant for GroupQueryAttention's `sliding_window_cache=1`, which evicts old
  positions inside the buffer. attngraph's shared buffer keeps every position and applies the
  window in the op (`local_window_size`), so the block states `cache_slack` = the context
  length: every listed layer's buffer then holds the whole sequence (measured: with the
  default slack, presents of window + 16 positions against the 22 the op computes).
- without the shared buffer it allocates a listed layer's present at min(total, window_size +
  slack), slack >= 1, while attngraph's copying export keeps exactly the last `window`
  positions of a windowed layer (measured with window_size = window: a present of 6 positions
  allocated for the 5 the model computes). With both slides off, `window_size` only sizes those
  caches (the model applies its own window), so the copying form's block states window_size =
  window - 1 and cache_slack = 1: genai's cache is then exactly the model's.
- a padded batch is read from `pad_token_id`: genai marks a row's trailing pad tokens with
  mask 0 and counts every token before the row's last non-pad one, leading pads included, as
  real. So genai takes right-padded batches (pads after each row's tokens); their greedy tokens
  equal `ag.generate`'s on the same rows left-padded with a mask. A left-padded batch is read
  as if its pads were tokens.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from ._decode import cache_layers, share_buffer_choice
from ._deploy_checks import check_export_options, check_model, check_path, check_target, fail
from ._errors import ConfigError, ExportError, UnsupportedError
from ._io import atomic_write_bytes
from ._model import Model

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model",
                   "vocab.txt", "generation_config.json")
# onnxruntime-genai model types that run a plain decoder-only graph like attngraph's
_GENAI_TYPES = ("llama", "mistral", "qwen2", "gemma2", "phi3")
_DEFAULT_CONTEXT = 4096


def save_genai(model: Model, params: Mapping[str, np.ndarray], out_dir: str | os.PathLike[str],
               *, target: str = "ort", dtype: str = "float32",
               tokenizer: str | os.PathLike[str] | None = None,
               context_length: int | None = None, bos_token_id: int | None = None,
               eos_token_id: int | list[int] | None = None, pad_token_id: int | None = None,
               **export_options: Any) -> str:
    """Write an onnxruntime-genai model folder for a causal language model.

    Args:
        model, params: the decoder (one int input of token ids, one logits output).
        out_dir: the folder to write (created if missing; files in it are replaced).
        target, dtype: as in `ag.export`; onnxruntime-genai runs "ort" exports.
        tokenizer: a folder holding Hugging Face tokenizer files (`tokenizer.json`, ...); they
            are copied, and its `generation_config.json` / `config.json` give the token ids.
        context_length: the longest sequence (default: the learned position table's length,
            else 4096); also the default `search.max_length`.
        bos_token_id, eos_token_id, pad_token_id: override the ids read from `tokenizer`
            (default 0; pad defaults to eos, as in Hugging Face's generate).
        **export_options: passed to `ag.export` (`opset`; `share_buffer`, default True
            wherever the export can share its cache buffers, windowed models included).

    Returns:
        The folder's path.

    Raises (all before anything is written, but for the folder's own write errors):
        ConfigError: an argument of the wrong type or value (model, params, out_dir,
            tokenizer, target, dtype, a token id, context_length) or an option `ag.export`
            does not take.
        ExportError: the folder cannot be written, or `tokenizer` has no tokenizer file.
        UnsupportedError: not a cached decoder, or layers of different head counts or window
            sizes (genai's config holds one of each).
    """
    from ._export import export

    check_model("save_genai", model, params)
    out = check_path("save_genai", "out_dir", out_dir)
    if tokenizer is not None and not isinstance(tokenizer, (str, os.PathLike)):
        raise fail("save_genai", f"tokenizer must be a folder path or None, given {tokenizer!r}")
    check_target("save_genai", target, dtype)
    check_export_options("save_genai", export_options,
                         ("target", "dtype", "kv_cache", "streaming"))
    layers = cache_layers(model, "save_genai")
    heads = {(x.node.attrs["num_heads"], x.kv_heads, x.head_dim) for x in layers}
    if len(heads) != 1:
        raise UnsupportedError(f"save_genai: onnxruntime-genai needs the same (heads, kv_heads, "
                               f"head_dim) in every layer, given {sorted(heads)}")
    (num_heads, kv_heads, head_dim), = heads
    shared = share_buffer_choice(layers, target, export_options.pop("share_buffer", None),
                                 "save_genai")
    windows = sorted({x.window for x in layers if x.window is not None})
    if windows == [1] and not shared:
        raise UnsupportedError("save_genai: a window of 1 needs share_buffer=True: the copying "
                               "form states window_size = window - 1, and genai reads 0 as no "
                               "window")
    if len(windows) > 1:
        raise UnsupportedError(f"save_genai: genai_config.json's sliding_window block holds one "
                               f"window size, the model's layers use {windows}")
    ids = _token_ids(tokenizer, bos_token_id, eos_token_id, pad_token_id)
    vocab = model.output_types[next(iter(model.output_types))].shape[-1]
    if not isinstance(vocab, int):
        raise UnsupportedError(f"save_genai: the logits need a fixed vocabulary size, given "
                               f"{model.output_types[next(iter(model.output_types))]}")
    for key, value in ids.items():
        if any(not 0 <= v < vocab for v in (value if isinstance(value, list) else [value])):
            raise ConfigError(f"save_genai: {key} must be a token id in 0..{vocab - 1} (the "
                              f"model's vocabulary), given {value!r}")
    # checked before anything is written, so a bad folder leaves no half-made output
    tokenizer_files = None if tokenizer is None else _tokenizer_files(os.fspath(tokenizer))
    context = context_length if context_length is not None else _context(model)
    if isinstance(context, bool) or not isinstance(context, int) or context < 1:
        raise ConfigError(f"save_genai: context_length must be an int >= 1, given {context!r}")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"save_genai: cannot create {out!r}: {exc.strerror}") from None
    export(model, params, os.path.join(out, "model.onnx"), target=target, dtype=dtype,
           kv_cache=True, share_buffer=shared, **export_options)
    config = _config(model, vocab, layers[0].node.attrs["embed_dim"], num_heads, kv_heads,
                     head_dim, len(layers), context, ids, shared)
    if windows:  # see the module docstring for why these values
        # shared: every position stays resident; copying: genai's cache = the model's window
        size, slack = (windows[0], context) if shared else (windows[0] - 1, 1)
        config["model"]["decoder"]["sliding_window"] = {
            "window_size": size, "layers": [i for i, x in enumerate(layers) if x.window],
            "slide_key_value_cache": False, "slide_inputs": False, "cache_slack": slack}
    text = json.dumps(config, indent=2) + "\n"
    atomic_write_bytes(os.path.join(out, "genai_config.json"), text.encode(), what="save_genai")
    if tokenizer_files is not None:
        for src in tokenizer_files:
            with open(src, "rb") as f:
                atomic_write_bytes(os.path.join(out, os.path.basename(src)), f.read(),
                                   what="save_genai")
    return out


def _config(model: Model, vocab: int, hidden: int, heads: int, kv_heads: int, head_dim: int,
            n_layers: int, context: int, ids: dict[str, Any], shared: bool) -> dict:
    decoder: dict[str, Any] = {
        "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
        "filename": "model.onnx",
        "head_size": head_dim,
        "hidden_size": hidden,
        "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                   "past_key_names": "past_key_values.%d.key",
                   "past_value_names": "past_key_values.%d.value"},
        "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value"},
        "num_attention_heads": heads,
        "num_hidden_layers": n_layers,
        "num_key_value_heads": kv_heads,
    }
    return {
        "model": {"type": model.name if model.name in _GENAI_TYPES else "llama",
                  "vocab_size": int(vocab), "context_length": context, **ids,
                  "decoder": decoder},
        "search": {"do_sample": False, "early_stopping": True, "max_length": context,
                   "min_length": 0, "num_beams": 1, "num_return_sequences": 1,
                   "past_present_share_buffer": shared, "repetition_penalty": 1.0,
                   "temperature": 1.0, "top_k": 1, "top_p": 1.0},
    }


def _context(model: Model) -> int:
    for layer in model.config()["layers"]:
        if layer["op"] == "positional_encoding" and layer.get("kind") == "learned":
            return int(layer["max_len"])
    return _DEFAULT_CONTEXT


def _token_ids(tokenizer: Any, bos: Any, eos: Any, pad: Any) -> dict[str, Any]:
    """bos/eos/pad ids: given ones first, then the tokenizer folder's generation_config.json,
    then its config.json; else 0 (onnxruntime-genai needs ids inside the vocabulary)."""
    found: dict[str, Any] = {}
    if tokenizer is not None:
        for name in ("config.json", "generation_config.json"):  # later files win
            path = os.path.join(os.fspath(tokenizer), name)
            if os.path.isfile(path):
                try:
                    with open(path) as f:
                        data = json.load(f)
                except (OSError, ValueError) as exc:
                    raise ConfigError(f"save_genai: cannot read {path!r}: {exc}") from None
                found.update({k: data[k] for k in ("bos_token_id", "eos_token_id",
                                                    "pad_token_id") if data.get(k) is not None})
    given = {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad}
    found.update({k: v for k, v in given.items() if v is not None})
    ids = {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": None, **found}
    if ids["pad_token_id"] is None:  # Hugging Face's generate pads with eos when pad is unset
        eos_ids = ids["eos_token_id"]
        ids["pad_token_id"] = eos_ids[0] if isinstance(eos_ids, list) else eos_ids
    for key, value in ids.items():
        values = value if isinstance(value, list) else [value]
        if not values or any(isinstance(v, bool) or not isinstance(v, int) for v in values):
            raise ConfigError(f"save_genai: {key} must be an int (eos: or a list of ints), "
                              f"given {value!r}")
    return ids


def _tokenizer_files(src: str) -> list[str]:
    """The tokenizer files in the folder `src` to copy (at least one tokenizer file)."""
    if not os.path.isdir(src):
        raise ExportError(f"save_genai: tokenizer {src!r} is not a folder")
    names = [n for n in TOKENIZER_FILES if os.path.isfile(os.path.join(src, n))]
    if not any(n in names for n in ("tokenizer.json", "tokenizer.model", "vocab.json",
                                    "vocab.txt")):
        raise ExportError(f"save_genai: {src!r} holds no tokenizer file (looked for "
                          f"tokenizer.json, tokenizer.model, vocab.json, vocab.txt)")
    return [os.path.join(src, n) for n in names]


__all__ = ["TOKENIZER_FILES", "save_genai"]
