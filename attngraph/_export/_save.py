"""Writing an exported model: weights streamed to disk, files replaced so that no instant
pairs an old `.onnx` with new weights.

Hand-written rather than onnx-ir. onnx-ir keeps tensors lazy and saves external data one
tensor at a time, which is the heart of the matter, but it would not cover the rest: it
serializes a one-file model by building the whole ModelProto (every weight copied into the
proto, then again into the serialized bytes: 2x the weights, where GPT-2 small must stay under
1.5x), it would add a dependency to the core install, and the names, alignment, content-hashed
data file and replacement order below would be ours to write around it anyway. What it would
save is about a hundred lines, the wire format framing below included.

One file (weights under ~1.8 GB): the ModelProto is serialized without its initialisers, cut
around the graph field and the graph's initializer field (serialized messages list fields by
number), and each initialiser is written as a field whose raw_data streams from the weight, a
slice at a time. The bytes are those `ModelProto.SerializeToString()` would give
(`tests/test_export_streaming.py` compares them).

External data: the weights go to a temporary file first, hashed as they are written; the data
file is named after the hash (`model.onnx.<16 hex>.data`), so the same weights always give the
same name (identical inputs, identical bytes) and different weights a name no older `.onnx`
refers to. Then, under a lock on the directory: the data file is renamed into place, the
`.onnx` is replaced last, and data files named after this `.onnx` that it no longer refers to
are removed. A crash at any point leaves the old `.onnx` with its own data file; the debris (a
temporary file, a data file nothing refers to) is swept by the next export of the same path.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, BinaryIO

import onnx
from onnx import TensorProto

from .._io import TempFile, atomic_write_bytes, directory_lock
from ._weights import Scratch, Weight

if TYPE_CHECKING:  # typing.Self is new in Python 3.11
    from typing import Self

EXTERNAL_MIN = 1024  # initialisers of this many bytes or more go to external data (as onnx)
ALIGN_FROM, ALIGN = 1 << 20, 1 << 16  # as onnx's writer: tensors of 1 MiB+ at 64 KiB offsets,
# which lets onnxruntime map them from the file instead of copying
PROGRESS_FROM = 256 << 20  # bytes of weights from which a terminal shows a progress bar
_GRAPH, _INITIALIZER, _RAW_DATA = 7, 5, 9  # field numbers: ModelProto.graph, ...


def save(proto: onnx.ModelProto, weights: list[Weight], path: str, *, external: bool,
         progress: bool | None) -> onnx.ModelProto:
    """Write `proto` (no initialisers yet) with `weights` to `path`; return the proto as
    written, its initialisers of EXTERNAL_MIN bytes or more as external-data references to
    the bytes on disk (in the data file, or in the `.onnx` itself for a one-file model)."""
    directory, base = os.path.split(os.path.abspath(path))
    big = [w for w in weights if w.nbytes >= EXTERNAL_MIN]
    bar = _progress_bar(sum(w.nbytes for w in big), progress)
    try:
        if external and big:
            offsets = _layout(big)
            with TempFile(path, what="export", data=True) as tmp:
                digest = _write_data(tmp.file, big, offsets, bar)
                data_name = f"{base}.{digest[:16]}.data"
                _add_initializers(proto, weights, data_name, dict(zip(map(id, big), offsets)))
                with directory_lock(directory):
                    tmp.commit(os.path.join(directory, data_name))
                    atomic_write_bytes(path, proto.SerializeToString(), what="export")
                    sweep_data_files(path, keep=data_name)
        else:
            with TempFile(path, what="export") as tmp:
                offsets_in_file = _write_one_file(tmp.file, proto, weights, bar)
                with directory_lock(directory):
                    tmp.commit(path)
                    sweep_data_files(path, keep=None)
            _add_initializers(proto, weights, base, offsets_in_file)
    finally:
        bar.close()
    return proto


def data_files(proto: onnx.ModelProto, path: str) -> list[str]:
    """The paths of the external data files that the model at `path` (as `export` returned
    it) refers to, the `.onnx` itself left out."""
    directory, base = os.path.split(os.path.abspath(path))
    seen: dict[str, None] = {}
    for t in proto.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            seen.update({os.path.join(directory, e.value): None for e in t.external_data
                         if e.key == "location" and e.value != base})
    return list(seen)


def sweep_data_files(path: str, keep: str | None) -> list[str]:
    """Remove `<name>.<16 hex>.data` files beside `path` other than `keep`: data files of
    earlier exports of this path, which its `.onnx` no longer refers to. Returns their names."""
    directory, base = os.path.split(os.path.abspath(path))
    pattern = re.compile(rf"{re.escape(base)}\.[0-9a-f]{{16}}\.data")
    removed = []
    for entry in os.listdir(directory):
        if entry != keep and pattern.fullmatch(entry):
            try:
                os.unlink(os.path.join(directory, entry))
                removed.append(entry)
            except OSError:
                pass
    return removed


# -- external data --------------------------------------------------------------------------

def _layout(big: list[Weight]) -> list[int]:
    offsets, pos = [], 0
    for w in big:
        if w.nbytes >= ALIGN_FROM:
            pos = -(-pos // ALIGN) * ALIGN
        offsets.append(pos)
        pos += w.nbytes
    return offsets


class _Sink:
    """Writes pieces to a file, and hashes them, on two worker threads, one piece behind the
    caller, which meanwhile converts the next piece (file writes, hashing and numpy copies all
    release the GIL). Leaving the block waits for the threads, whatever the exception."""

    def __init__(self, f: BinaryIO, digest: Any = None) -> None:
        self._f, self._digest = f, digest
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="attngraph-export")
        self._pending: list[Future[Any]] = []
        self.pos = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        try:
            if kind is None:
                self.wait()
        finally:
            self._pool.shutdown(wait=True)

    def write(self, piece: bytes | memoryview) -> None:
        self.wait()
        self._pending = [self._pool.submit(self._f.write, piece)]
        if self._digest is not None:
            self._pending.append(self._pool.submit(self._digest.update, piece))
        self.pos += len(piece)

    def wait(self) -> None:
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()


def _write_data(f: BinaryIO, big: list[Weight], offsets: list[int], bar: Any) -> str:
    """Write the weights at their offsets; return the sha256 of the file's bytes."""
    digest = hashlib.sha256()
    scratch = Scratch()
    with _Sink(f, digest) as sink:
        for w, offset in zip(big, offsets):
            if offset > sink.pos:
                sink.write(bytes(offset - sink.pos))
            for piece in w.pieces(scratch):
                sink.write(piece)
                bar.update(len(piece))
    return digest.hexdigest()


