"""`attngraph summary FILE.py`: the model's layer table."""

from __future__ import annotations

import argparse

from ._common import model_options
from ._load import load_model

EXAMPLE = "summary model.py"
HELP = "print the model's layer table"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The command's options."""
    model_options(p, params=False)


def run(args: argparse.Namespace) -> int:
    """Print the model's layer table."""
    model, _ = load_model(args.model)
    print(model.summary())
    return 0
