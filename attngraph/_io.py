"""File I/O: crash-safe writes, and the memory maps under arrays read from files.

Crash-safe writes: a file is either fully written or left as it was.

A write goes to a temporary file in the target's directory, named after the target
(`.<name>.<pid>-<token>.tmp`, or `.<name>.data.<pid>-<token>.tmp` for an export's weights), and
is renamed over the target last (`os.replace`, atomic on POSIX). Any exception while writing,
KeyboardInterrupt included, removes the temporary file. A process killed outright (SIGKILL, the
OOM killer) cannot clean up: its temporary file is swept by the next write of the same target,
once no live process has that pid.

The guarantee is against processes dying, not against the machine losing power: nothing is
fsync'ed (that would wait for the whole of a multi-gigabyte export to reach the disk).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import secrets
import zipfile
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:  # typing.Self is new in Python 3.11
    from typing import Self

import numpy as np

from ._errors import ExportError


def _temp_re(name: str) -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(name)}(?:\.data)?\.(\d+)-[0-9a-f]+\.tmp")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # ours: another write of this process may be under way
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: someone else's live process
        return True
    return True


def sweep_temps(path: str) -> list[str]:
    """Remove temporary files that writes of `path` left behind in processes that died;
    return their names. Files of live processes (a concurrent write) are left alone."""
    directory, name = os.path.split(os.path.abspath(path))
    pattern = _temp_re(name)
    removed: list[str] = []
    try:
        entries = os.listdir(directory)
    except OSError:
        return removed
    for entry in entries:
        m = pattern.fullmatch(entry)
        if m and not _alive(int(m.group(1))):
            try:
                os.unlink(os.path.join(directory, entry))
                removed.append(entry)
            except OSError:
                pass  # gone already, or not ours to remove
    return removed


class TempFile:
    """A temporary file beside `path`, named after it, open for binary writing.

    Use it as a context manager: leaving the block by any exception (KeyboardInterrupt
    included) closes and removes the file; `commit(final)` renames it into place.
    """

    def __init__(self, path: str, *, what: str, data: bool = False) -> None:
        directory, name = os.path.split(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise ExportError(f"{what}: directory {directory!r} does not exist "
                              f"(writing {path!r})")
        sweep_temps(path)
        tag = ".data" if data else ""
        self.what = what
        self.path = os.path.join(directory,
                                 f".{name}{tag}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as exc:
            raise ExportError(f"{what}: cannot write to {directory!r}: {exc.strerror}") from None
        self.file: BinaryIO = os.fdopen(fd, "wb")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is not None:
            self.discard()

    def discard(self) -> None:
        """Close and remove the temporary file (idempotent)."""
        self.file.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def commit(self, final: str) -> None:
        """Close the file and rename it to `final` (atomic; replaces what is there)."""
        try:
            self.file.close()
            os.replace(self.path, final)
        except OSError as exc:
            self.discard()
            raise ExportError(f"{self.what}: cannot write {final!r}: {exc.strerror}") from None


@contextlib.contextmanager
def directory_lock(directory: str) -> Iterator[None]:
    """Hold an exclusive lock on `directory` (flock on the directory itself: no lock file to
    leave behind) while files in it are renamed and swept, so that two processes writing the
    same model do not remove each other's new files. Without flock (Windows), no lock."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def atomic_write_bytes(path: str, data: bytes, *, what: str) -> None:
    """Write `data` to a temporary file beside `path`, then rename it into place."""
    with TempFile(path, what=what) as tmp:
        try:
            tmp.file.write(data)
        except OSError as exc:
            raise ExportError(f"{what}: cannot write {path!r}: {exc.strerror}") from None
        tmp.commit(path)


# -- memory-mapped arrays -------------------------------------------------------------------

def file_mapping(arr: np.ndarray) -> tuple[mmap.mmap, str] | None:
    """The memory map under `arr` (a view of an `np.memmap`, e.g. a safetensors tensor) and
    the np.memmap's mode ("r", "r+", "w+", "c"), or None for an array in ordinary memory."""
    mode = ""
    x: object = arr
    while isinstance(x, np.ndarray):
        if not mode and isinstance(x, np.memmap):
            mode = x.mode
        x = x.base
    return (x, mode) if isinstance(x, mmap.mmap) else None


def release_pages(arr: np.ndarray) -> None:
    """Unmap the pages of a file-backed `arr` from this process once it has been read.

    Pages of a memory-mapped file count in the resident set of every process that touched
    them, so reading a whole checkpoint through its maps would grow the exporter to the
    checkpoint's size. MADV_DONTNEED drops them from this process only: they stay in the page
    cache, and reading them again faults them back in. Copy-on-write maps (mode "c") are left
    alone: dropping their pages would drop the caller's private changes.
    """
    _advise(arr, "MADV_DONTNEED")


def prefetch_pages(arr: np.ndarray) -> None:
    """Ask the kernel to start reading a file-backed `arr` from disk now (MADV_WILLNEED), so
    that a checkpoint that is not in the page cache is read ahead while it is converted."""
    _advise(arr, "MADV_WILLNEED")


def _advise(arr: np.ndarray, name: str) -> None:
    found = file_mapping(arr)
    if found is None or found[1] not in ("r", "r+", "w+") or arr.size == 0:
        return
    mm, _ = found
    advice = getattr(mmap, name, None)
    if advice is None or not hasattr(mm, "madvise"):
        return
    lo = hi = arr.__array_interface__["data"][0]
    for n, stride in zip(arr.shape, arr.strides):
        if stride < 0:
            lo += stride * (n - 1)
        else:
            hi += stride * (n - 1)
    base = np.frombuffer(mm, np.uint8).__array_interface__["data"][0]
    start = (lo - base) // mmap.PAGESIZE * mmap.PAGESIZE
    end = min(len(mm), hi + arr.itemsize - base)
    if 0 <= start < end:
        mm.madvise(advice, start, end - start)


# -- .npz archives --------------------------------------------------------------------------

NPY_MAGIC = b"\x93NUMPY"


class NpzProblem(ValueError):
    """Why a file is not a readable .npz archive of numeric arrays, in one line (callers turn
    it into their own error type)."""


def read_npz(path: str) -> dict[str, np.ndarray]:
    """Every array of the .npz archive at `path`, read without pickle (never runs code from
    the file). Raises NpzProblem with one line saying what the file is instead."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(NPY_MAGIC))
    except OSError as exc:
        raise NpzProblem(f"cannot be read ({exc.strerror})") from None
    if head == NPY_MAGIC:
        raise NpzProblem("holds a single array (.npy); expected an .npz archive of name -> array "
                         "(np.savez)")
    if not zipfile.is_zipfile(path):
        raise NpzProblem("is not an .npz archive (expected a file written by np.savez)")
    arrays = {}
    try:
        with np.load(path, allow_pickle=False) as data:
            for name in data.files:
                try:
                    arrays[name] = data[name]
                except ValueError as exc:
                    if "allow_pickle" not in str(exc):
                        raise
                    raise NpzProblem(f"holds an object array {name!r} (dtype=object), which "
                                     "is never unpickled; save numeric arrays") from None
    except NpzProblem:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise NpzProblem(f"is a damaged .npz archive ({exc})") from None
    return arrays
