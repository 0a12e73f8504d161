"""KV-cache decoding: which models can decode with a cache, the cached model's inputs and
outputs, and the reference evaluation of one cached step.

A cached decoder has the inputs and outputs onnxruntime's generation tooling expects:

    input_ids                   int64 [batch, seq]              the new tokens
    attention_mask              int64 [batch, total_seq]        1 = real token, 0 = padding,
                                                                over every position so far
    past_key_values.{i}.key     float [batch, kv_heads, past_seq, head_dim]   (and .value)
    -> logits                   float [batch, seq, vocab]
    -> present.{i}.key          float [batch, kv_heads, present_seq, head_dim] (and .value)

Semantics: token t of a row sits at position cumsum(attention_mask)[t] - 1, so a left-padded
row computes exactly what it would alone; keys are the cached ones followed by the new ones,
padding keys are never attended, causal and sliding windows are bottom-right (DESIGN §4).
present_seq = past_seq + seq, or at most `window` for sliding-window layers (in this copying
form their cache never grows past the window: past_seq = min(window, total_seq - seq); the
shared-buffer form below keeps every position and the op applies the window). Layers with a
window W name their cache length `past_seq_w{W}` / `present_seq_w{W}`, so windowed and global
layers can be mixed.

**Shared buffer** (`export(..., kv_cache=True, share_buffer=True)`, "ort" only): the same names,
but each layer's past and present are one preallocated buffer [batch, kv_heads, max_seq,
head_dim] that onnxruntime's GroupQueryAttention writes in place (bind the same OrtValue as
`past_key_values.{i}.key` and `present.{i}.key`), so no step copies the cache. A row's tokens
sit at the front of its buffer (right padding): with n = sum(attention_mask[row]) tokens so
far, the S new tokens are the row's tokens n - S .. n - 1 at those positions and slots; in the
prompt step (past holds no token, total_seq = seq) the row's tokens are input_ids[row, :n]
and the columns after them are padding whose outputs are unspecified. Without padding this is
the copying convention exactly (a past of length total_seq - seq gives a present of length
total_seq); `ag.generate` moves a left-padded batch's tokens to the front itself. Sliding
windows are applied by the op (`local_window_size`); the buffer keeps max_seq positions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ._errors import FeedError, UnsupportedError, layer_message
from ._feeds import PAST_PREFIX
from ._registry import OPS
from ._types import INT_DTYPES, TensorType

if TYPE_CHECKING:
    from ._graph import Node
    from ._model import Model

IDS, MASK, LOGITS = "input_ids", "attention_mask", "logits"


def past_names(i: int) -> tuple[str, str]:
    return f"{PAST_PREFIX}{i}.key", f"{PAST_PREFIX}{i}.value"


def present_names(i: int) -> tuple[str, str]:
    return f"present.{i}.key", f"present.{i}.value"


@dataclass(frozen=True)
class CacheLayer:
    """One attention layer's cache: [batch, kv_heads, positions, head_dim] keys and values
    (at most `window` positions in the copying form)."""

    node: Node
    name: str
    kv_heads: int
    head_dim: int
    window: int | None

    def seq_dim(self, prefix: str) -> str:
        """The symbolic name of this layer's cache length ("past_seq" or "present_seq")."""
        return prefix if self.window is None else f"{prefix}_w{self.window}"


@dataclass
class Decode:
    """What the decode forms of ops read: numpy arrays in the reference interpreter, tensor
    names in the exporter."""

    index: dict[Node, int]  # attention node -> cache slot i
    positions: Any  # (B, S) int64: absolute position of each new token
    padding: Any  # (B, T) int64: the attention mask over every position so far
    past: list[tuple[Any, Any]]  # slot i -> (B, Hkv, P, D) keys, values
    present: dict[int, tuple[Any, Any]] = field(default_factory=dict)
    # shared-buffer exports: (seqlens_k (B,) int32, total_sequence_length () int32), built
    # once per model from the attention mask and read by every layer
    shared: tuple[Any, Any] | None = None
    # exporter: (rotary_dim, base) -> cos, sin (B, S, r/2) at `positions`, made once per model
    rope_tables: dict[tuple[int, float], tuple[Any, Any]] = field(default_factory=dict)


