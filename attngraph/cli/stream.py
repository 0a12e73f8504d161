"""`attngraph stream STEP.onnx`: feed a step model frames chunk by chunk and time each chunk."""

from __future__ import annotations

import argparse
import time

import numpy as np

from .._stream import Stream
from ._common import CLIError, describe, info, positive_int, providers
from ._feeds import load_feeds, onnx_vocab, random_feeds
from ._load import require_file

EXAMPLE = "stream out/step.onnx --frames 1000 --chunk 1   (from: export model.py --streaming)"
HELP = "stream frames through a step model (export --streaming); latency per chunk, frames/s"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The command's options."""
    p.add_argument("onnx", metavar="STEP.onnx")
    p.add_argument("--frames", type=positive_int, default=None,
                   help="frames to stream (default: 200, or every frame of --inputs)")
    p.add_argument("--chunk", type=positive_int, default=1, help="frames per step (1)")
    p.add_argument("--inputs", metavar="FRAMES.npz",
                   help="input name -> [batch, frames, ...] arrays (default: random)")
    p.add_argument("--batch", type=positive_int, default=1, help="rows of random frames (1)")
    p.add_argument("--seed", type=int, default=0, help="seed for random frames (0)")
    p.add_argument("--providers", type=providers, default=None, metavar="EP,...",
                   help="default: CUDA when available, else CPU")


def _frames(args: argparse.Namespace, stream: Stream) -> dict[str, np.ndarray]:
    if args.inputs is None:
        count = args.frames or 200
        return random_feeds(stream.inputs, batch=args.batch, seq=count, seed=args.seed,
                            vocab=onnx_vocab(args.onnx))
    frames = load_feeds(args.inputs)
    lengths = {k: v.shape[1] for k, v in frames.items() if v.ndim >= 2}
    if len(lengths) != len(frames) or len(set(lengths.values())) != 1:
        raise CLIError(f"--inputs {args.inputs!r}: every array must be [batch, frames, ...] "
                       f"with one frame count, given {describe(frames)}")
    count = next(iter(lengths.values()))
    if args.frames is not None:
        if args.frames > count:
            raise CLIError(f"--frames {args.frames}: --inputs holds only {count} frame(s)")
        count = args.frames
    return {k: v[:, :count] for k, v in frames.items()}


def run(args: argparse.Namespace) -> int:
    """Stream the frames in chunks of --chunk; print latency percentiles and frames/s."""
    require_file(args.onnx, "the step model to stream")
    stream = Stream(args.onnx, providers=args.providers)
    frames = _frames(args, stream)
    total = next(iter(frames.values())).shape[1]
    info(f"frames: {describe(frames)}")
    times, sizes = [], []
    for start in range(0, total, args.chunk):
        chunk = {k: v[:, start:start + args.chunk] for k, v in frames.items()}
        begin = time.perf_counter()
        stream.step(chunk)
        times.append(time.perf_counter() - begin)
        sizes.append(next(iter(chunk.values())).shape[1])
    ms = np.asarray(times) * 1e3
    print(f"streamed {total} frame(s) in {len(times)} chunk(s) of {args.chunk} (batch "
          f"{stream.batch}): latency per chunk p50 {np.percentile(ms, 50):.3f} ms, p99 "
          f"{np.percentile(ms, 99):.3f} ms; {sum(sizes) / (ms.sum() / 1e3):.0f} frames/s; "
          f"state {stream.state_bytes} bytes")
    return 0
