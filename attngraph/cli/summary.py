"""`attngraph summary FILE.py`: the model's layer table."""

from __future__ import annotations

import argparse

from ._common import model_options, positive_int
from ._load import load_model

EXAMPLE = "summary model.py   (or: summary hf:DIR)"
HELP = "print the model's layer table"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The command's options."""
    model_options(p, params=False)
    p.add_argument("--context", type=positive_int, metavar="TOKENS",
                   help="also print the key/value-cache total for this many tokens")
    p.add_argument("--dtype", choices=("float32", "float16"),
                   help="cache bytes in this dtype (default: each layer's own)")


def run(args: argparse.Namespace) -> int:
    """Print the model's layer table."""
    model, _ = load_model(args.model)
    print(model.summary(context=args.context, dtype=args.dtype))
    return 0
