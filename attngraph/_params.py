"""Parameter initialisation, checking, saving and loading (.safetensors or .npz, never pickle)."""

from __future__ import annotations

import os
import zlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ._checks import require_model, require_path
from ._errors import ParamError
from ._io import NpzProblem, atomic_write_bytes, file_mapping, read_npz

if TYPE_CHECKING:
    from ._graph import Node, ParamSpec


def _init_one(spec: ParamSpec, rng: np.random.Generator) -> np.ndarray:
    if spec.init == "zeros":
        return np.zeros(spec.shape, np.float32)
    if spec.init == "ones":
        return np.ones(spec.shape, np.float32)
    if spec.init == "normal":
        return (rng.standard_normal(spec.shape) * 0.02).astype(np.float32)
    if spec.init == "glorot":
        # Xavier/Glorot uniform: U(-a, a), a = sqrt(6 / (fan_in + fan_out)); stacked kernels
        # (leading dims) share the fans of their last two dims.
        fan_in, fan_out = spec.shape[-2], spec.shape[-1]
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, spec.shape).astype(np.float32)
    raise ValueError(f"unknown initialiser {spec.init!r}")


def init_params(specs: Mapping[str, tuple[Node, ParamSpec]], seed: int) -> dict[str, np.ndarray]:
    """One RNG stream per parameter, derived from the seed and the name: adding a layer does not
    change the values of the others."""
    out = {}
    for name, (_, spec) in specs.items():
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        out[name] = _init_one(spec, rng)
    return out


_QUANTIZED = dict.fromkeys("iu", "; integer weights are usually quantized ones: dequantize "
                           "them to float first (e.g. scale * (q - zero_point))")


def _is_float(arr: np.ndarray) -> bool:
    return arr.dtype.kind == "f" or arr.dtype.name == "bfloat16"


def check_params(
    specs: Mapping[str, tuple[Node, ParamSpec]], params: Mapping[str, Any], *, lazy: bool = False
) -> dict[str, np.ndarray]:
    """Check every name, shape and dtype; report all mismatches in one ParamError.

    Float parameters of any width (float16, float64, bfloat16) are converted to float32. Any
    other dtype is refused: an int8/int32/uint8 kernel is most likely a quantized weight, and
    casting it would silently give a different model.

    lazy: (export) read each parameter once to check it, convert nothing, and return only the
        arrays that cost no memory to hold: a plain dict's own values and views of
        memory-mapped files. The caller reads the others again, one at a time, when needed.
    """
    if not isinstance(params, Mapping):
        raise ParamError(f"params must be a dict name -> array, given {type(params).__name__}")
    problems = []
    out: dict[str, np.ndarray] = {}
    for name, (node, spec) in specs.items():
        if name not in params:
            problems.append(f"missing {name!r}: expected f32{list(spec.shape)} "
                            f"({node.op} defined at {node.location})")
            continue
        try:
            arr = np.asarray(params[name])
        except Exception:  # noqa: BLE001 - anything that numpy cannot read is a user mistake
            problems.append(f"{name!r}: not an array (given {type(params[name]).__name__})")
            continue
        if not _is_float(arr):
            hint = _QUANTIZED.get(arr.dtype.kind, "")
            problems.append(f"{name!r}: expected a float array (float16, float32, float64 or "
                            f"bfloat16), given dtype {arr.dtype}{hint} ({node.op} defined at "
                            f"{node.location})")
        elif tuple(arr.shape) != spec.shape:
            problems.append(f"{name!r}: expected shape {list(spec.shape)}, given "
                            f"{list(arr.shape)} ({node.op} defined at {node.location})")
        elif not lazy:
            out[name] = arr.astype(np.float32, copy=False)
        elif type(params) is dict or file_mapping(arr) is not None:
            out[name] = arr
    for name in params:
        if name not in specs:
            problems.append(f"unknown parameter {name!r}")
    if problems:
        raise ParamError(f"{len(problems)} parameter problem(s):\n  " + "\n  ".join(problems))
    return out


def save_params(params: Mapping[str, np.ndarray], path: str | os.PathLike[str]) -> None:
    """Write params to `.safetensors` or `.npz`, atomically.

    Raises ParamError for a name that is not a string, a value that is not a numeric array,
    or a path that ends in neither suffix.
    """
    path = require_path(path, "save_params", error=ParamError)
    if not isinstance(params, Mapping):
        raise ParamError(f"save_params: params must be a dict name -> array, given "
                         f"{type(params).__name__}")
    arrays = {}
    for key, value in sorted(params.items(), key=lambda kv: str(kv[0])):
        arr = np.asarray(value) if isinstance(key, str) else None
        if arr is None or not (arr.dtype.kind in "fiub" or arr.dtype.name == "bfloat16"):
            what = (f"name {key!r} is not a string" if not isinstance(key, str) else
                    f"{key!r} is not a numeric array (given {type(value).__name__}"
                    + (f" of dtype {arr.dtype})" if isinstance(value, np.ndarray) else ")"))
            raise ParamError(f"save_params: {what}")
        arrays[key] = np.ascontiguousarray(arr)
    if path.endswith(".safetensors"):
        from safetensors.numpy import save

        try:
            data = save(arrays)
        except Exception as exc:  # noqa: BLE001 - e.g. a dtype safetensors cannot store
            raise ParamError(f"save_params: safetensors cannot store these arrays: {exc}") from None
    elif path.endswith(".npz"):
        import io

        buf = io.BytesIO()
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        data = buf.getvalue()
    else:
        raise ParamError(f"save_params: path must end in .safetensors or .npz, given {path!r}")
    atomic_write_bytes(path, data, what="save_params")


def load_params(path: str | os.PathLike[str], model: Any = None) -> dict[str, np.ndarray]:
    """Read params from `.safetensors` or `.npz`; with a model, check every name and shape."""
    path = require_path(path, "load_params", error=ParamError)
    if model is not None:
        require_model(model, "load_params", error=ParamError)
    if not os.path.isfile(path):
        raise ParamError(f"load_params: no such file {path!r}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.numpy import load_file

            params = dict(load_file(path))
        elif path.endswith(".npz"):
            params = read_npz(path)
        else:
            raise ParamError(f"load_params: path must end in .safetensors or .npz, given {path!r}")
    except ParamError:
        raise
    except NpzProblem as exc:
        raise ParamError(f"load_params: cannot read {path!r}: it {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a corrupt file is a user mistake, not a crash
        raise ParamError(f"load_params: cannot read {path!r}: {exc}") from None
    if model is not None:
        return check_params(model.param_specs, params)
    return params
