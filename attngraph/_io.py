"""Atomic file writes: a file is either fully written or left as it was."""

from __future__ import annotations

import os
import tempfile

from ._errors import ExportError


def atomic_write_bytes(path: str, data: bytes, *, what: str) -> None:
    """Write `data` to a temporary file beside `path`, then rename it into place."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ExportError(f"{what}: directory {directory!r} does not exist (writing {path!r})")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    except OSError as exc:
        raise ExportError(f"{what}: cannot write to {directory!r}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise ExportError(f"{what}: cannot write {path!r}: {exc.strerror}") from None
