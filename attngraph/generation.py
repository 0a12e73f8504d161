"""`ag.generate`: autoregressive decoding with a key/value cache, on onnxruntime or in numpy.

The loop is the same for every backend: run the prompt, pick one token per row from the last
logits (greedy, or sampled with temperature / top-k / top-p), feed it back with the grown
attention mask and the cache, stop after `max_new_tokens` or when every row has produced
`eos_token_id`. Batches are left-padded (attention_mask 0 on the left); each row computes
exactly what it would alone.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from ._checks import Checker
from ._decode import (
    IDS,
    LOGITS,
    MASK,
    cache_layers,
    empty_past,
    looks_ahead,
    past_names,
    present_names,
    run_cached,
)
from ._errors import ConfigError, FeedError, UnsupportedError, caller_location
from ._feeds import PAST_PREFIX
from ._model import Model
from ._params import check_params

PROGRESS_FROM = 256  # new tokens from which a progress bar shows (on a terminal)


class _Reference:
    """The cached decoder in numpy (the reference interpreter)."""

    def __init__(self, model: Model, params: Mapping[str, np.ndarray]) -> None:
        self.model, self.params = model, check_params(model.param_specs, params)
        self.layers = cache_layers(model, "generate")
        self.past: dict[str, np.ndarray] = {}
        self.layer_config = model.config()["layers"]

    def start(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        self.past = empty_past(self.layers, ids.shape[0])
        return self.step(ids, mask)

    def step(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        out = run_cached(self.model, self.params, self.layers, {IDS: ids, MASK: mask, **self.past})
        self.past = {past: out[present] for i in range(len(self.layers))
                     for past, present in zip(past_names(i), present_names(i))}
        return out[LOGITS][:, -1]  # (B, V)


class _Cached:
    """An exported cached decoder on onnxruntime; the cache stays on the device between steps
    (I/O binding)."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.past_inputs = [n for n in session.inputs if n.startswith(PAST_PREFIX)]
        self.past: dict[str, Any] = {}
        self.layer_config = _recorded_layers(session)

    def start(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        host = {}
        for name in self.past_inputs:
            t = self.session.inputs[name]
            host[name] = np.zeros((ids.shape[0], t.shape[1], 0, t.shape[3]), t.dtype)
        return self._run(ids, mask, host)

    def step(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self._run(ids, mask, {})

    def _run(self, ids: np.ndarray, mask: np.ndarray, host: dict[str, np.ndarray]) -> np.ndarray:
        keep = [n.replace(PAST_PREFIX, "present.") for n in self.past_inputs]
        fetched, kept = self.session.run_bound(
            {IDS: ids, MASK: mask, **host}, self.past, keep=keep, fetch=[LOGITS])
        self.past = {past: kept[present] for past, present in zip(self.past_inputs, keep)}
        return fetched[LOGITS][:, -1].astype(np.float32)  # (B, V)


class _Shared:
    """A shared-buffer cached decoder on onnxruntime (`export(..., share_buffer=True)`): one
    [batch, kv_heads, max_len, head_dim] buffer per cache, allocated once on the model's
    device and updated in place by the model; nothing is copied between steps. A row's
    tokens sit at the front of its buffer, so a left-padded prompt is fed with its tokens
    moved to the front (the padding after them) and the first logits are read at each row's
    last token."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.past_inputs = [n for n in session.inputs if n.startswith(PAST_PREFIX)]
        self.alias = {n: n.replace(PAST_PREFIX, "present.") for n in self.past_inputs}
        self.layer_config = _recorded_layers(session)
        self.buffers: dict[str, Any] = {}
        self.max_len = 0
        self.logits = np.zeros((0, 1, 0), np.float32)
        self.steady: Any = None

    def reserve(self, max_len: int) -> None:
        """Room for the longest prompt plus every new token (called before start)."""
        self.max_len = max_len

    def start(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        batch, width = ids.shape
        lengths = mask.sum(axis=1)
        front = np.zeros_like(ids)
        for row, n in enumerate(lengths):
            front[row, :n] = ids[row, mask[row] == 1]
        self.buffers = {}
        for name in self.past_inputs:
            t = self.session.inputs[name]
            self.buffers[name] = self.session.buffer(
                (batch, t.shape[1], max(self.max_len, width), t.shape[3]), t.dtype)
        self.count = np.arange(width)[None] < lengths[:, None]  # (B, S) right-padded mask
        logits = self._run(front, self.count.astype(np.int64))  # (B, S, V)
        self.logits = np.zeros((batch, 1, logits.shape[2]), logits.dtype)  # each step's
        self.steady = None
        return logits[np.arange(batch), lengths - 1].astype(np.float32)  # (B, V)

    def step(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        # every row gained one token: the mask over the buffer grows by one column of ones
        self.count = np.concatenate([self.count, np.ones((ids.shape[0], 1), bool)], axis=1)
        if self.steady is None:  # from the first one-token step on, one binding serves all
            self.steady = self.session.steady(self.buffers, self.alias, {LOGITS: self.logits})
        self.steady({IDS: ids, MASK: self.count.astype(np.int64)})
        return self.logits[:, -1].astype(np.float32)  # (B, V), a copy

    def _run(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        fetched, _ = self.session.run_bound({IDS: ids, MASK: mask}, self.buffers, keep=[],
                                            fetch=[LOGITS], alias=self.alias)
        return fetched[LOGITS]


class _Recompute:
    """An exported model without a cache: every step recomputes the whole sequence (the
    baseline the cache is measured against)."""

    def __init__(self, session: Any) -> None:
        ints = [n for n, t in session.inputs.items() if t.dtype in ("int64", "int32")]
        outs = list(session.outputs.values())
        if len(session.inputs) != 1 or not ints or len(outs) != 1 or outs[0].rank != 3:
            raise ConfigError(
                f"generate: the session takes {list(session.inputs)} and gives "
                f"{list(session.outputs)}; expected a cached decoder (export(..., "
                "kv_cache=True)) or a model from token ids to logits [batch, seq, vocab]"
            )
        self.layer_config = _recorded_layers(session)
        looking_ahead = [x["name"] for x in self.layer_config
                         if x["op"] in ("multi_head_attention", "attention") and looks_ahead(x)]
        if looking_ahead:
            raise UnsupportedError(f"generate: attention layer(s) {looking_ahead} of this model "
                                   "are not causal, so it cannot generate token by token")
        self.session, self.name = session, ints[0]
        self.ids = np.zeros((0, 0), np.int64)

    def start(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if not mask.all():
            raise FeedError("generate: this model has no cache and no attention_mask input, so "
                            "it cannot skip padding; export it with kv_cache=True for padded "
                            "batches")
        self.ids = ids[:, :0]
        return self.step(ids, mask)

    def step(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        self.ids = np.concatenate([self.ids, ids], axis=1)
        logits = self.session.run({self.name: self.ids})
        return next(iter(logits.values()))[:, -1].astype(np.float32)  # (B, V)


def _recorded_layers(session: Any) -> list[dict[str, Any]]:
    """The layer list attngraph recorded in an exported file's metadata ([] for other files)."""
    import json

    try:
        return list(json.loads(session.metadata.get("attngraph.config", "{}")).get("layers", []))
    except (ValueError, AttributeError):
        return []


def _check_positions(layers: list[dict[str, Any]], mask: np.ndarray, new: int) -> None:
    """Learned position tables must cover the last position generation will feed."""
    last = int(mask.sum(axis=1).max()) + new - 2  # the last generated token is not fed
    for layer in layers:
        if layer["op"] == "positional_encoding" and layer.get("kind") == "learned" and \
                last >= layer["max_len"]:
            raise ConfigError(
                f"generate: the longest prompt ({int(mask.sum(axis=1).max())} tokens) plus "
                f"max_new_tokens={new} needs position {last}, but {layer['name']!r} has learned "
                f"positions 0..{layer['max_len'] - 1} (max_len={layer['max_len']})"
            )


def _backend(target: Any, params: Mapping[str, np.ndarray] | None) -> Any:
    from .runtime import Session

    if isinstance(target, Model):
        if params is None:
            raise ConfigError("generate: a Model runs in the reference interpreter and needs "
                              "params=...")
        return _Reference(target, params)
    if isinstance(target, Session):
        if IDS in target.inputs and MASK in target.inputs and any(
                n.startswith(PAST_PREFIX) for n in target.inputs):
            if target.metadata.get("attngraph.share_buffer") == "true":
                return _Shared(target)
            return _Cached(target)
        return _Recompute(target)
    raise ConfigError(f"generate: expected an ag.Session or an ag.Model, given "
                      f"{type(target).__name__}")


def _prompt(prompt_ids: Any, attention_mask: Any) -> tuple[np.ndarray, np.ndarray]:
    try:
        ids = np.asarray(prompt_ids)
        mask = None if attention_mask is None else np.asarray(attention_mask)
    except (ValueError, TypeError):
        raise FeedError("generate: prompt_ids and attention_mask must be rectangular arrays "
                        "(pad shorter prompts on the left and pass attention_mask)") from None
    if ids.ndim == 1:
        ids = ids[None]
        mask = mask[None] if mask is not None and mask.ndim == 1 else mask
    if ids.dtype.kind not in "iu" or ids.ndim != 2 or 0 in ids.shape:
        raise FeedError(f"generate: prompt_ids must be int [batch, seq] with batch, seq >= 1, "
                        f"given {ids.dtype}{list(ids.shape)}")
    if (ids < 0).any():
        raise FeedError(f"generate: prompt_ids must be token ids >= 0, given {ids.min()}")
    if mask is None:
        return ids.astype(np.int64), np.ones(ids.shape, np.int64)
    if mask.shape != ids.shape or not np.isin(mask, (0, 1)).all():
        raise FeedError(f"generate: attention_mask must be 0/1 of the prompt's shape "
                        f"{list(ids.shape)}, given {mask.dtype}{list(mask.shape)}")
    mask = mask.astype(np.int64)
    bad = [r for r in range(mask.shape[0])
           if not mask[r, -1] or (np.diff(mask[r]) < 0).any()]
    if bad:
        raise FeedError(f"generate: rows {bad} of attention_mask are not left-padded (zeros, "
                        "then ones, ending in a token); pad prompts on the left")
    return ids.astype(np.int64), mask


def _pick(logits: np.ndarray, temperature: float, top_k: int | None, top_p: float | None,
          rng: np.random.Generator) -> np.ndarray:
    """(B, V) logits -> (B,) token ids."""
    if temperature == 0.0:
        return logits.argmax(axis=-1)
    z = logits.astype(np.float64)
    z = (z - z.max(axis=-1, keepdims=True)) / temperature  # <= 0: no overflow for tiny T
    if top_k is not None and top_k < z.shape[-1]:
        kth = np.partition(z, -top_k, axis=-1)[:, -top_k, None]
        z = np.where(z < kth, -np.inf, z)
    probs = np.exp(z - z.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-probs, axis=-1, kind="stable")
        sorted_p = np.take_along_axis(probs, order, axis=-1)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        drop = np.empty(probs.shape, bool)
        np.put_along_axis(drop, order, np.cumsum(sorted_p, axis=-1) - sorted_p >= top_p, -1)
        probs = np.where(drop, 0.0, probs)
        probs /= probs.sum(axis=-1, keepdims=True)
    draws = rng.random((probs.shape[0], 1))
    return np.minimum((np.cumsum(probs, axis=-1) < draws).sum(axis=-1), probs.shape[-1] - 1)


def generate_stream(
    session_or_model: Any, prompt_ids: Any, max_new_tokens: int, *,
    params: Mapping[str, np.ndarray] | None = None, temperature: float = 0.0,
    top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
    eos_token_id: int | None = None, attention_mask: Any = None,
    pad_token_id: int | None = None, progress: bool | None = None,
) -> Iterator[np.ndarray]:
    """`ag.generate` as an iterator: yields each step's new tokens (B,) int64 as they come.
    Arguments as in `generate`."""
    return _start(session_or_model, prompt_ids, max_new_tokens, params, temperature, top_k,
                  top_p, seed, eos_token_id, attention_mask, pad_token_id, progress)[1]


def _start(session_or_model: Any, prompt_ids: Any, max_new_tokens: int,
           params: Mapping[str, np.ndarray] | None, temperature: float, top_k: int | None,
           top_p: float | None, seed: int | None, eos_token_id: int | None,
           attention_mask: Any, pad_token_id: int | None,
           progress: bool | None) -> tuple[np.ndarray, Iterator[np.ndarray]]:
    """Check every argument now (not at the first next()); return the checked prompt ids and
    the token iterator."""
    c = Checker("generate", None, caller_location())
    new = _int(c, max_new_tokens, "max_new_tokens", minimum=0)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.floating)) \
            or not np.isfinite(temperature) or temperature < 0:
        c.fail(f"temperature must be a finite number >= 0 (0 = greedy), given {temperature!r}")
    k = None if top_k is None else _int(c, top_k, "top_k", minimum=1)
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(
            top_p, (int, float, np.floating)) or not 0 < top_p <= 1):
        c.fail(f"top_p must lie in (0, 1], given {top_p!r}")
    eos = None if eos_token_id is None else _int(c, eos_token_id, "eos_token_id", minimum=0)
    pad = None if pad_token_id is None else _int(c, pad_token_id, "pad_token_id", minimum=0)
    if seed is not None:
        _int(c, seed, "seed", minimum=0)
    ids, mask = _prompt(prompt_ids, attention_mask)
    backend = _backend(session_or_model, params)
    _check_positions(backend.layer_config, mask, new)
    if isinstance(backend, _Shared):
        backend.reserve(ids.shape[1] + new)
    return ids, _loop(backend, ids, mask, new, float(temperature), k, top_p,
                      np.random.default_rng(seed), eos, pad if pad is not None else (eos or 0),
                      progress)


