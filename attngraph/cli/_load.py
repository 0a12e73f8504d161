"""Loading a model (and maybe its params) from the user's Python file: `FILE.py[:NAME]`."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import inspect
import os
import re
import sys
import traceback
from collections.abc import Iterator, Mapping
from types import ModuleType
from typing import Any, NoReturn

import numpy as np

from .._errors import AttnGraphError
from .._model import Model
from .._params import load_params
from ._common import CLIError
from ._hf import is_hf, load_hf

DEFAULT_NAMES = ("build", "model")
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

Params = dict[str, np.ndarray]


def split_spec(spec: str) -> tuple[str, str | None]:
    """`FILE.py:NAME` -> (FILE.py, NAME); `FILE.py` -> (FILE.py, None).

    Only a trailing `:identifier` counts as NAME, so `C:\\models\\m.py` stays a path.
    """
    path, sep, name = spec.rpartition(":")
    if sep and path and name.isidentifier():
        return path, name
    return spec, None


def require_file(path: str, what: str) -> None:
    """Raise CLIError unless `path` is an existing file; `what` says which argument it was."""
    if not os.path.exists(path):
        raise CLIError(f"no such file {path!r} ({what})")
    if not os.path.isfile(path):
        raise CLIError(f"{path!r} is not a file ({what})")


@contextlib.contextmanager
def _module_from_file(path: str) -> Iterator[ModuleType]:
    """Execute a Python file as a throwaway module.

    The module sits in `sys.modules` and its folder on `sys.path` only while the `with` block
    runs (so the file can import its neighbours and define dataclasses); both are restored after.
    """
    abspath = os.path.abspath(path)
    stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    mod_name = f"_attngraph_cli_{stem}"
    spec = importlib.util.spec_from_file_location(mod_name, abspath)
    if spec is None or spec.loader is None:
        raise CLIError(f"cannot load {path!r} as a Python module")
    module = importlib.util.module_from_spec(spec)
    folder = os.path.dirname(abspath)
    previous = sys.modules.get(mod_name)
    sys.modules[mod_name] = module
    sys.path.insert(0, folder)
    try:
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - sorted into user mistake or bug below
            _raise_user_failure(exc, path, f"running {path}")
        yield module
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(folder)
        if previous is None:
            sys.modules.pop(mod_name, None)
        else:
            sys.modules[mod_name] = previous


def _raise_user_failure(exc: Exception, path: str, doing: str) -> NoReturn:
    """Turn an exception from the user's code into a CLIError naming file:line.

    attngraph's own errors pass through unchanged. An exception whose innermost frame lies in
    attngraph but is not an AttnGraphError is a bug in attngraph: it propagates untouched.
    """
    if isinstance(exc, (AttnGraphError, CLIError)):
        raise exc
    if isinstance(exc, SyntaxError):
        where = f"{os.path.basename(exc.filename or path)}:{exc.lineno}"
        raise CLIError(f"{where}: SyntaxError: {exc.msg}") from None
    frames = traceback.extract_tb(exc.__traceback__)
    if frames and os.path.abspath(frames[-1].filename).startswith(_PACKAGE_DIR + os.sep):
        raise exc
    abspath = os.path.abspath(path)
    mine = [f for f in frames if os.path.abspath(f.filename) == abspath]
    frame = mine[-1] if mine else (frames[-1] if frames else None)
    where = f"{os.path.basename(frame.filename)}:{frame.lineno}" if frame else path
    raise CLIError(f"{where}: {type(exc).__name__}: {exc} (while {doing})") from None


def _candidates(module: ModuleType) -> list[str]:
    """Module-level names that look like a model or a model-building function."""
    out = []
    for key, value in vars(module).items():
        if key.startswith("_"):
            continue
        defined_here = inspect.isfunction(value) and value.__module__ == module.__name__
        if defined_here or _as_model(value) is not None:
            out.append(key)
    return out


def _as_model(obj: Any) -> tuple[Model, Any] | None:
    """(model, params-or-None) when `obj` is one of the accepted shapes, else None."""
    if isinstance(obj, Model):
        return obj, None
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], Model):
        return obj[0], obj[1]
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Model):
        return obj["model"], obj.get("params")
    return None


def _resolve(obj: Any, label: str, path: str) -> tuple[Model, Params | None]:
    if not isinstance(obj, Model) and callable(obj):
        try:
            required = [p.name for p in inspect.signature(obj).parameters.values()
                        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        except (TypeError, ValueError):
            required = []
        if required:
            raise CLIError(f"{label} needs argument(s) {required}; the CLI calls it with none "
                           "(give them defaults)")
        try:
            obj = obj()
        except Exception as exc:  # noqa: BLE001 - sorted into user mistake or bug
            _raise_user_failure(exc, path, f"calling {label}")
        label = f"{label}()"
    found = _as_model(obj)
    if found is None:
        raise CLIError(f"{label} is of type {type(obj).__name__}; expected an ag.Model, a tuple "
                       "(model, params), a dict {'model': ..., 'params': ...} or a function "
                       "returning one")
    model, params = found
    if params is not None and not isinstance(params, Mapping):
        raise CLIError(f"{label} gives params of type {type(params).__name__}; expected a dict "
                       "name -> array")
    return model, (dict(params) if params is not None else None)


def load_model(spec: str) -> tuple[Model, Mapping[str, np.ndarray] | None]:
    """Load `FILE.py[:NAME]` and return (model, params given by the file or None); or load
    `hf:DIR`, a Hugging Face checkpoint folder, with its (memory-mapped) params."""
    if is_hf(spec):
        return load_hf(spec)
    path, name = split_spec(spec)
    require_file(path, "the model file, FILE.py[:NAME]")
    if not path.endswith(".py"):
        raise CLIError(f"{path!r} is not a Python file; pass the .py file that defines the "
                       "model (FILE.py[:NAME])")
    with _module_from_file(path) as module:
        names = (name,) if name else DEFAULT_NAMES
        for key in names:
            if hasattr(module, key):
                return _resolve(getattr(module, key), f"{path}:{key}", path)
        found = _candidates(module)
        hint = f" (it defines: {', '.join(found)})" if found else ""
        wanted = repr(name) if name else "neither 'build' nor 'model'"
        if name:
            raise CLIError(f"{path} has no module-level name {wanted}{hint}")
        raise CLIError(f"{path} defines {wanted}; name the model as {path}:NAME{hint}")


def model_and_params(args: argparse.Namespace) -> tuple[Model, Mapping[str, np.ndarray]]:
    """The model of `args.model` and its params: --params, else the file's, else init(seed)."""
    model, params = load_model(args.model)
    if args.params is not None:
        return model, load_params(args.params, model)
    return model, params if params is not None else model.init(seed=args.seed)
