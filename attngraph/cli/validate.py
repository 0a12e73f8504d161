"""`attngraph validate FILE.py`: every target against the numpy reference."""

from __future__ import annotations

import argparse

from .._registry import TARGETS
from .._validate import validate
from ._common import describe, model_options, positive_int, providers, targets
from ._feeds import load_feeds, model_vocab, random_feeds
from ._load import model_and_params

EXAMPLE = "validate model.py --targets ort,decomposed --inputs feeds.npz"
HELP = "compare exported targets with the numpy reference"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The command's options."""
    model_options(p, params=True)
    p.add_argument("--targets", type=targets, default=TARGETS, metavar=",".join(TARGETS))
    p.add_argument("--batch", type=positive_int, default=2, help="size of batch dims (2)")
    p.add_argument("--seq", type=positive_int, default=7, help="size of other symbolic dims (7)")
    p.add_argument("--providers", type=providers, default=None, metavar="EP,...")
    p.add_argument("--inputs", metavar="FEEDS.npz", help="feeds (default: random, sized by "
                   "--batch and --seq)")


def run(args: argparse.Namespace) -> int:
    """Compare each target with the reference on random or given feeds; exit 1 when any
    check fails."""
    model, params = model_and_params(args)
    if args.inputs is not None:
        feeds = load_feeds(args.inputs)
    else:
        feeds = random_feeds(model.input_types, batch=args.batch, seq=args.seq,
                             seed=args.seed, vocab=model_vocab(model))
    print(f"feeds: {describe(feeds)}")
    report = validate(model, params, feeds, args.targets, dtype=args.dtype,
                      providers=args.providers)
    print(report)
    return 0 if report.passed else 1
