"""Mask checks of the attention ops: at build time on tensor types (`check_masks`) and at run
time on concrete shapes (`masks_problem`), so a mask that does not fit names its layer instead
of failing inside numpy or onnxruntime."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._types import INT_DTYPES, same_dim
from ._shapes import Fail


def check_masks(mask: Any, kpm: Any, batch: Any, hq: int, sq: Any, sk: Any, fail: Fail) -> None:
    """Build-time check of the attention masks' types against [batch, heads, q_seq, kv_seq]:
    dims that provably differ fail here; symbolic ones are left to `masks_problem`."""
    if kpm is not None:
        if kpm.dtype not in ("bool", *INT_DTYPES):
            fail(f"key_padding_mask must be bool or int (True/1 = attend), given {kpm}")
        if kpm.rank != 2 or same_dim(kpm.shape[0], batch) is False or \
                same_dim(kpm.shape[1], sk) is False:
            fail(f"key_padding_mask must be [batch, kv_seq] = [{batch},{sk}], given {kpm}")
    if mask is not None:
        if mask.dtype not in ("bool", "float32", "float16"):
            fail(f"mask must be bool (True = attend) or float (additive), given {mask}")
        full = (batch, hq, sq, sk)
        # A 2-D mask whose first dim is the batch dim lines batch up with the query axis: the
        # Hugging Face attention_mask habit. It broadcasts only by accident (batch == q_seq).
        batch_on_queries = mask.rank == 2 and same_dim(mask.shape[0], batch) is True \
            and same_dim(batch, sq) is not True
        if batch_on_queries or mask.rank > 4 or any(
            d != 1 and same_dim(d, f) is False for d, f in zip(mask.shape[::-1], full[::-1])
        ):
            fail(f"mask must broadcast to [batch, heads, q_seq, kv_seq] = "
                 f"[{batch},{hq},{sq},{sk}], given {mask}{_padding_hint(mask.rank)}")


def _padding_hint(rank: int) -> str:
    return ("; a [batch, kv_seq] padding mask (Hugging Face's attention_mask) goes in "
            "key_padding_mask=, True/1 = attend" if rank == 2 else "")


def masks_problem(batch: int, hq: int, sq: int, sk: int, kpm: tuple[int, ...] | None,
                  mask: tuple[int, ...] | None) -> str | None:
    """The run-time half of `check_masks` on concrete shapes: sizes that symbolic dims left
    open at build time (used by the interpreter and by `ag.Session` of a Model)."""
    if kpm is not None and tuple(kpm) != (batch, sk):
        return (f"key_padding_mask must be [batch, kv_seq] = [{batch},{sk}] for these feeds, "
                f"given {list(kpm)}")
    full = (batch, hq, sq, sk)
    if mask is not None and (len(mask) > 4 or any(
            d != 1 and d != f for d, f in zip(mask[::-1], full[::-1]))):
        return (f"mask must broadcast to [batch, heads, q_seq, kv_seq] = [{batch},{hq},{sq},"
                f"{sk}] for these feeds, given {list(mask)}{_padding_hint(len(mask))}")
    return None


def array_shape(a: np.ndarray | None) -> tuple[int, ...] | None:
    """A feed's shape as ints (None for an absent mask)."""
    return None if a is None else tuple(int(d) for d in a.shape)
