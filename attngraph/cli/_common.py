"""What every command shares: the CLI's error type, argument types, verbosity, small formats."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import NoReturn

import numpy as np

from .._registry import TARGETS
from .._types import FLOAT_DTYPES, TensorType, normalize_dtype
from ..runtime import available_providers

SPEC_HELP = ("Python file defining the model, optionally :NAME (default: build, then model); "
             "or hf:DIR, a Hugging Face checkpoint folder")


class CLIError(Exception):
    """A user mistake that the command line itself detects (bad file, bad NAME, bad flag)."""


class ArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors become one `error: ...` line, not usage + exit."""

    def error(self, message: str) -> NoReturn:
        raise CLIError(f"{message} (see '{self.prog} --help')")


# -- verbosity: 0 with -q (results only), 1 by default, 2 with -v ----------------------------

_verbosity = 1


def set_verbosity(level: int) -> None:
    """Set how much goes to stderr: 0 results only, 1 progress and timing lines, 2 more."""
    global _verbosity
    _verbosity = level


def verbosity() -> int:
    """The level set by -q (0) / default (1) / -v (2)."""
    return _verbosity


def info(message: str) -> None:
    """A progress or timing line on stderr; silent under -q."""
    if _verbosity >= 1:
        print(message, file=sys.stderr, flush=True)


# -- argument types -------------------------------------------------------------------------


def positive_int(text: str) -> int:
    """argparse type: an int > 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, given {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, given {text!r}")
    return value


def targets(text: str) -> tuple[str, ...]:
    """argparse type: a comma-separated subset of the lowering targets."""
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [t for t in names if t not in TARGETS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown target(s) {unknown or [text]}; expected a "
                                         f"comma-separated subset of {','.join(TARGETS)}")
    return names


def providers(text: str) -> list[str]:
    """argparse type: comma-separated execution providers this onnxruntime offers."""
    names = [p.strip() for p in text.split(",") if p.strip()]
    available = available_providers()
    unknown = [p for p in names if p not in available]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unavailable provider(s) {unknown or [text]}; this "
                                         f"onnxruntime offers {','.join(available)}")
    return names


def model_options(p: argparse.ArgumentParser, *, params: bool) -> None:
    """The FILE.py[:NAME] positional, and with `params` also --params, --seed and --dtype."""
    p.add_argument("model", metavar="FILE.py[:NAME]|hf:DIR", help=SPEC_HELP)
    if params:
        p.add_argument("--params", metavar="PARAMS", help=".safetensors or .npz parameters "
                       "(default: the file's, else model.init(--seed))")
        p.add_argument("--seed", type=int, default=0, help="seed for init and feeds (0)")
        p.add_argument("--dtype", choices=FLOAT_DTYPES, default="float32")


# -- small formats --------------------------------------------------------------------------


def one_line(message: str) -> str:
    """Join a multi-line message (e.g. a list of parameter problems) into one line."""
    out = ""
    for line in filter(None, (part.strip() for part in message.splitlines())):
        out += line if not out else (" " if out.endswith(":") else "; ") + line
    return out


def type_of(array: np.ndarray) -> TensorType:
    """The compact type of an array: f32[2,7,24]."""
    dtype = normalize_dtype(array.dtype) or array.dtype.name
    return TensorType(dtype, tuple(int(d) for d in array.shape))


def describe(arrays: Mapping[str, np.ndarray]) -> str:
    """`x f32[2,7,24], ids i64[2,7]`."""
    return ", ".join(f"{k} {type_of(v)}" for k, v in arrays.items())


def human_size(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{int(n)} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def token_ids(text: str) -> list[int]:
    """--prompt's token ids, separated by spaces or commas."""
    parts = text.replace(",", " ").split()
    if not parts or not all(p.isdigit() for p in parts):
        raise CLIError(f"--prompt expects token ids separated by spaces or commas, given "
                       f"{text!r}")
    return [int(p) for p in parts]
