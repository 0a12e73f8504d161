"""`hf:DIR` as a model source: a local Hugging Face checkpoint folder (config.json +
safetensors), read by `ag.models.hf.from_pretrained` (memory-mapped, no torch)."""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from .._model import Model
from ..models.hf import from_pretrained
from ._common import CLIError

PREFIX = "hf:"


def is_hf(spec: str) -> bool:
    """Whether a model argument names a checkpoint folder (`hf:DIR`)."""
    return spec.startswith(PREFIX)


def load_hf(spec: str) -> tuple[Model, Mapping[str, np.ndarray]]:
    """(model, params) of `hf:DIR`; the params stay lazy (see `CheckpointParams`)."""
    folder = spec[len(PREFIX):]
    if not folder:
        raise CLIError("hf: needs a folder, e.g. hf:path/to/checkpoint")
    if not os.path.isdir(folder):
        raise CLIError(f"no such folder {folder!r} (hf:DIR names a Hugging Face checkpoint "
                       "folder holding config.json and model.safetensors)")
    return from_pretrained(folder)


def folder_name(spec: str) -> str:
    """The checkpoint folder's own name (`hf:models/llama/` -> "llama")."""
    return os.path.basename(os.path.normpath(spec[len(PREFIX):]))