def _add_initializers(proto: onnx.ModelProto, weights: list[Weight], location: str,
                      offsets: dict[int, int]) -> None:
    out = proto.graph.initializer
    for w in weights:
        if w.nbytes < EXTERNAL_MIN:
            out.append(w.tensor())
            continue
        t = w.header()
        t.data_location = TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", str(offsets[id(w)])),
                           ("length", str(w.nbytes))):
            entry = t.external_data.add()
            entry.key, entry.value = key, value
        out.append(t)


# -- one file: the protobuf wire format, written a field at a time ---------------------------

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field: int, length: int) -> bytes:
    """The key and length of a length-delimited field (wire type 2)."""
    return _varint(field << 3 | 2) + _varint(length)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _split(data: bytes, field: int) -> tuple[bytes, bytes, bytes]:
    """A serialized message cut around `field`: (the fields numbered below it, the payload of
    `field` (b"" if absent), the fields numbered above it)."""
    head_end, tail_start, payload = 0, len(data), b""
    pos = 0
    while pos < len(data):
        start = pos
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        value_start = pos
        if wire == 0:
            _, pos = _read_varint(data, pos)
        elif wire == 2:
            length, value_start = _read_varint(data, pos)
            pos = value_start + length
        else:
            pos += {1: 8, 5: 4}[wire]
        if number < field:
            if tail_start < len(data):
                raise AssertionError("serialized fields out of order")
            head_end = pos
        elif number == field:
            payload = data[value_start:pos]
        elif tail_start == len(data):
            tail_start = start
    return data[:head_end], payload, data[tail_start:]


def _write_one_file(f: BinaryIO, proto: onnx.ModelProto, weights: list[Weight],
                    bar: Any) -> dict[int, int]:
    """Write the model with its weights inline; return each big weight's raw-data offset."""
    model_head, graph, model_tail = _split(proto.SerializeToString(), _GRAPH)
    graph_head, _, graph_tail = _split(graph, _INITIALIZER)
    headers = [w.header().SerializeToString() + _key(_RAW_DATA, w.nbytes) for w in weights]
    sizes = [len(h) + w.nbytes for h, w in zip(headers, weights)]
    graph_size = (len(graph_head) + len(graph_tail)
                  + sum(len(_key(_INITIALIZER, n)) + n for n in sizes))
    scratch, offsets = Scratch(), {}
    with _Sink(f) as sink:
        sink.write(model_head + _key(_GRAPH, graph_size) + graph_head)
        for w, header, size in zip(weights, headers, sizes):
            sink.write(_key(_INITIALIZER, size) + header)
            offsets[id(w)] = sink.pos
            for piece in w.pieces(scratch):
                sink.write(piece)
                if w.nbytes >= EXTERNAL_MIN:
                    bar.update(len(piece))
        sink.write(graph_tail + model_tail)
    return offsets


# -- progress -------------------------------------------------------------------------------

class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, progress: bool | None) -> Any:
    if progress is None:
        progress = total >= PROGRESS_FROM and sys.stderr.isatty()
    if not progress:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="export",
                leave=False, file=sys.stderr)
