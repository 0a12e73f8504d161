"""Feeds for the commands: seeded random ones sized from declared dims, or an .npz archive."""

from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np

from .._io import NpzProblem, atomic_write_bytes, read_npz
from .._model import Model
from .._types import FLOAT_DTYPES, Dim, TensorType
from ._common import CLIError
from ._load import require_file


def dim_size(dim: Dim, batch: int, seq: int) -> int:
    """A concrete size for a declared dim: ints as given, `*batch*` -> batch, others -> seq."""
    if isinstance(dim, int):
        return dim
    if isinstance(dim, str) and ("batch" in dim.lower() or dim.lower() in ("b", "n")):
        return batch
    return seq


def random_feeds(types: Mapping[str, TensorType], *, batch: int, seq: int, seed: int,
                 vocab: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    """Seeded random feeds: floats ~ N(0, 1), ints in [0, vocab) (vocab 2 when not known, e.g.
    for masks), bools all True (attend everywhere)."""
    rng = np.random.default_rng(seed)
    vocab = vocab or {}
    feeds = {}
    for name, ttype in types.items():
        shape = tuple(dim_size(d, batch, seq) for d in ttype.shape)
        if ttype.dtype in FLOAT_DTYPES:
            feeds[name] = rng.standard_normal(shape).astype(ttype.dtype)
        elif ttype.dtype == "bool":
            feeds[name] = np.ones(shape, dtype=bool)
        else:
            feeds[name] = rng.integers(0, vocab.get(name, 2), shape).astype(ttype.dtype)
    return feeds


def model_vocab(model: Model) -> dict[str, int]:
    """Input name -> the smallest vocab_size of the embeddings that read it directly."""
    keys = {v.node: k for k, v in model.inputs.items()}
    vocab: dict[str, int] = {}
    for node in model.nodes:
        src = node.inputs[0] if node.op == "embedding" and node.inputs else None
        if src is not None and src.node in keys:
            key = keys[src.node]
            vocab[key] = min(vocab.get(key, node.attrs["vocab_size"]), node.attrs["vocab_size"])
    return vocab


def onnx_vocab(path: str) -> dict[str, int]:
    """Input name -> rows of the table an ONNX `Gather(initializer, input)` looks ids up in."""
    import onnx  # only to read the graph; attngraph's exporter is the one that builds protos

    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception:  # noqa: BLE001 - an unreadable file is reported when the session loads it
        return {}
    tables = {t.name: t.dims[0] for t in proto.graph.initializer if t.dims}
    inputs = {i.name for i in proto.graph.input}
    vocab: dict[str, int] = {}
    for node in proto.graph.node:
        if node.op_type == "Gather" and len(node.input) == 2 and node.input[0] in tables \
                and node.input[1] in inputs:
            rows = int(tables[node.input[0]])
            vocab[node.input[1]] = min(vocab.get(node.input[1], rows), rows)
    return vocab


def load_feeds(path: str) -> dict[str, np.ndarray]:
    """Arrays of an .npz archive, read without pickle."""
    require_file(path, "--inputs")
    try:
        return read_npz(path)
    except NpzProblem as exc:
        raise CLIError(f"--inputs {path!r} {exc}") from None


def save_arrays(arrays: Mapping[str, np.ndarray], path: str) -> None:
    """Write name -> array as an .npz archive, atomically (a crash leaves no partial file)."""
    if not path.endswith(".npz"):
        raise CLIError(f"-o {path!r}: expected a path ending in .npz")
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})  # type: ignore[arg-type]
    atomic_write_bytes(path, buf.getvalue(), what="run -o")
