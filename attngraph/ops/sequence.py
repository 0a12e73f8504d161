"""Embeddings, positional encodings, sequence pooling."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._registry import DecodeForms, StreamForms, register
from .._types import INT_DTYPES, TensorType
from ._shapes import Fail, need_float, need_rank

# -- embedding -------------------------------------------------------------------------------


def _embedding_infer(types: list[Any], attrs: Any, fail: Fail) -> list[Any]:
    (ids,) = types
    if ids.dtype not in INT_DTYPES:
        fail(f"ids must be an integer tensor, given {ids}")
    return [TensorType("float32", (*ids.shape, attrs["dim"]))]


def _embedding_ref(attrs: Any, p: dict[str, np.ndarray], ids: np.ndarray) -> np.ndarray:
    table = p["embeddings"]
    if ids.size and (ids.min() < 0 or ids.max() >= table.shape[0]):
        from .._errors import FeedError

        raise FeedError(f"embedding: ids must lie in [0, {table.shape[0]}), given values in "
                        f"[{ids.min()}, {ids.max()}]")
    return table[ids]  # (..., ) -> (..., dim)


register(
    "embedding", infer=_embedding_infer, reference=_embedding_ref,
    decomposed=lambda b, n, ins: [b.op1("Gather", [b.param("embeddings"), ins[0]], axis=0)],
    per_position=True,
)

# -- positional encodings --------------------------------------------------------------------


def _pos_infer(types: list[Any], attrs: Any, fail: Fail) -> list[Any]:
    (x,) = types
    need_float(x, "input", fail)
    need_rank(x, (3,), "input [batch, seq, dim]", fail)
    if x.shape[-1] != attrs["dim"]:
        fail(f"expected input [batch, seq, {attrs['dim']}], given {x}")
    seq = x.shape[1]
    if attrs["kind"] == "learned" and isinstance(seq, int) and seq > attrs["max_len"]:
        fail(f"sequence length {seq} exceeds max_len={attrs['max_len']}")
    return [x]


def sinusoidal_table(seq: int | np.ndarray, dim: int) -> np.ndarray:
    """PE[pos, 2i] = sin(pos / 10000^(2i/dim)), PE[pos, 2i+1] = cos(pos / 10000^(2i/dim)), for
    pos = 0 .. seq-1 (or the positions in an array)."""
    pos = (np.arange(seq) if isinstance(seq, int) else np.asarray(seq)).astype(np.float64)
    pos = pos[:, None]  # (S, 1)
    inv_freq = 1.0 / 10000.0 ** (np.arange(0, dim, 2, dtype=np.float64) / dim)  # (ceil(dim/2),)
    angles = pos * inv_freq[None, :]  # (S, ceil(dim/2))
    table = np.empty((pos.shape[0], dim), np.float64)
    table[:, 0::2] = np.sin(angles)
    table[:, 1::2] = np.cos(angles[:, : dim // 2])
    return table.astype(np.float32)


def _pos_ref(attrs: Any, p: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    seq = x.shape[1]
    if attrs["kind"] == "sinusoidal":
        return x + sinusoidal_table(seq, attrs["dim"])[None]
    if seq > attrs["max_len"]:
        from .._errors import FeedError

        raise FeedError(f"positional_encoding: sequence length {seq} exceeds "
                        f"max_len={attrs['max_len']}")
    return x + p["embeddings"][None, :seq]


def _pos_lower(b: Any, node: Any, ins: list[str]) -> list[str]:
    x, dim = ins[0], node.attrs["dim"]
    seq = b.dim(x, 1)  # (1,) int64
    if node.attrs["kind"] == "learned":
        table = b.op1("Slice", [b.param("embeddings"), b.ints([0]), seq, b.ints([0])])
    else:
        table = _sinusoidal_graph(b, seq, dim)
    return [b.op1("Add", [x, table])]


def _sinusoidal_graph(b: Any, count: str, dim: int, offset: str | None = None) -> str:
    """The (count, dim) sinusoidal table of `sinusoidal_table`, count a (1,) int64 tensor
    (positions offset .. offset+count-1 with `offset`, a (1,) int64 tensor)."""
    half = (dim + 1) // 2
    pos = b.op1("Range", [b.const(np.array(0.0, np.float32), "float32"),
                          b.cast(b.op1("Squeeze", [count]), "float32"),
                          b.const(np.array(1.0, np.float32), "float32")])  # (S,)
    if offset is not None:
        pos = b.op1("Add", [pos, b.cast(offset, "float32")])
    inv_freq = (1.0 / 10000.0 ** (np.arange(0, dim, 2, dtype=np.float64) / dim)).astype(np.float32)
    angles = b.op1("Mul", [b.unsqueeze(pos, [1]), b.const(inv_freq[None, :], "float32")])
    sin = b.unsqueeze(b.op1("Sin", [angles]), [2])  # (S, half, 1)
    cos = b.unsqueeze(b.op1("Cos", [angles]), [2])
    table = b.reshape(b.concat([sin, cos], 2), [-1, 2 * half])  # (S, 2*half): sin, cos interleaved
    if 2 * half != dim:
        table = b.op1("Slice", [table, b.ints([0]), b.ints([dim]), b.ints([1])])
    if b.dtype != "float32":
        table = b.cast(table, b.dtype)
    return table


def _pos_decode_ref(attrs: Any, p: dict[str, np.ndarray], ctx: Any, node: Any,
                    x: np.ndarray) -> np.ndarray:
    pos = ctx.positions  # (B, S)
    if attrs["kind"] == "sinusoidal":
        return x + sinusoidal_table(int(pos.max()) + 1, attrs["dim"])[pos]
    if pos.max() >= attrs["max_len"]:
        from .._errors import FeedError

        raise FeedError(f"positional_encoding: position {pos.max()} exceeds "
                        f"max_len={attrs['max_len']}")
    return x + p["embeddings"][pos]  # (B, S, dim)


def _pos_decode_lower(b: Any, node: Any, ins: list[str], ctx: Any) -> list[str]:
    if node.attrs["kind"] == "learned":
        table = b.param("embeddings")
    else:  # every position so far: the attention mask's length
        table = _sinusoidal_graph(b, b.dim(ctx.padding, 1), node.attrs["dim"])
    return [b.op1("Add", [ins[0], b.op1("Gather", [table, ctx.positions], axis=0)])]


def _pos_stream_ref(attrs: Any, p: dict[str, np.ndarray], ctx: Any, node: Any,
                    x: np.ndarray) -> np.ndarray:
    pos = ctx.positions  # (S,): frames seen .. + S - 1
    if attrs["kind"] == "sinusoidal":
        return x + sinusoidal_table(pos, attrs["dim"])[None]
    return x + p["embeddings"][pos][None]  # Step checks max_len before it runs


def _pos_stream_lower(b: Any, node: Any, ins: list[str], ctx: Any) -> list[str]:
    x = ins[0]
    if node.attrs["kind"] == "sinusoidal":
        table = _sinusoidal_graph(b, b.dim(x, 1), node.attrs["dim"], ctx.frames)
    else:
        start = b.op1("Squeeze", [ctx.frames])
        stop = b.op1("Add", [start, b.op1("Squeeze", [b.dim(x, 1)])])
        pos = b.op1("Range", [start, stop, b.const(np.array(1), "int64")])  # (S,)
        table = b.op1("Gather", [b.param("embeddings"), pos], axis=0)
    return [b.op1("Add", [x, table])]


register("positional_encoding", infer=_pos_infer, reference=_pos_ref, decomposed=_pos_lower,
         decode=DecodeForms(_pos_decode_ref, _pos_decode_lower),
         stream=StreamForms(lambda node, last: None, reference=_pos_stream_ref,
                            lower=_pos_stream_lower))

# -- pooling ---------------------------------------------------------------------------------


def _last_infer(types: list[Any], attrs: Any, fail: Fail) -> list[Any]:
    (x,) = types
    need_rank(x, (3,), "input [batch, seq, dim]", fail)
    problem = _index_problem(attrs.get("index", -1), x.shape[1])
    if problem is not None:
        fail(problem)
    return [x.with_shape((x.shape[0], x.shape[2]))]


def _index_problem(index: int, seq: Any) -> str | None:
    """Why `index` cannot pick a frame of a sequence of `seq` frames (None: it can, or unknown)."""
    if isinstance(seq, int) and not -seq <= index < seq:
        return f"index {index} is outside a sequence of {seq} frames"
    return None


def _timestep_lower(b: Any, node: Any, ins: list[str]) -> list[str]:
    index = b.const(np.array(node.attrs.get("index", -1)), "int64")
    return [b.op1("Gather", [ins[0], index], axis=1)]


def _timestep_stream_check(node: Any, last_only: bool) -> str | None:
    index = node.attrs.get("index", -1)
    if index == -1:
        return None  # the chunk's last frame: the last frame of the prefix so far
    return (f"timestep(index={index}) reads a fixed frame of the whole sequence, not the "
            "latest one; a step model answers from each chunk's last frame (last_timestep)")


for _op in ("last_timestep", "timestep"):
    register(_op, infer=_last_infer, reference=lambda a, p, x: x[:, a.get("index", -1), :],
             decomposed=_timestep_lower, stream=StreamForms(_timestep_stream_check),
             check=lambda a, x: _index_problem(a.get("index", -1), x.shape[1]))

# -- tied output projection ------------------------------------------------------------------


def _tied_infer(types: list[Any], attrs: Any, fail: Fail) -> list[Any]:
    (x,) = types
    need_float(x, "input", fail)
    if x.rank < 1 or x.shape[-1] != attrs["dim"]:
        fail(f"expected input [..., {attrs['dim']}] (the embedding width), given {x}")
    return [x.with_shape((*x.shape[:-1], attrs["vocab_size"]))]


def _tied_lower(b: Any, node: Any, ins: list[str]) -> list[str]:
    table_t = b.transpose(b.param("embeddings"), [1, 0])  # (dim, vocab), folded by runtimes
    return [b.op1("MatMul", [ins[0], table_t])]


register("tied_projection", infer=_tied_infer,
         reference=lambda a, p, x: x @ p["embeddings"].T,  # (..., dim) -> (..., vocab)
         decomposed=_tied_lower, per_position=True)


def _mean_pool_infer(types: list[Any], attrs: Any, fail: Fail) -> list[Any]:
    x, mask = types
    need_float(x, "input", fail)
    need_rank(x, (3,), "input [batch, seq, dim]", fail)
    if mask is not None and (mask.rank != 2 or mask.dtype not in ("bool", *INT_DTYPES)):
        fail(f"mask must be bool/int [batch, seq], given {mask}")
    return [x.with_shape((x.shape[0], x.shape[2]))]


def _mean_pool_ref(attrs: Any, p: Any, x: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    if mask is None:
        return x.mean(axis=1)
    m = mask.astype(x.dtype)[:, :, None]  # (B, S, 1)
    return (x * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1.0)


def _mean_pool_lower(b: Any, node: Any, ins: list[str]) -> list[str]:
    x, mask = ins
    if not mask:
        return [b.reduce("ReduceMean", x, [1], keepdims=False)]
    m = b.unsqueeze(b.cast(mask, b.dtype), [2])  # (B, S, 1)
    total = b.reduce("ReduceSum", b.op1("Mul", [x, m]), [1], keepdims=False)
    count = b.op1("Max", [b.reduce("ReduceSum", m, [1], keepdims=False), b.const(1.0)])
    return [b.op1("Div", [total, count])]


def _mean_pool_stream_check(node: Any, last_only: bool) -> str:
    return ("mean_pool averages over time: its value depends on every frame of the sequence "
            "at once, so it has no streaming form; read the latest frame with last_timestep")


register("mean_pool", infer=_mean_pool_infer, reference=_mean_pool_ref,
         decomposed=_mean_pool_lower, stream=StreamForms(_mean_pool_stream_check))