def looks_ahead(attrs: Mapping[str, Any]) -> bool:
    """Whether an attention layer's queries see later positions (neither causal=True nor an
    int window, which DESIGN §4 makes causal): such a layer cannot decode token by token."""
    return not attrs.get("causal") and not isinstance(attrs.get("window"), int)


def cache_layers(model: Model, where: str = "kv_cache") -> list[CacheLayer]:
    """The attention layers of a decoder model, in order; raises UnsupportedError naming the
    first layer that cannot run with a cache (or a model of the wrong form)."""
    ints = [k for k, t in model.input_types.items() if t.dtype in INT_DTYPES and t.rank == 2]
    if len(model.inputs) != 1 or not ints:
        raise UnsupportedError(
            f"{where}: a cached decoder takes one int input [batch, seq] of token ids; "
            f"model {model.name!r} takes {_types(model.input_types)}"
        )
    outs = model.output_types
    if len(outs) != 1 or next(iter(outs.values())).rank != 3:
        raise UnsupportedError(
            f"{where}: a cached decoder has one output [batch, seq, vocab] (the logits); "
            f"model {model.name!r} gives {_types(outs)}"
        )
    layers = []
    for node in model.nodes:
        if node.op == "input":
            continue
        op = OPS[node.op]
        name = model.name_of(node)
        if op.decode is not None:
            reason = op.decode.check(node)
            if reason is None and op.decode.cache is not None:
                layers.append(CacheLayer(node, name, *op.decode.cache(node)))
                continue
        elif op.per_position is not None and op.per_position(node.attrs):
            continue
        else:
            reason = ("it mixes sequence positions and has no cached form; a cached decoder "
                      "is built from per-position layers, positional encodings and causal "
                      "self-attention")
        if reason is not None:
            raise UnsupportedError(layer_message(node.op, name, f"{where}: {reason}",
                                                 node.location))
    if not layers:
        raise UnsupportedError(f"{where}: model {model.name!r} has no attention layer to cache")
    return layers


def share_buffer_choice(layers: list[CacheLayer], target: str, share_buffer: bool | None,
                        where: str = "export(kv_cache=True)") -> bool:
    """Whether a cached export uses one shared past/present buffer per layer. None (default):
    on "ort" when every layer runs GroupQueryAttention (head_dim % 8 == 0), windowed layers
    included (the op applies the window inside the buffer). True where it cannot be done
    raises UnsupportedError naming the layer."""
    if share_buffer is not None and not isinstance(share_buffer, bool):
        raise UnsupportedError(f"{where}: share_buffer must be True, False or None, given "
                               f"{share_buffer!r}")
    if share_buffer is False:
        return False
    if target != "ort":
        if share_buffer:
            raise UnsupportedError(f"{where}: share_buffer=True needs target 'ort' "
                                   f"(onnxruntime's GroupQueryAttention), given {target!r}")
        return False
    odd = [x for x in layers if x.head_dim % 8]
    if odd:
        if share_buffer:
            layer = odd[0]
            raise UnsupportedError(layer_message(
                layer.node.op, layer.name,
                f"{where}: share_buffer=True needs head_dim % 8 == 0 (GroupQueryAttention), "
                f"given head_dim {layer.head_dim}", layer.node.location))
        return False
    return True


def _types(types: Mapping[str, TensorType]) -> str:
    return "(" + ", ".join(f"{k}: {t}" for k, t in types.items()) + ")"


def cache_input_types(model: Model, layers: list[CacheLayer], dtype: str = "float32",
                      shared: bool = False) -> dict[str, TensorType]:
    types = {IDS: TensorType("int64", ("batch", "seq")),
             MASK: TensorType("int64", ("batch", "total_seq"))}
    for i, layer in enumerate(layers):
        seq = "max_seq" if shared else layer.seq_dim("past_seq")
        for name in past_names(i):
            types[name] = TensorType(dtype, ("batch", layer.kv_heads, seq, layer.head_dim))
    return types


def positions_from_mask(mask: np.ndarray, seq: int) -> np.ndarray:
    """(B, T) attention mask -> (B, seq) int64 positions of the last `seq` tokens:
    cumsum(mask) - 1, clipped at 0 for padding (as Hugging Face's generate does)."""
    pos = np.maximum(np.cumsum(mask.astype(np.int64), axis=1) - 1, 0)
    return pos[:, pos.shape[1] - seq:]


