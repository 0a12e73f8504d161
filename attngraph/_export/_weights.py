"""Initialisers whose bytes are produced only when they are written.

A lowering names a parameter (`Builder.param`); nothing is read then. The writer reads each
parameter once, converts it to the stored dtype a slice at a time into one reused buffer, and
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

from .._io import release_pages

CHUNK = 16 << 20  # bytes converted and written at a time


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
            raise ValueError(f"parameter {self.name!r} read as {list(arr.shape)}, "
                             f"expected {list(self.shape)}")
        return arr

    def tensor(self) -> TensorProto:
        """The whole TensorProto, data included (for protos built in memory)."""
        t = self.header()
        t.raw_data = np.ascontiguousarray(self.read(), self.dtype).tobytes()
        return t

    def pieces(self, scratch: Scratch) -> Iterator[memoryview]:
        """The stored bytes (little-endian, C order) in slices of about CHUNK bytes. A slice
        that needs converting is made in `scratch`, so it is valid until the next one is
        asked for."""
        arr = self.read()
        dtype = self.dtype
        try:
            if arr.dtype == dtype and arr.flags.c_contiguous:
                flat = memoryview(arr.reshape(-1).view(np.uint8))
                for i in range(0, max(len(flat), 1), CHUNK):
                    yield flat[i:i + CHUNK]
                return
            if arr.ndim == 0:
                yield memoryview(np.ascontiguousarray(arr, dtype).reshape(-1).view(np.uint8))
                return
            row = int(np.prod(arr.shape[1:], dtype=np.int64)) * dtype.itemsize
            rows = max(1, CHUNK // max(row, 1))
            buffer = scratch.get(rows * row)
            for i in range(0, arr.shape[0], rows):
                part = arr[i:i + rows]
                out = buffer[:part.size * dtype.itemsize].view(dtype).reshape(part.shape)
                np.copyto(out, part, casting="unsafe")  # float32 -> float16 rounds to nearest
                yield memoryview(out.reshape(-1).view(np.uint8))
        finally:
            release_pages(arr)


class Scratch:
    """One conversion buffer, reused from weight to weight (fresh allocations of this size
    would each cost page faults)."""

    def __init__(self) -> None:
        self._buffer = np.empty(0, np.uint8)

    def get(self, nbytes: int) -> np.ndarray:
        if self._buffer.size < nbytes:
            self._buffer = np.empty(nbytes, np.uint8)
        return self._buffer


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
