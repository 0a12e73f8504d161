"""Checking feeds (names, dtypes, shapes, finiteness) against a model's declared inputs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ._errors import FeedError
from ._types import TensorType

_KIND = {"float32": "f", "float16": "f", "int64": "iu", "int32": "iu", "bool": "b"}


# The input names of attngraph's caches, which may hold no position: a cached decoder's past
# keys / values before the first token, a step model's state before the first frame.
PAST_PREFIX = "past_key_values."
STATE_PREFIX = "state."


def check_feeds(
    inputs: Mapping[str, TensorType], feeds: Mapping[str, Any], *, check_finite: bool = False,
    where: str = "predict", refuse_empty: bool = True,
) -> dict[str, np.ndarray]:
    """Return the feeds as arrays of the declared dtypes, or raise one FeedError naming every
    problem: missing or unknown names, wrong dtype kind, wrong rank or size, a symbolic dim
    bound to two sizes, an empty input other than attngraph's caches (when `refuse_empty`:
    attngraph's models; another exporter's caches have other names), NaN/Inf values (when
    `check_finite`)."""
    if not isinstance(feeds, Mapping):
        raise FeedError(f"{where}: feeds must be a dict name -> array, given {type(feeds).__name__}")
    problems: list[str] = []
    missing = [k for k in inputs if k not in feeds]
    unknown = [k for k in feeds if k not in inputs]
    if missing:
        problems.append(f"missing feed(s) {missing}")
    if unknown:
        problems.append(f"unknown feed(s) {unknown}")
    if missing or unknown:  # said once, after both lists
        problems.append(f"the model's inputs are {list(inputs)}")
    out: dict[str, np.ndarray] = {}
    bound: dict[str, tuple[int, str]] = {}
    for name, ttype in inputs.items():
        if name not in feeds:
            continue
        try:
            arr = np.asarray(feeds[name])
        except Exception:  # noqa: BLE001 - anything numpy cannot read is a user mistake
            problems.append(f"{name!r}: not an array (given {type(feeds[name]).__name__})")
            continue
        given = f"{arr.dtype}{list(arr.shape)}"
        if arr.dtype.kind not in _KIND[ttype.dtype] and not (
            ttype.dtype == "bool" and arr.dtype.kind in "iu" and np.isin(arr, (0, 1)).all()
        ):
            problems.append(f"{name!r}: expected {ttype}, given {given} (wrong dtype)")
            continue
        if arr.ndim != ttype.rank:
            problems.append(f"{name!r}: expected {ttype}, given {given} (rank {arr.ndim})")
            continue
        bad = False
        for axis, (size, dim) in enumerate(zip(arr.shape, ttype.shape)):
            if isinstance(dim, int) and size != dim:
                problems.append(f"{name!r}: expected {ttype}, given {given} (axis {axis})")
                bad = True
            elif isinstance(dim, str):
                if dim in bound and bound[dim][0] != size:
                    problems.append(
                        f"{name!r}: dim {dim!r} is {size} here but {bound[dim][0]} in "
                        f"{bound[dim][1]!r}"
                    )
                    bad = True
                bound.setdefault(dim, (size, name))
        if bad:
            continue
        if refuse_empty and arr.size == 0 and not name.startswith((PAST_PREFIX, STATE_PREFIX)):
            axis = arr.shape.index(0)
            problems.append(f"{name!r}: given {given}, empty along axis {axis} "
                            f"({ttype.shape[axis]!r} = 0); every input needs at least one "
                            "element per dimension (only caches start empty)")
            continue
        arr = arr.astype(ttype.dtype, copy=False)
        if check_finite and arr.dtype.kind == "f" and not np.isfinite(arr).all():
            n_nan = int(np.isnan(arr).sum())
            n_inf = int(np.isinf(arr).sum())
            problems.append(f"{name!r}: holds {n_nan} NaN and {n_inf} Inf value(s)")
            continue
        out[name] = arr
    if problems:
        raise FeedError(f"{where}: " + "; ".join(problems))
    return out
