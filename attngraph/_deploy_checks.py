"""Argument checks shared by `ag.save_genai` and `ag.save_triton`: each raises ConfigError with
the standard message (naming the function, what was expected, what was given and the user's
line) before anything is written."""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterable, Mapping
from typing import Any

from ._errors import ConfigError, caller_location, layer_message


def fail(where: str, message: str) -> ConfigError:
    """The error to raise for a bad argument to `where` (the user's line appended)."""
    return ConfigError(layer_message(where, None, message, caller_location()))


def check_model(where: str, model: Any, params: Any) -> None:
    """`model` is an ag.Model and `params` a mapping of names to arrays."""
    from ._model import Model

    if not isinstance(model, Model):
        raise fail(where, f"model must be an ag.Model (from ag.Model(...) or ag.models.*), "
                          f"given {type(model).__name__}")
    if not isinstance(params, Mapping):
        raise fail(where, f"params must be a mapping of parameter names to arrays (as from "
                          f"model.init()), given {type(params).__name__}")


def check_path(where: str, what: str, path: Any) -> str:
    """A folder argument: a str or os.PathLike, not empty."""
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise fail(where, f"{what} must be a folder path (str or os.PathLike), given {path!r}")
    out = os.fspath(path)
    if not isinstance(out, str):
        raise fail(where, f"{what} must be a text path, given {path!r}")
    return out


def check_target(where: str, target: Any, dtype: Any) -> None:
    """`target` and `dtype` are ones `ag.export` takes (checked here so nothing is written)."""
    from ._registry import TARGETS
    from ._types import FLOAT_DTYPES

    if not isinstance(target, str) or target not in TARGETS:
        raise fail(where, f"target must be one of {list(TARGETS)}, given {target!r}")
    if not isinstance(dtype, str) or dtype not in FLOAT_DTYPES:
        raise fail(where, f"dtype must be one of {sorted(FLOAT_DTYPES)}, given {dtype!r}")


def check_export_options(where: str, options: Mapping[str, Any], fixed: Iterable[str]) -> None:
    """Every key of `options` is an `ag.export` keyword that `where` does not set itself."""
    from ._export import export

    taken = {"model", "params", "path", *fixed}
    accepted = [k for k in inspect.signature(export).parameters if k not in taken]
    unknown = sorted(k for k in options if k not in accepted)
    if unknown:
        raise fail(where, f"unknown option{'s' if len(unknown) > 1 else ''} {unknown}; "
                          f"it passes these to ag.export: {accepted}")


__all__ = ["check_export_options", "check_model", "check_path", "check_target", "fail"]
