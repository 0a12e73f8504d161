"""Peak memory of the reference interpreter's attention modes at long sequences.

    .venv/bin/python bench/reference_memory.py [--seq 16384] [--chunk 256]

Each mode runs in a fresh process (one causal attention layer, batch 1, 1 head of 64); the peak
is tracemalloc's, so it counts numpy's arrays, not the interpreter's own baseline. Goal (issue
text): memory_efficient <= 1/20 of standard at seq 16384. Writes
bench/results/reference_memory.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def worker(mode: str, seq: int, chunk: int) -> None:
    import tracemalloc

    import numpy as np

    import attngraph as ag

    q = ag.input("q", (1, 1, seq, 64))
    model = ag.Model(q, ag.scaled_dot_product_attention(q, q, q, causal=True))
    feeds = {"q": np.random.default_rng(0).standard_normal((1, 1, seq, 64)).astype(np.float32)}
    tracemalloc.start()
    start = time.perf_counter()
    model.predict({}, feeds, attention=mode, chunk_size=chunk)
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    print(json.dumps({"mode": mode, "peak_mib": peak / 2**20, "seconds": seconds}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq", type=int, default=16384)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.seq, args.chunk)
        return 0
    rows = []
    for mode in ("standard", "chunked", "memory_efficient"):
        out = subprocess.run([sys.executable, __file__, "--worker", mode, "--seq", str(args.seq),
                              "--chunk", str(args.chunk)], capture_output=True, text=True,
                             check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    std = rows[0]["peak_mib"]
    lines = [f"# Reference interpreter: attention memory at seq {args.seq}", "",
             (f"One causal attention (batch 1, 1 head, head_dim 64), chunk {args.chunk}; "
             "peak = tracemalloc peak of numpy allocations, each mode in its own process."), "",
             "| mode | peak MiB | ratio to standard | seconds |", "|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['peak_mib']:.1f} | {r['peak_mib'] / std:.4f} | "
                     f"{r['seconds']:.1f} |")
    eff = rows[2]["peak_mib"] / std
    lines += ["", (f"Goal memory_efficient <= 1/20 of standard: ratio {eff:.4f} -> "
              f"**{'PASS' if eff <= 0.05 else 'FAIL'}**")]
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "reference_memory.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
