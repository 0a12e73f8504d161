"""Benchmark real-time streaming: per-frame latency of a step model (`export(...,
streaming=True)` run by `ag.Stream`, state bound on the device) against re-running the model
on the last 60 frames every frame (the Edifice way), and the `hybrid` preset at S = 4096 with
and without last-query evaluation.

Models (the seed's sizes, batch 1, onnxruntime CPU, every target):

    sliding_window  embed_dim 1024, window 60, 4 heads x 64, 2 layers, ffn 256
    hybrid          embed_dim 1024, lstm_hidden 256, 4 heads x 64, window_size 60

    stream     one frame per Stream.step (chunk 1), after 60 warm-up frames
    rerun      Session.run on the last 60 frames [1, 60, 1024] (one frame in four is re-run;
               blocks of each alternate in one process, so all see the same load); also the
               ordinary export as it was before last-query evaluation ("every query")
    floor      the step's weight products alone, bound once (`products_only`): about the
               least a frame can cost here, so rerun / floor is about the best ratio a step
               model can reach
    S=4096     hybrid's ordinary export on [1, 4096, 1024]: every query vs the last query

    flock /tmp/attngraph-bench.lock .venv/bin/python bench/streaming.py          # everything
    flock /tmp/attngraph-bench.lock .venv/bin/python bench/streaming.py --quick  # fewer frames

Each cell runs in its own process. Results: bench/results/streaming.md and streaming.json
(streaming_quick.* with --quick). Latencies are per frame, end to end from Python (feed
checks and I/O binding included); the machine may be shared, so compare the ratios.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _floor import Floor, floor_model, products_only

import attngraph as ag

EMBED, WINDOW, LONG = 1024, 60, 4096
TARGETS = ("ort", "onnx", "decomposed")
GOAL_SPEEDUP, GOAL_TAIL = 10.0, 2.0


def build(name: str) -> ag.Model:
    if name == "sliding_window":
        return ag.models.sliding_window(embed_dim=EMBED, window_size=WINDOW, num_heads=4,
                                        head_dim=64, num_layers=2, ffn_dim=256)
    return ag.models.hybrid(embed_dim=EMBED, lstm_hidden=256, num_heads=4, head_dim=64,
                            window_size=WINDOW if name == "hybrid" else None)


def stats(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "frames_s": float(len(ms) / (ms.sum() / 1e3)), "n": len(ms)}


def cell(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement, in this process."""
    model = build(spec["model"])
    params = model.init(seed=0)
    threads = spec.get("threads")
    rng = np.random.default_rng(0)
    if spec["kind"] == "long":
        from attngraph._stream_plan import every_query

        if spec["every_query"]:
            with every_query():
                proto = ag.export(model, params, target=spec["target"])
        else:
            proto = ag.export(model, params, target=spec["target"])
        session = ag.Session(proto, ["CPUExecutionProvider"], threads=threads)
        x = {"input": rng.standard_normal((1, LONG, EMBED)).astype(np.float32)}
        session.run(x)
        times = []
        for _ in range(spec["repeats"]):
            start = time.perf_counter()
            session.run(x)
            times.append(time.perf_counter() - start)
        return {"median_ms": float(np.median(times) * 1e3)}
    total = WINDOW + spec["frames"]
    frames = rng.standard_normal((1, total, EMBED)).astype(np.float32)
    proto = ag.export(model, params, target=spec["target"], streaming=True)
    stream = ag.Stream(ag.Session(proto, ["CPUExecutionProvider"], threads=threads))
    rerun = ag.Session(ag.export(model, params, target=spec["target"]),
                       ["CPUExecutionProvider"], threads=threads)
    from attngraph._stream_plan import every_query

    with every_query():  # the ordinary export as it was before last-query evaluation
        every = ag.Session(ag.export(model, params, target=spec["target"]),
                           ["CPUExecutionProvider"], threads=threads)
    floor = Floor(floor_model(products_only(proto)), threads, stream._backend.session.spinning)
    stream.step({"input": frames[:, :WINDOW]})  # fill the window
    rerun.run({"input": frames[:, :WINDOW]})
    every.run({"input": frames[:, :WINDOW]})
    floor.run()
    # Blocks of each, interleaved, so that all see the same load on a shared machine.
    streamed: list[float] = []
    floors: list[float] = []
    reruns: dict[str, list[float]] = {"rerun": [], "rerun_every_query": []}
    t, block = WINDOW, max(1, spec["frames"] // spec["rounds"])
    while t < total:
        for u in range(t, min(t + block, total)):
            start = time.perf_counter()
            stream.step({"input": frames[:, u:u + 1]})
            streamed.append(time.perf_counter() - start)
            start = time.perf_counter()
            floor.run()
            floors.append(time.perf_counter() - start)
        for session, times in zip((rerun, every), reruns.values()):
            for u in range(t, min(t + block // spec["rerun_every"] + 1, total)):
                start = time.perf_counter()
                session.run({"input": frames[:, u + 1 - WINDOW:u + 1]})
                times.append(time.perf_counter() - start)
        t += block
    return {"stream": {**stats(streamed), "state_bytes": stream.state_bytes},
            "floor": {**stats(floors), "weight_bytes": floor.weight_bytes},
            **{k: stats(v) for k, v in reruns.items()}}


def run_cell(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    try:
        done = subprocess.run([sys.executable, __file__, "--cell", json.dumps(spec)],
                              capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1][:200]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer frames and repeats")
    parser.add_argument("--threads", type=int, default=1,
                        help="onnxruntime intra-op threads (1: a real-time loop's setting; 0: "
                        "onnxruntime's default)")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--cell", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cell:
        print(json.dumps(cell(json.loads(args.cell))), flush=True)
        return 0
    frames, rerun_every, repeats = (300, 4, 3) if args.quick else (2000, 4, 5)
    targets = args.targets.split(",")
    args.threads = args.threads or None
    rows = []
    for name in ("sliding_window", "hybrid"):
        for target in targets:
            base = {"model": name, "target": target, "threads": args.threads}
            row: dict[str, Any] = {"model": name, "target": target}
            got = run_cell({**base, "kind": "window", "frames": frames, "rounds": 10,
                            "rerun_every": rerun_every}, args.timeout)
            for key in ("stream", "floor", "rerun", "rerun_every_query"):
                row[key] = got if "error" in got else got[key]
            if "error" not in got:
                row["speedup"] = row["rerun"]["p50_ms"] / row["stream"]["p50_ms"]
                row["floor_speedup"] = row["rerun"]["p50_ms"] / row["floor"]["p50_ms"]
                row["speedup_every_query"] = (row["rerun_every_query"]["p50_ms"]
                                              / row["stream"]["p50_ms"])
                row["tail"] = row["stream"]["p99_ms"] / row["stream"]["p50_ms"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    long_rows = []
    for target in targets:
        base = {"model": "hybrid_full", "target": target, "threads": args.threads,
                "kind": "long", "repeats": repeats}
        row = {"target": target,
               "every_query": run_cell({**base, "every_query": True}, args.timeout),
               "last_query": run_cell({**base, "every_query": False}, args.timeout)}
        if "error" not in row["every_query"] and "error" not in row["last_query"]:
            row["ratio"] = row["every_query"]["median_ms"] / row["last_query"]["median_ms"]
        long_rows.append(row)
        print(json.dumps(row), flush=True)
    write("streaming_quick" if args.quick else "streaming", rows, long_rows, args)
    return 0


def _ms(cellres: dict[str, Any], key: str) -> str:
    return cellres["error"] if "error" in cellres else f"{cellres[key]:.3f}"


def write(name: str, rows: list[dict[str, Any]], long_rows: list[dict[str, Any]],
          args: argparse.Namespace) -> None:
    import onnxruntime

    env = {"date": _dt.date.today().isoformat(), "machine": platform.machine(),
           "cpus": os.cpu_count(), "python": platform.python_version(),
           "onnxruntime": onnxruntime.__version__, "attngraph": ag.__version__,
           "threads": args.threads, "quick": args.quick}
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps({"env": env, "rows": rows,
                                                  "long": long_rows}, indent=1) + "\n")
    lines = [
        "# Streaming: step model vs re-running the last 60 frames, per frame",
        "",
        (f"Seed sizes (embed 1024, window 60, 4 heads x 64, 2 layers, ffn 256; hybrid: "
         f"lstm_hidden 256, window_size 60), batch 1, chunk 1, onnxruntime "
         f"{env['onnxruntime']} CPU, {env['cpus']} cores, threads {args.threads or 'default'}, "
         f"{env['date']}. Per-frame latency end to end from Python; the machine is shared, "
         "compare ratios."),
        "",
        ("| model | target | stream p50 ms | stream p99 ms | stream frames/s | rerun p50 ms "
         "| rerun p99 ms | rerun frames/s | rerun p50 / stream p50 | stream p99 / p50 "
         "| rerun every query p50 ms | its p50 / stream p50 | floor p50 ms "
         "| rerun p50 / floor p50 |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s, b = r["stream"], r["rerun"]
        fps = (f"{s['frames_s']:.0f}" if "error" not in s else "-",
               f"{b['frames_s']:.0f}" if "error" not in b else "-")
        lines.append(
            f"| {r['model']} | {r['target']} | {_ms(s, 'p50_ms')} | {_ms(s, 'p99_ms')} | "
            f"{fps[0]} | {_ms(b, 'p50_ms')} | {_ms(b, 'p99_ms')} | {fps[1]} | "
            + (f"{r['speedup']:.1f}x | {r['tail']:.2f} | "
               f"{r['rerun_every_query']['p50_ms']:.3f} | {r['speedup_every_query']:.1f}x | "
               f"{r['floor']['p50_ms']:.3f} | {r['floor_speedup']:.1f}x |"
               if "speedup" in r else "- | - | - | - | - | - |"))
    lines += ["", "## hybrid at S = 4096: every query vs the last query (ordinary export)", "",
              "| target | every query ms | last query ms | ratio |", "|---|---|---|---|"]
    for r in long_rows:
        lines.append(f"| {r['target']} | {_ms(r['every_query'], 'median_ms')} | "
                     f"{_ms(r['last_query'], 'median_ms')} | "
                     + (f"{r['ratio']:.1f}x |" if "ratio" in r else "- |"))
    lines += ["", ("floor: the step model's weight products alone (each weight matrix times one "
                   "row, LSTM weights included), inputs and outputs bound once, timed in the "
                   "same loop as the stream: about the least a step graph of these weights "
                   "can cost per frame here, so rerun / floor is about the best ratio a step "
                   "model can reach on this machine."),
              ""]
    for model in ("sliding_window", "hybrid"):
        done = [r for r in rows if r["model"] == model and "speedup" in r]
        if not done:
            continue
        best = min(done, key=lambda r: r["stream"]["p50_ms"])
        met = best["speedup"] >= GOAL_SPEEDUP and best["tail"] <= GOAL_TAIL
        lines.append(
            f"- Goal ({model}, best target {best['target']}): stream p50 >= {GOAL_SPEEDUP:.0f}x "
            f"lower than rerun ({best['speedup']:.1f}x) and p99 <= {GOAL_TAIL:.0f}x p50 "
            f"({best['tail']:.2f}): {'met' if met else 'NOT met'}; the floor allows "
            f"{best['floor_speedup']:.1f}x ({best['floor']['weight_bytes'] / 2**20:.1f} MiB of "
            "weights per frame).")
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / (name + '.md')}")


if __name__ == "__main__":
    sys.exit(main())
