"""Prebuilt models: the Edifice presets and the transformer families, one call each.

Every function returns an `ag.Model` (call `.init(seed)` for parameters). `build(kind, **opts)`
reaches all of them by name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._errors import ConfigError
from . import hf
from ._edifice import (
    attention,
    hybrid,
    hybrid_mlp,
    output_size,
    recommended_defaults,
    sliding_window,
)
from ._families import bert, gemma2, gpt, llama, mistral, phi3, qwen2, t5

BUILDERS: dict[str, Callable[..., Any]] = {
    "attention": attention,
    "sliding_window": sliding_window,
    "hybrid": hybrid,
    "hybrid_mlp": hybrid_mlp,
    "bert": bert,
    "gpt": gpt,
    "t5": t5,
    "llama": llama,
    "mistral": mistral,
    "qwen2": qwen2,
    "gemma2": gemma2,
    "phi3": phi3,
}


def build(kind: str, **opts: Any) -> Any:
    """Build a preset by name: one of `BUILDERS` (Edifice's `build(kind, opts)`)."""
    if kind not in BUILDERS:
        raise ConfigError(f"models.build: unknown kind {kind!r}; expected one of {list(BUILDERS)}")
    return BUILDERS[kind](**opts)


__all__ = ["BUILDERS", "attention", "bert", "build", "gemma2", "gpt", "hf", "hybrid", "hybrid_mlp",
           "llama", "mistral", "output_size", "phi3", "qwen2", "recommended_defaults",
           "sliding_window", "t5"]