def _int(c: Checker, value: Any, what: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        c.fail(f"{what} must be an int >= {minimum}, given {value!r}")
    return int(value)


def _loop(backend: Any, ids: np.ndarray, mask: np.ndarray, max_new_tokens: int,
          temperature: float, top_k: int | None, top_p: float | None,
          rng: np.random.Generator, eos: int | None, pad: int,
          progress: bool | None) -> Iterator[np.ndarray]:
    if max_new_tokens == 0:
        return
    bar = _progress(max_new_tokens, progress)
    try:
        logits = backend.start(ids, mask)
        done = np.zeros(ids.shape[0], bool)
        for step in range(max_new_tokens):
            chosen = _pick(logits, temperature, top_k, top_p, rng).astype(np.int64)
            token = np.where(done, pad, chosen)  # rows that stopped show pad_token_id ...
            fed = np.where(done, eos or 0, chosen)  # ... but keep feeding a valid id
            if eos is not None:
                done |= chosen == eos
            if bar is not None:
                bar.update(1)
                bar.clear()  # whatever the caller prints now starts on a clean line
            yield token
            if done.all() or step == max_new_tokens - 1:
                return
            mask = np.concatenate([mask, np.ones((mask.shape[0], 1), np.int64)], axis=1)
            logits = backend.step(fed[:, None], mask)
    finally:
        if bar is not None:
            bar.close()


def _progress(total: int, progress: bool | None) -> Any:
    if progress is None:
        progress = total >= PROGRESS_FROM and sys.stderr.isatty()
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="tok", desc="generate", leave=False)