def check_tokens_first(mask: np.ndarray, seq: int, where: str) -> None:
    """The shared-buffer form keeps a row's tokens at the front of its buffer: in the columns
    of the `seq` new tokens (a prompt, a chunk), each row's tokens come first and its padding
    last. (Later one-token steps append a column of ones; only each row's count matters.)"""
    if seq < 2:
        return
    new = mask[:, mask.shape[1] - seq:]
    late = np.flatnonzero((np.diff(new, axis=1) > 0).any(axis=1))
    if late.size:
        row = int(late[0])
        raise FeedError(
            f"{where}: this file keeps each row's cache in one shared buffer "
            f"(share_buffer=True), so in a prompt each row's tokens come first and its padding "
            f"last; attention_mask row {row} has padding before a token "
            f"({new[row].tolist()[:12]}{' ...' if new.shape[1] > 12 else ''}). Put each row's "
            f"tokens first (ag.generate does this itself), or export with share_buffer=False "
            f"for left padding")


def check_lengths(layers: list[CacheLayer], arrays: Mapping[str, np.ndarray],
                  where: str) -> None:
    """Each cache must hold every earlier position, or the last `window` of them."""
    seq, total = arrays[IDS].shape[1], arrays[MASK].shape[1]
    if seq == 0:
        raise FeedError(f"{where}: input_ids holds no token (seq = 0)")
    if not np.isin(arrays[MASK], (0, 1)).all():
        raise FeedError(f"{where}: attention_mask must hold 0 (padding) or 1 (token)")
    for i, layer in enumerate(layers):
        past = arrays[past_names(i)[0]].shape[2]
        earlier = total - seq
        want = earlier if layer.window is None else min(layer.window, earlier)
        if past != want:
            held = ("every earlier position" if layer.window is None
                    else f"the last min(window={layer.window}, earlier positions)")
            raise FeedError(
                f"{where}: attention_mask covers {total} positions and input_ids {seq} new ones, "
                f"so layer {layer.name!r}'s cache {past_names(i)[0]!r} must hold {held} = "
                f"{want}, given {past}"
            )


def evaluate_cached(model: Model, params: Mapping[str, Any], feeds: Mapping[str, Any], *,
                    check_finite: bool = False) -> dict[str, np.ndarray]:
    """One cached step in numpy: the reference of `export(..., kv_cache=True)`."""
    from ._feeds import check_feeds
    from ._params import check_params

    layers = cache_layers(model, "predict(kv_cache=True)")
    arrays = check_feeds(cache_input_types(model, layers), feeds, check_finite=check_finite,
                         where="predict(kv_cache=True)")
    check_lengths(layers, arrays, "predict(kv_cache=True)")
    return run_cached(model, check_params(model.param_specs, params), layers, arrays)


def run_cached(model: Model, params: Mapping[str, np.ndarray], layers: list[CacheLayer],
               arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One cached step on checked params and feeds (loops that build their own feeds call
    this directly)."""
    from ._interpreter import run_nodes

    ids, mask = arrays[IDS], arrays[MASK]
    ctx = Decode(
        index={layer.node: i for i, layer in enumerate(layers)},
        positions=positions_from_mask(mask, ids.shape[1]),
        padding=mask,
        past=[(arrays[k], arrays[v]) for k, v in map(past_names, range(len(layers)))],
    )
    (key,) = model.inputs
    env = run_nodes(model, params, {key: ids}, decode=ctx)
    (out,) = model.outputs.values()
    result = {LOGITS: env[(out.node, out.index)]}
    for i in range(len(layers)):
        result.update(zip(present_names(i), ctx.present[i]))
    return result


def empty_past(layers: list[CacheLayer], batch: int,
               dtype: Any = np.float32) -> dict[str, np.ndarray]:
    """Zero-length caches for the first (prompt) step."""
    feeds = {}
    for i, layer in enumerate(layers):
        for name in past_names(i):
            feeds[name] = np.zeros((batch, layer.kv_heads, 0, layer.head_dim), dtype)
    return feeds
