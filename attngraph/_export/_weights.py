"""Initialisers whose bytes are produced only when they are written.

A lowering names a parameter (`Builder.param`); nothing is read then. The writer reads each
parameter once, converts it to the stored dtype a slice at a time into two reused buffers, and
writes the slices: a float16 export of a float32 checkpoint never holds a float32 and a float16
copy of a weight, let alone of every weight. Views of memory-mapped files (safetensors
checkpoints) are unmapped once written (`release_pages`), so the exporter does not grow to the
checkpoint's size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from onnx import TensorProto, helper

from .._errors import ParamError
from .._io import prefetch_pages, release_pages

CHUNK = 16 << 20  # bytes converted and written at a time
TILE = 256  # block side for transposing copies


@dataclass(frozen=True)
class Weight:
    """One initialiser: its name, stored dtype and shape, and where its values come from (an
    array in memory, or a function that reads the parameter when the writer asks)."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    source: np.ndarray | Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def header(self) -> TensorProto:
        """The TensorProto without its data: dims, data type, name."""
        t = TensorProto()
        t.dims.extend(self.shape)
        t.data_type = helper.np_dtype_to_tensor_dtype(self.dtype)
        t.name = self.name
        return t

    def read(self) -> np.ndarray:
        arr = np.asarray(self.source() if callable(self.source) else self.source)
        if arr.shape != self.shape:  # a Mapping that returns another array the second time
            raise ParamError(f"export: parameter {self.name!r} read as {list(arr.shape)} "
                             f"when written, {list(self.shape)} when checked (params changed "
                             "while exporting)")
        return arr

    def tensor(self) -> TensorProto:
        """The whole TensorProto, data included (for protos built in memory)."""
        t = self.header()
        t.raw_data = np.ascontiguousarray(self.read(), self.dtype).tobytes()
        return t

    def pieces(self, scratch: Scratch) -> Iterator[memoryview]:
        """The stored bytes (little-endian, C order) in slices of about CHUNK bytes. A slice
        that needs converting is made in one of `scratch`'s two buffers in turn, so it stays
        valid while the next one is made (and no longer)."""
        arr = self.read()
        dtype = self.dtype
        prefetch_pages(arr)
        try:
            if arr.dtype == dtype and arr.flags.c_contiguous:
                flat = arr.reshape(-1).view(np.uint8).data  # a memoryview, no copy
                for i in range(0, max(len(flat), 1), CHUNK):
                    yield flat[i:i + CHUNK]
                return
            if arr.ndim == 0:
                yield np.ascontiguousarray(arr, dtype).reshape(-1).view(np.uint8).data
                return
            row = int(np.prod(arr.shape[1:], dtype=np.int64)) * dtype.itemsize
            rows = max(1, CHUNK // max(row, 1))
            for i in range(0, arr.shape[0], rows):
                part = arr[i:i + rows]
                buffer = scratch.next(rows * row)
                out = buffer[:part.size * dtype.itemsize].view(dtype).reshape(part.shape)
                _copy(out, part)
                yield out.reshape(-1).view(np.uint8).data
        finally:
            release_pages(arr)


def _copy(out: np.ndarray, part: np.ndarray) -> None:
    """out[...] = part, converting (float32 -> float16 rounds to nearest even). A kernel read
    as a transposed view ([out, in] in the checkpoint, [in, out] here) is copied in TILE x TILE
    blocks: element by element, every read would miss the cache (10x slower measured)."""
    if part.ndim != 2 or part.strides[1] == part.itemsize:
        np.copyto(out, part, casting="unsafe")
        return
    for i in range(0, part.shape[0], TILE):
        for j in range(0, part.shape[1], TILE):
            np.copyto(out[i:i + TILE, j:j + TILE], part[i:i + TILE, j:j + TILE],
                      casting="unsafe")


class Scratch:
    """Two conversion buffers used in turn (one being written while the next slice is made),
    reused from weight to weight: fresh allocations of this size would each cost page
    faults."""

    def __init__(self) -> None:
        self._buffers = [np.empty(0, np.uint8), np.empty(0, np.uint8)]
        self._turn = 0

    def next(self, nbytes: int) -> np.ndarray:
        self._turn ^= 1
        if self._buffers[self._turn].size < nbytes:
            self._buffers[self._turn] = np.empty(nbytes, np.uint8)
        return self._buffers[self._turn]


class ParamReader:
    """Parameters as the exporter reads them: the arrays the check kept (free to hold), the
    rest read from the caller's Mapping again, one at a time, when written."""

    def __init__(self, params: Mapping[str, Any], kept: dict[str, np.ndarray]) -> None:
        self._params = params
        self._kept = kept

    def __getitem__(self, name: str) -> np.ndarray:
        """The parameter's values (for lowerings that transform a weight when lowering)."""
        if name in self._kept:
            return self._kept[name]
        return np.asarray(self._params[name])

    def source(self, name: str) -> np.ndarray | Callable[[], np.ndarray]:
        """What a Weight reads: the kept array, or a function that reads the Mapping."""
        if name in self._kept:
            return self._kept[name]
        params = self._params
        return lambda: params[name]