def generate(
    session_or_model: Any, prompt_ids: Any, max_new_tokens: int, *,
    params: Mapping[str, np.ndarray] | None = None, temperature: float = 0.0,
    top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
    eos_token_id: int | None = None, attention_mask: Any = None,
    pad_token_id: int | None = None, progress: bool | None = None,
) -> np.ndarray:
    """Generate tokens autoregressively.

    Greedy when temperature == 0; else sample from softmax(logits / temperature), restricted
    to the top_k most likely tokens and then to the smallest set whose probability reaches
    top_p. A cached decoder (`ag.Session` of `export(..., kv_cache=True)`) keeps its cache on
    the device between steps through I/O binding; an `ag.Model` (with `params`) runs the same
    loop in the reference interpreter; a session without a cache recomputes every step.

    Args:
        session_or_model: an `ag.Session` or an `ag.Model`.
        prompt_ids: int [batch, seq] (or [seq]); left-padded when rows differ in length.
        max_new_tokens: how many tokens to add at most.
        params: the Model's parameters (only with a Model).
        temperature, top_k, top_p, seed: sampling; `seed` makes sampling repeatable.
        eos_token_id: a row stops at this token; later positions hold `pad_token_id`
            (default eos_token_id). Generation ends when every row has stopped.
        attention_mask: 0/1 [batch, seq], 0 = left padding (default: no padding).
        progress: show a progress bar (default: on a terminal, from 256 new tokens).

    Returns:
        int64 [batch, seq + n]: the prompt followed by the n <= max_new_tokens new tokens.

    Raises:
        ConfigError, FeedError: bad options or prompt; UnsupportedError: the model is not a
        causal decoder.
    """
    ids, stream = _start(session_or_model, prompt_ids, max_new_tokens, params, temperature,
                         top_k, top_p, seed, eos_token_id, attention_mask, pad_token_id,
                         progress)
    steps = list(stream)
    new = np.stack(steps, axis=1) if steps else np.zeros((ids.shape[0], 0), np.int64)
    return np.concatenate([ids, new], axis=1)


__all__ = ["generate", "generate_stream"]
