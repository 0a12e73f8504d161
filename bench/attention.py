"""Benchmark one attention layer on every export target (and PyTorch SDPA when installed).

One ``multi_head_attention`` layer (embed 512, 8 heads, batch 1) is exported once per
(target, mode) and every (target, seq, mode) cell is measured in a fresh Python subprocess,
so each cell's peak memory is isolated from the others:

    make bench                                   # the full grid (seq 128 .. 8192)
    .venv/bin/python bench/attention.py --quick  # seq 128 and 512 only
    .venv/bin/python bench/attention.py --seqs 2048 --modes causal --targets ort,decomposed

Results: ``bench/results/<name>.md`` (tables and goals), ``<name>.json`` (raw numbers) and
``<name>.png`` (latency and memory vs sequence length). ``<name>`` is ``attention``
(``attention_quick`` with ``--quick``).

Latency is the median wall time of ``InferenceSession.run`` over N timed runs (N adaptive:
at least 3, at most 20, or about 3 s of work) after one warm-up run. Peak extra memory is the
peak resident set size during warm-up and timed runs minus the resident set size just before
the warm-up (the peak is reset there through ``/proc/self/clear_refs``; where that is not
possible, ``ru_maxrss`` minus the RSS before the warm-up is used). Short cells are measured in
up to ``--rounds`` rounds spread over the run and the fastest round is kept, and before each
cell the driver waits briefly for the CPUs to be quiet, because the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _attention_config import (
    ALL_MODES,
    ALL_SEQS,
    EMBED,
    HEADS,
    HERE,
    ONNX_TARGETS,
    QUICK_SEQS,
    ROOT,
    TORCH_TARGET,
    WINDOW,
)
from _attention_driver import export_all, machine_info, measure_all, torch_available
from _attention_measure import worker_main
from _attention_report import goals, render_markdown, render_plot, slower_cells


def _csv(text: str, allowed: tuple[str, ...] | None, kind: type = str) -> list[Any]:
    items = [kind(t.strip()) for t in text.split(",") if t.strip()]
    if allowed is not None:
        bad = [t for t in items if t not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {list(allowed)}")
    return items


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="seq 128 and 512 only")
    ap.add_argument("--seqs", type=lambda s: _csv(s, None, int), default=None,
                    help=f"comma-separated sequence lengths (default {ALL_SEQS})")
    ap.add_argument("--modes", type=lambda s: _csv(s, ALL_MODES), default=list(ALL_MODES))
    ap.add_argument("--targets", type=lambda s: _csv(s, ONNX_TARGETS + (TORCH_TARGET,)),
                    default=None, help="default: ort,onnx,decomposed (+torch-sdpa if present)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per cell")
    ap.add_argument("--min-runs", type=int, default=3)
    ap.add_argument("--max-runs", type=int, default=20)
    ap.add_argument("--budget", type=float, default=3.0, help="seconds of timed runs per cell")
    ap.add_argument("--rounds", type=int, default=3,
                    help="measure each cell up to this many times, keep the fastest round")
    ap.add_argument("--repeat-under-ms", type=float, default=1000.0,
                    help="only repeat cells whose median is under this (ms)")
    ap.add_argument("--quiet-below", type=float, default=30.0,
                    help="before each cell wait until CPU use is under this %% (shared box)")
    ap.add_argument("--quiet-wait", type=float, default=20.0,
                    help="wait at most this many seconds for a quiet CPU per cell")
    ap.add_argument("--threads", type=int, default=0,
                    help="intra-op threads (0 = onnxruntime's / torch's default)")
    ap.add_argument("--mem-limit-gib", type=float, default=None,
                    help="address-space cap per worker (default 80%% of RAM; 0 = none)")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--name", default=None, help="file stem (default attention[_quick])")
    ap.add_argument("--worker", metavar="SPEC", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Export, measure every cell in its own process, write markdown, JSON and PNG."""
    args = parse_args(argv)
    if args.worker:
        return worker_main(args.worker)
    sys.path.insert(0, str(ROOT))
    started = time.perf_counter()
    seqs = sorted(args.seqs or (QUICK_SEQS if args.quick else ALL_SEQS))
    name = args.name or ("attention_quick" if args.quick else "attention")
    torch_version = torch_available()
    targets = list(args.targets or ONNX_TARGETS + ((TORCH_TARGET,) if torch_version else ()))
    if TORCH_TARGET in targets and not torch_version:
        print("torch is not importable: skipping torch-sdpa", flush=True)
        targets.remove(TORCH_TARGET)
    if args.mem_limit_gib is None:
        try:
            import psutil

            args.mem_limit_gib = 0.8 * psutil.virtual_memory().total / 1024**3
        except ImportError:
            args.mem_limit_gib = 0.0
    machine = machine_info(args.threads)
    print(f"attention benchmark: seqs {seqs}, modes {args.modes}, targets {targets}", flush=True)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="attngraph-bench-") as tmp:
        exports = export_all(Path(tmp), args.modes, targets)
        results = measure_all(exports, args, seqs, targets)
    machine["loadavg_end"] = os.getloadavg()
    report: dict[str, Any] = {
        "name": name, "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]).strip(),
        "elapsed_s": time.perf_counter() - started, "machine": machine, "torch": torch_version,
        "config": {"embed": EMBED, "heads": HEADS, "window": WINDOW, "batch": 1},
        "seqs": seqs, "modes": args.modes, "targets": targets, "min_runs": args.min_runs,
        "max_runs": args.max_runs, "budget_s": args.budget, "timeout_s": args.timeout,
        "rounds": args.rounds, "repeat_under_ms": args.repeat_under_ms,
        "quiet_below_pct": args.quiet_below,
        "exports": {m: {t: {k: v for k, v in e.items() if k != "model"}
                        for t, e in entry.items() if isinstance(e, dict)}
                    for m, entry in exports.items()},
        "results": results,
    }
    report["goals"] = goals(results, seqs)
    report["slower"] = slower_cells(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    markdown = render_markdown(report)
    (args.out / f"{name}.md").write_text(markdown, encoding="utf-8")
    try:
        render_plot(report, args.out / f"{name}.png")
    except Exception as exc:  # noqa: BLE001 - the tables matter more than the plot
        print(f"plot failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    print(markdown)
    print(f"wrote {args.out / (name + '.md')}, .json, .png", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
