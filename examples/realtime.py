"""Real-time streaming: Edifice's sliding_window and hybrid presets fed one frame at a time.

Each model is exported as a step model (`streaming=True`: the next frame and the carried
state in, the answer and the new state out) for every target into exported/, then streamed
frame by frame on onnxruntime with `ag.Stream`. After every frame the answer is checked
against evaluating the whole sequence so far with the reference interpreter; a live line on
stderr shows frames/s.

    python examples/realtime.py              # 240 frames per model
    python examples/realtime.py --frames 1000
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import attngraph as ag

EMBED_DIM = 16


def build_sliding_window() -> tuple[ag.Model, dict[str, np.ndarray]]:
    model = ag.models.sliding_window(EMBED_DIM, window_size=8, num_heads=4, head_dim=8,
                                     num_layers=2, ffn_dim=32)
    return model, model.init(seed=0)


def build_hybrid() -> tuple[ag.Model, dict[str, np.ndarray]]:
    model = ag.models.hybrid(EMBED_DIM, lstm_hidden=32, num_heads=4, head_dim=16,
                             window_size=8)
    return model, model.init(seed=0)


MODELS = {"realtime_sliding_window": build_sliding_window, "realtime_hybrid": build_hybrid}


def stream_and_check(name: str, path: str, frames: int) -> float:
    """Stream `frames` random frames one by one; return the largest difference from the
    reference on the whole prefix (checked after every frame)."""
    model, params = MODELS[name]()
    stream = ag.Stream(path)
    x = np.random.default_rng(1).standard_normal((1, frames, EMBED_DIM)).astype(np.float32)
    worst, start, live = 0.0, time.perf_counter(), sys.stderr.isatty()
    for t in range(frames):
        got = stream.step({"input": x[:, t:t + 1]})["output"]
        want = model.predict(params, {"input": x[:, :t + 1]})["output"]
        worst = max(worst, float(np.abs(got - want).max()))
        if live and (t % 10 == 9 or t == frames - 1):
            rate = (t + 1) / (time.perf_counter() - start)
            print(f"\r{name}: frame {t + 1}/{frames}, {rate:.0f} frames/s (with the check)",
                  end="", file=sys.stderr, flush=True)
    if live:
        print(file=sys.stderr)
    return worst


def main() -> int:
    from _export_util import export_example

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=240)
    args = parser.parse_args()
    for name, build in MODELS.items():
        paths = export_example(name, build, streaming=True)
        worst = stream_and_check(name, paths[0], args.frames)  # the "ort" step model
        stream = ag.Stream(paths[0])
        x = np.zeros((1, args.frames, EMBED_DIM), np.float32)
        start = time.perf_counter()
        for t in range(args.frames):
            stream.step({"input": x[:, t:t + 1]})
        rate = args.frames / (time.perf_counter() - start)
        print(f"{name}: {args.frames} frames one at a time, max |stream - predict(prefix)| "
              f"{worst:.1e}, {rate:.0f} frames/s, state {stream.state_bytes} bytes")
        if worst > 1e-4:
            print(f"{name}: streamed outputs differ from whole-sequence evaluation",
                  file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
