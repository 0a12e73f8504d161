"""Error types. Every user mistake raises a subclass of AttnGraphError at the call that made it."""

from __future__ import annotations

import os
import sys

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_CLI_DIR = os.path.join(_PACKAGE_DIR, "cli")


class AttnGraphError(Exception):
    """Base class of every error attngraph raises for a user mistake."""


class ConfigError(AttnGraphError, ValueError):
    """A builder or function got an option value it cannot use."""


class ShapeError(AttnGraphError, ValueError):
    """Input shapes or dtypes do not fit together."""


class GraphError(AttnGraphError, ValueError):
    """The model's graph is malformed (unlisted inputs, duplicate names, ...)."""


class FeedError(AttnGraphError, ValueError):
    """Feeds given to predict/run do not match the model's inputs."""


class ParamError(AttnGraphError, ValueError):
    """Parameters are missing, unknown or of the wrong shape."""


class ExportError(AttnGraphError):
    """The model cannot be written for the requested target or path."""


class UnsupportedError(ExportError):
    """A lowering target cannot express a feature a layer uses."""


def caller_location() -> str:
    """Return 'file.py:LINE' of the first stack frame outside the attngraph package.

    A call made by the command line itself (not by the user's model file it loaded) has no
    user line to point at: then the result is "" (the CLI's message names the flag instead of
    pointing at the console script's own `sys.exit(main())` line).
    """
    frame = sys._getframe(1)
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        if path.startswith(_CLI_DIR + os.sep):
            return ""
        if not path.startswith(_PACKAGE_DIR + os.sep):
            return f"{os.path.basename(path)}:{frame.f_lineno}"
        frame = frame.f_back  # type: ignore[assignment]
    return "<unknown>"


def layer_message(op: str, name: str | None, message: str, location: str | None) -> str:
    """Format the standard message: `op 'name': message (defined at file:line)`."""
    who = f"{op} '{name}'" if name else op
    where = f" (defined at {location})" if location else ""
    return f"{who}: {message}{where}"
