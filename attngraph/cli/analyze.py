"""`attngraph analyze FILE.py`: per-head attention statistics and patterns, heat maps to a PNG,
or the whole report as JSON."""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

from .._model import Model
from ._common import CLIError, describe, info, model_options, positive_int, token_ids
from ._feeds import load_feeds, model_vocab, random_feeds
from ._load import model_and_params

EXAMPLE = 'analyze model.py --prompt "5 17 3 9" --tokens "the cat sat down" -o out/heat.png'
HELP = "attention statistics and patterns per head, heat maps, --json for machines"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The command's options."""
    model_options(p, params=True)
    given = p.add_mutually_exclusive_group()
    given.add_argument("--prompt", metavar="IDS",
                       help="token ids for the model's id input, e.g. '5 17 3' (default: random)")
    given.add_argument("--inputs", metavar="FEEDS.npz", help="feeds (default: random)")
    p.add_argument("--tokens", metavar="WORDS",
                   help="labels of the positions for the heat maps, separated by spaces "
                        "(default: the prompt's ids)")
    p.add_argument("-o", "--output", metavar="HEATMAP.png",
                   help="write heat maps: layers x heads, one colour scale (viz extra)")
    p.add_argument("--layer", action="append", metavar="NAME",
                   help="layer to plot (repeat for several; default: every attention layer)")
    p.add_argument("--json", action="store_true",
                   help="print the report as JSON on stdout (statistics, patterns, warnings)")
    p.add_argument("--seq", type=positive_int, default=7,
                   help="size of symbolic dims of random feeds (7)")


def run(args: argparse.Namespace) -> int:
    """Per-head statistics (entropy, sparsity over attendable keys, pattern) and heat maps."""
    from ..analysis import analyze, plot_attention

    model, params = model_and_params(args)
    feeds = _feeds(model, args)
    info(f"feeds: {describe(feeds)}")
    report = analyze(model, params, feeds)
    labels = _labels(args, report)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report)
    if args.output:
        path = plot_attention(report, args.output, layers=args.layer, tokens=labels)
        info(f"wrote {path}")
    return 0


def _feeds(model: Model, args: argparse.Namespace) -> dict[str, np.ndarray]:
    if args.inputs is not None:
        return load_feeds(args.inputs)
    if args.prompt is None:
        return random_feeds(model.input_types, batch=1, seq=args.seq, seed=args.seed,
                            vocab=model_vocab(model))
    ids = token_ids(args.prompt)
    vocab = model_vocab(model)
    if not vocab:
        raise CLIError(f"--prompt needs a model that looks token ids up in an embedding; "
                       f"{model.name!r} takes {describe_types(model)}; pass --inputs instead")
    feeds = random_feeds(model.input_types, batch=1, seq=len(ids), seed=args.seed, vocab=vocab)
    for name, size in vocab.items():
        if max(ids) >= size:
            raise CLIError(f"--prompt: token id {max(ids)} is outside the vocabulary of "
                           f"{name!r} (size {size})")
        feeds[name] = np.asarray([ids], dtype=model.input_types[name].dtype)
    return feeds


def describe_types(model: Model) -> str:
    return ", ".join(f"{k} {t}" for k, t in model.input_types.items())



def _labels(args: argparse.Namespace, report: Any) -> list[str] | None:
    """Heat-map labels: --tokens, else the prompt's ids; one per query position."""
    if args.tokens is not None:
        labels = args.tokens.split()
    elif args.prompt is not None:
        labels = [str(i) for i in token_ids(args.prompt)]
    else:
        return None
    positions = next(iter(report.layers.values())).weights.shape[2]
    if len(labels) != positions:
        raise CLIError(f"--tokens: {len(labels)} labels for {positions} positions; give one "
                       "label per position, separated by spaces")
    return labels
