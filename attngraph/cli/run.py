"""`attngraph run OUT.onnx`: run an ONNX file with onnxruntime and time it."""

from __future__ import annotations

import argparse
import time

import numpy as np

from ..runtime import Session
from ._common import describe, positive_int, providers, type_of
from ._feeds import load_feeds, onnx_vocab, random_feeds, save_arrays
from ._load import require_file

EXAMPLE = "run out/model.onnx --repeat 20 -o out/outputs.npz"
HELP = "run an .onnx file with onnxruntime and time it"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The command's options."""
    p.add_argument("onnx", metavar="OUT.onnx")
    p.add_argument("--inputs", metavar="FEEDS.npz", help="feeds (default: random)")
    p.add_argument("-o", "--output", metavar="OUT.npz", help="save the outputs (np.load reads "
                   "them back)")
    p.add_argument("--batch", type=positive_int, default=2, help="size of batch dims (2)")
    p.add_argument("--seq", type=positive_int, default=7, help="size of other symbolic dims (7)")
    p.add_argument("--seed", type=int, default=0, help="seed for random feeds (0)")
    p.add_argument("--repeat", type=positive_int, default=10, help="timed runs (10)")
    p.add_argument("--providers", type=providers, default=None, metavar="EP,...",
                   help="default: CUDA when available, else CPU")


def run(args: argparse.Namespace) -> int:
    """Run an .onnx file on random or given feeds; print output types and median latency."""
    require_file(args.onnx, "the .onnx model to run")
    session = Session(args.onnx, args.providers)
    if args.inputs is not None:
        feeds = load_feeds(args.inputs)
    else:
        feeds = random_feeds(session.inputs, batch=args.batch, seq=args.seq, seed=args.seed,
                             vocab=onnx_vocab(args.onnx))
    print(f"feeds: {describe(feeds)}")
    outputs = session.run(feeds)  # also the warm-up run
    for name, value in outputs.items():
        print(f"{name}: {type_of(np.asarray(value))}")
    if args.output is not None:
        save_arrays(outputs, args.output)
        print(f"wrote {args.output}")
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        session.run(feeds)
        times.append(time.perf_counter() - start)
    used = ",".join(session.session.get_providers())
    print(f"latency: median {1e3 * float(np.median(times)):.3f} ms over {args.repeat} run(s) "
          f"({used})")
    return 0
