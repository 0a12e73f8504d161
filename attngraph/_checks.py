"""Argument checks for builders and public functions: each raises an AttnGraphError subclass
(ConfigError unless told) with the standard message."""

from __future__ import annotations

import math
import os
from typing import Any, NoReturn

from ._errors import AttnGraphError, ConfigError, layer_message
from ._graph import Value


class Checker:
    """Validates one builder call's arguments; errors name the op, layer and user's line."""

    def __init__(self, op: str, name: str | None, location: str) -> None:
        if name is not None and (not isinstance(name, str) or not name):
            raise ConfigError(layer_message(op, None, f"name must be a non-empty string, "
                                            f"given {name!r}", location))
        self.op, self.name, self.location = op, name, location

    def fail(self, message: str) -> NoReturn:
        raise ConfigError(layer_message(self.op, self.name, message, self.location))

    def value(self, x: Any, what: str, optional: bool = False) -> Value | None:
        if x is None and optional:
            return None
        if not isinstance(x, Value):
            self.fail(f"{what} must be a graph value (from ag.input or another layer), "
                      f"given {type(x).__name__}")
        return x

    def pos_int(self, x: Any, what: str, optional: bool = False) -> int | None:
        if x is None and optional:
            return None
        if isinstance(x, bool) or not isinstance(x, int) or x <= 0:
            self.fail(f"{what} must be a positive int, given {x!r}")
        return x

    def number(self, x: Any, what: str, *, positive: bool = False, optional: bool = False,
               lo: float | None = None, hi: float | None = None) -> float | None:
        if x is None and optional:
            return None
        if isinstance(x, bool) or not isinstance(x, (int, float)) or math.isnan(x):
            self.fail(f"{what} must be a number, given {x!r}")
        if positive and x <= 0:
            self.fail(f"{what} must be > 0, given {x!r}")
        if lo is not None and x < lo or hi is not None and x > hi:
            self.fail(f"{what} must lie in [{lo}, {hi}], given {x!r}")
        return float(x)

    def choice(self, x: Any, what: str, options: tuple[str, ...]) -> str:
        if x not in options:
            self.fail(f"{what} must be one of {list(options)}, given {x!r}")
        return x

    def flag(self, x: Any, what: str) -> bool:
        if not isinstance(x, bool):
            self.fail(f"{what} must be True or False, given {x!r}")
        return x

    def window(self, x: Any) -> int | tuple[int, int] | None:
        if x is None:
            return None
        if isinstance(x, bool):
            self.fail(f"window must be an int K >= 1 or a pair (left, right) >= 0, given {x!r}")
        if isinstance(x, int):
            if x < 1:
                self.fail(f"window must be >= 1 (it counts the query itself), given {x}")
            return x
        if (isinstance(x, (tuple, list)) and len(x) == 2
                and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in x)):
            return (int(x[0]), int(x[1]))
        self.fail(f"window must be an int K >= 1 or a pair (left, right) of ints >= 0, "
                  f"given {x!r}")

    def last_dim(self, x: Value, what: str = "input") -> int:
        d = x.shape[-1] if x.shape else None
        if not isinstance(d, int):
            self.fail(f"{what} needs a static last dim to size its parameters, given {x.type}")
        return d


def require_model(model: Any, who: str, location: str | None = None,
                  error: type[AttnGraphError] = ConfigError) -> Any:
    """`model` itself when it is an ag.Model; else `error` naming what was given."""
    from ._model import Model

    if not isinstance(model, Model):
        raise error(layer_message(who, None, f"model must be an ag.Model (built with "
                                  f"ag.Model(inputs, outputs)), given {type(model).__name__}",
                                  location))
    return model


def require_path(path: Any, who: str, what: str = "path", location: str | None = None,
                 error: type[AttnGraphError] = ConfigError) -> str:
    """`path` as a str when it is a str or os.PathLike; else `error` naming what was given."""
    if not isinstance(path, (str, os.PathLike)):
        raise error(layer_message(who, None, f"{what} must be a str or os.PathLike, given "
                                  f"{type(path).__name__} {path!r}", location))
    out = os.fspath(path)
    if not isinstance(out, str):  # a bytes path
        raise error(layer_message(who, None, f"{what} must be a str path, given {path!r}",
                                  location))
    return out


def name_list(names: Any, who: str, what: str, location: str | None = None) -> list[str] | None:
    """None, or a list of names: one str counts as a one-item list (never as its letters)."""
    if names is None:
        return None
    if isinstance(names, str):
        return [names]
    if isinstance(names, (list, tuple, set, frozenset)) and all(isinstance(n, str)
                                                                 for n in names):
        return list(names)
    raise ConfigError(layer_message(who, None, f"{what} must be a name or a list of names, "
                                    f"given {names!r}", location))
