"""`from_pretrained`: a local Hugging Face checkpoint folder -> (model, params), numpy only."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from ..._checks import require_path
from ..._errors import ConfigError, ParamError, caller_location
from ..._model import Model
from .. import _families
from ._config import kind_of, preset_kwargs
from ._safetensors import DTYPES, bf16_to_f32, read_safetensors
from ._weights import map_state, post_transform, spec_problems

# config.json's model_type -> attngraph's kind
MODEL_TYPES = {"gpt2": "gpt", "bert": "bert", "t5": "t5", "llama": "llama",
               "mistral": "mistral", "qwen2": "qwen2", "gemma2": "gemma2", "phi3": "phi3"}
PARAM_DTYPES = ("float32", "float16")
INDEX = "model.safetensors.index.json"
MAX_LISTED = 60  # problems listed in one error before "... and N more"


class CheckpointParams(Mapping[str, np.ndarray]):
    """A model's parameters, read from the checkpoint when asked for (a read-only Mapping).

    A parameter stored in the requested dtype is a read-only view of the memory-mapped
    safetensors file (transposed or split from the stored tensor, never copied): reading
    `params[name]` costs page faults, and holding the Mapping costs nothing. Any other
    parameter (bf16 stored, float32 stored for float16 asked, Gemma's 1 + w norm scales) is
    converted on each access, one tensor at a time, into a new read-only array; keep the
    result if you need it twice. `dict(params)` converts everything at once.
    """

    def __init__(self, raw: dict[str, np.ndarray], stored: dict[str, str], dtype: str,
                 posts: dict[str, Callable[[np.ndarray], np.ndarray]]) -> None:
        self._raw, self._stored, self._posts = raw, stored, posts
        self.dtype = np.dtype(dtype)

    def __getitem__(self, name: str) -> np.ndarray:
        raw, stored = self._raw[name], self._stored[name]
        out = bf16_to_f32(raw) if stored == "BF16" else raw
        post = self._posts.get(name)
        if post is not None:  # on float32 values, rounded to the dtype once after
            out = post(out.astype(np.float32, copy=False))
        if out.dtype != self.dtype:
            out = out.astype(self.dtype)
        if out is not raw:
            out.setflags(write=False)
        return out

    def __contains__(self, name: object) -> bool:  # without reading (Mapping's would)
        return name in self._raw

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def is_mapped(self, name: str) -> bool:
        """Whether `params[name]` is a view of the file (no conversion on access)."""
        return (self._stored[name] != "BF16" and self._raw[name].dtype == self.dtype
                and name not in self._posts)

    def stored_dtype(self, name: str) -> str:
        """The safetensors dtype the checkpoint stores `name` in ("F32", "BF16", ...)."""
        return self._stored[name]

    def __repr__(self) -> str:
        mapped = sum(self.is_mapped(n) for n in self)
        return (f"<CheckpointParams {len(self)} tensors ({self.dtype}), {mapped} memory-mapped, "
                f"{len(self) - mapped} converted on access>")


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The folder's `config.json` as a dict; ConfigError if it is missing or not JSON."""
    path = require_path(path, "hf.read_config", "path (a checkpoint folder)")
    file = os.path.join(path, "config.json")
    who = f"hf.from_pretrained({os.fspath(path)!r})"
    if not os.path.isdir(os.fspath(path)):
        raise ConfigError(f"{who}: no such directory")
    try:
        with open(file, encoding="utf-8") as f:
            config = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{who}: no config.json in the folder (a Hugging Face checkpoint "
                          f"folder holds config.json and model.safetensors)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{who}: config.json is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{who}: config.json must hold a JSON object")
    return config


def _listing(problems: list[str]) -> str:
    shown = problems[:MAX_LISTED]
    more = [f"... and {len(problems) - MAX_LISTED} more"] if len(problems) > MAX_LISTED else []
    return f"{len(problems)} problem(s):\n  " + "\n  ".join(shown + more)


def _read_tensors(folder: str, problems: list[str]) -> dict[str, tuple[str, np.ndarray]]:
    """Every tensor of model.safetensors, or of the shards model.safetensors.index.json
    lists; missing or corrupt files and tensors the index promises but no shard holds go to
    `problems`."""
    single = os.path.join(folder, "model.safetensors")
    if os.path.isfile(single):
        whole, bad = read_safetensors(single)
        problems += bad
        return whole
    index_path = os.path.join(folder, INDEX)
    if not os.path.isfile(index_path):
        pickled = sorted(f for f in os.listdir(folder) if f.endswith((".bin", ".pt", ".pth")))
        problems.append(f"no model.safetensors or {INDEX} in the folder"
                        + (f" (found {pickled}: pickled torch files are never read)"
                           if pickled else ""))
        return {}
    try:
        with open(index_path, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        problems.append(f"{INDEX} is not a valid index ({type(exc).__name__}: {exc})")
        return {}
    shards: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        shards.setdefault(str(shard), []).append(name)
    tensors: dict[str, tuple[str, np.ndarray]] = {}
    for shard, names in sorted(shards.items()):
        path = os.path.join(folder, shard)
        if os.path.basename(shard) != shard or not os.path.isfile(path):
            problems.append(f"missing shard {shard!r} (the index lists {len(names)} tensors "
                            f"in it, e.g. {min(names)!r})")
            continue
        found, bad = read_safetensors(path)
        problems += bad
        for name in names:
            if name in found:
                tensors[name] = found[name]
            elif not bad:
                problems.append(f"{shard}: no tensor {name!r}, which the index puts there")
    return tensors


def from_pretrained(path: str | os.PathLike[str], *, dtype: str = "float32"
                    ) -> tuple[Model, CheckpointParams]:
    """Load a local Hugging Face checkpoint folder: no torch, no network.

    Reads `config.json` (its `model_type` picks the family: gpt2, bert, t5, llama, mistral,
    qwen2, gemma2, phi3) and `model.safetensors`, or the shards `model.safetensors.index.json`
    lists; float32, float16 and bfloat16 checkpoints. Tied embeddings stay one parameter.

    Args:
        path: the folder (what `save_pretrained` writes).
        dtype: the parameters' dtype, "float32" or "float16".

    Returns:
        (model, params): the preset built from the config, and a `CheckpointParams` Mapping:
        parameters stored in `dtype` are read-only memory-mapped views of the files (never
        copied); the others are converted per tensor when read (bf16 -> f32 by a bit shift).

    Raises:
        ConfigError: no config.json, an unknown model_type, or settings the family cannot
            express (each named by its key), listed together with any file problems.
        ParamError: missing shards, corrupt safetensors files, tensors with no place in the
            model, parameters nothing fills, shape mismatches: all listed at once.
    """
    folder = require_path(path, "hf.from_pretrained", "path (a checkpoint folder)",
                          caller_location())
    who = f"hf.from_pretrained({folder!r})"
    if dtype not in PARAM_DTYPES:
        raise ConfigError(f"{who}: dtype must be one of {list(PARAM_DTYPES)}, given {dtype!r}")
    config = read_config(folder)
    file_problems: list[str] = []
    tensors = _read_tensors(folder, file_problems)
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ConfigError(f"{who}: config.json model_type={model_type!r} is not supported "
                          f"(supported: {', '.join(MODEL_TYPES)})")
    kind = kind_of(MODEL_TYPES[model_type])
    try:
        model = getattr(_families, kind)(**preset_kwargs(kind, config))
    except ConfigError as exc:
        extra = (f"\nThe folder has file problems too: {_listing(file_problems)}"
                 if file_problems else "")
        raise ConfigError(f"{who}: {exc}{extra}") from None
    problems = list(file_problems)
    raw = map_state(kind, {k: a for k, (_, a) in tensors.items()}, model, "checkpoint",
                    problems)
    spec_problems(raw, model, "checkpoint", problems)
    if problems:
        raise ParamError(f"{who}: {_listing(problems)}")
    stored = _stored_dtypes(raw)
    posts = {n: p for n in raw if (p := post_transform(kind, n)) is not None}
    return model, CheckpointParams(raw, stored, dtype, posts)


def _stored_dtypes(raw: dict[str, np.ndarray]) -> dict[str, str]:
    """Each parameter's stored dtype. The reader returns BF16 as raw uint16 bits and accepts
    no U16 tensors, so uint16 means BF16."""
    names = {np.dtype(v): k for k, v in DTYPES.items() if k != "BF16"}
    return {n: "BF16" if a.dtype == np.uint16 else names.get(a.dtype, str(a.dtype))
            for n, a in raw.items()}
