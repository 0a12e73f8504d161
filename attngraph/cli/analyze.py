"""`attngraph analyze FILE.py`: per-head attention statistics, heat maps to a PNG."""

from __future__ import annotations

import argparse

from ._common import model_options, positive_int
from ._feeds import model_vocab, random_feeds
from ._load import model_and_params

EXAMPLE = "analyze model.py -o out/heat.png"
HELP = "attention statistics per head, and heat maps"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The command's options."""
    model_options(p, params=True)
    p.add_argument("-o", "--output", metavar="HEATMAP.png", help="write heat maps (viz extra)")
    p.add_argument("--layer", help="layer to plot (default: the first attention layer)")
    p.add_argument("--seq", type=positive_int, default=7, help="size of other symbolic dims (7)")


def run(args: argparse.Namespace) -> int:
    """Per-head attention statistics on random feeds; heat maps of one layer to a PNG."""
    from ..analysis import analyze, plot_attention

    model, params = model_and_params(args)
    feeds = random_feeds(model.input_types, batch=1, seq=args.seq, seed=args.seed,
                         vocab=model_vocab(model))
    report = analyze(model, params, feeds)
    print(report)
    if args.output:
        path = plot_attention(report, args.output, layer=args.layer)
        print(f"wrote {path}")
    return 0
