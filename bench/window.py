"""Benchmark sliding-window attention at long sequences: blocked vs direct, every target.

One ``multi_head_attention`` layer (embed 512, 8 heads, causal window W, batch 1) at
W = 60 and 256 and S = 128 .. 65,536, exported for every target with
``window_impl="auto"`` (the default: blocked above 1.5x a block's key slots) and, on "ort",
also with ``window_impl="direct"`` (the O(S²) form onnxruntime's GroupQueryAttention masks:
the state before the blocked form). PyTorch (the same projections + SDPA on a band mask) is added
when ``import torch`` works. The Edifice ``sliding_window`` preset (its defaults, embed 256)
runs at S = 4,096 and 65,536. Every cell runs in its own process:

    flock /tmp/attngraph-bench.lock .venv/bin/python bench/window.py          # full grid
    flock /tmp/attngraph-bench.lock .venv/bin/python bench/window.py --quick  # short run

Results: ``bench/results/window.md`` (table + goals), ``window.json`` and ``window.png``
(time against S, log-log); ``window_quick.*`` with ``--quick``. Latency is the median wall
time of ``InferenceSession.run`` after one warm-up run, and also the median CPU time of the
process (less sensitive to other work on a shared machine); peak extra memory is measured as
in ``attention.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import _attention_measure as common  # the measurement helpers of bench/attention.py
from _attention_driver import _short

EMBED, HEADS = 512, 8
SEQS = (128, 512, 1024, 4096, 16384, 65536)  # 128 and 512 (= 2W): the short-length goal
QUICK_SEQS = (1024, 4096)
WINDOWS = (60, 256)
EDIFICE_SEQS = (4096, 65536)
DIRECT_MAX_SEQ = 16384  # the O(S²) forms: 65,536 would need tens of GiB
GOAL_W = 256


# -- worker side ---------------------------------------------------------------------------


def _cpu_measure(run_once: Any, spec: dict[str, Any]) -> dict[str, Any]:
    cpu: list[float] = []

    def timed() -> None:
        t0 = time.process_time()
        run_once()
        cpu.append(time.process_time() - t0)

    out = common._measure(timed, spec["min_runs"], spec["max_runs"], spec["budget_s"])
    runs = sorted(cpu[1:]) or cpu  # skip the warm-up
    out["cpu_ms"] = runs[len(runs) // 2] * 1e3
    return out


def _onnx_worker(spec: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    sys.path.insert(0, str(ROOT))
    import attngraph as ag

    sess = ag.Session(spec["model"], ["CPUExecutionProvider"], threads=spec["threads"] or None)
    raw = sess.session
    (name,) = sess.inputs
    x = np.random.default_rng(0).standard_normal((1, spec["seq"], spec["embed"]),
                                                 dtype=np.float32)
    outputs = sess.output_names
    return _cpu_measure(lambda: raw.run(outputs, {name: x}), spec)


def _torch_worker(spec: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import torch
    import torch.nn.functional as F

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    with np.load(spec["params"], allow_pickle=False) as data:
        p = {k: torch.from_numpy(np.ascontiguousarray(data[k])) for k in data.files}
    seq, window = spec["seq"], spec["window"]
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, seq, EMBED),
                                                                  dtype=np.float32))
    i, j = torch.arange(seq).unsqueeze(1), torch.arange(seq).unsqueeze(0)
    mask = (j <= i) & (j > i - window)  # True = attend

    def proj(t: torch.Tensor, sub: str) -> torch.Tensor:
        return t @ p[f"attn.{sub}.kernel"] + p[f"attn.{sub}.bias"]

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(1, seq, HEADS, EMBED // HEADS).transpose(1, 2)  # (B, H, S, D)

    def run_once() -> None:
        with torch.no_grad():
            q, k, v = (heads(proj(x, s)) for s in ("query", "key", "value"))
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            proj(o.transpose(1, 2).reshape(1, seq, EMBED), "output")

    return _cpu_measure(run_once, spec)


def worker_main(spec_json: str) -> int:
    spec = json.loads(spec_json)
    common._limit_memory(spec["memory_gib"])
    try:
        out = _torch_worker(spec) if spec["kind"] == "torch" else _onnx_worker(spec)
    except MemoryError:
        out = {"error": "OOM"}
    except Exception as exc:  # noqa: BLE001 - a failing cell becomes a table cell
        out = {"error": _short(f"{type(exc).__name__}: {exc}")}
    print(json.dumps(out))
    return 0


# -- driver side ---------------------------------------------------------------------------


def layer_model(window: int) -> Any:
    import attngraph as ag

    x = ag.input("x", (1, "seq", EMBED))
    return ag.Model(x, ag.multi_head_attention(x, num_heads=HEADS, window=window, name="attn"))


def export_cells(workdir: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Export every (model, target, impl) once; return the cell specs to measure."""
    import numpy as np

    import attngraph as ag

    cells: list[dict[str, Any]] = []
    for window in args.windows:
        model = layer_model(window)
        params = model.init(seed=0)
        npz = workdir / f"w{window}.npz"
        np.savez(npz, **params)
        variants = [(t, impl) for t in args.targets for impl in args.impls]
        if "ort" in args.targets and "direct" not in args.impls:
            variants.append(("ort", "direct"))
        for target, impl in variants:
            path = workdir / f"w{window}-{target}-{impl}.onnx"
            ag.export(model, params, path, target=target, window_impl=impl)
            for seq in args.seqs:
                if impl == "direct" and seq > DIRECT_MAX_SEQ:
                    continue
                cells.append({"kind": "onnx", "model": str(path), "seq": seq, "embed": EMBED,
                              "row": f"{target} ({impl})", "window": window})
        if args.torch:
            for seq in args.seqs:
                if seq <= DIRECT_MAX_SEQ:
                    cells.append({"kind": "torch", "params": str(npz), "seq": seq,
                                  "row": "torch band mask", "window": window})
    if args.edifice:
        model = ag.models.sliding_window(embed_dim=256)
        path = workdir / "edifice.onnx"
        ag.export(model, model.init(seed=0), path, target="ort")
        for seq in [s for s in EDIFICE_SEQS if s in args.seqs or not args.quick]:
            cells.append({"kind": "onnx", "model": str(path), "seq": seq, "embed": 256,
                          "row": "edifice sliding_window (ort, auto)", "window": 60})
    return cells


def measure(cells: list[dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    for n, cell in enumerate(cells, 1):
        spec = {**cell, "threads": args.threads, "memory_gib": args.memory_gib,
                "min_runs": 3, "max_runs": 300, "budget_s": args.budget}
        print(f"[{n}/{len(cells)}] W={cell['window']} S={cell['seq']} {cell['row']}",
              file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)],
                                  capture_output=True, text=True, timeout=args.timeout,
                                  check=False)
            lines = proc.stdout.strip().splitlines()
            out = json.loads(lines[-1]) if lines else {
                "error": _short(proc.stderr.strip().splitlines()[-1]
                                       if proc.stderr.strip() else f"exit {proc.returncode}")}
        except subprocess.TimeoutExpired:
            out = {"error": f"timeout {args.timeout:.0f} s"}
        out["wall_s"] = time.perf_counter() - t0
        results.append({**cell, **out})
    return results


def _cell(r: dict[str, Any] | None) -> str:
    if r is None:
        return "-"
    if "error" in r:
        return r["error"][:40]
    return f"{r['median_ms']:,.0f} ms / {r['cpu_ms']:,.0f} cpu / {r['peak_extra_mib']:,.0f} MiB"


def _find(results: list[dict[str, Any]], row: str, window: int, seq: int) -> Any:
    return next((r for r in results if r["row"] == row and r["window"] == window
                 and r["seq"] == seq and "error" not in r), None)


def goals(results: list[dict[str, Any]], seqs: list[int]) -> list[str]:
    """The issue's goals at W = 256 for the best target (the fastest at 16,384 by CPU time).
    Verdicts use the CPU time of the process (the machine is shared); wall times are shown."""
    lo, hi, top = 1024, 16384, 65536
    rows = sorted({r["row"] for r in results if r["window"] == GOAL_W and "auto" in r["row"]
                   and "edifice" not in r["row"]})
    best = None
    for row in rows:
        a, b = _find(results, row, GOAL_W, lo), _find(results, row, GOAL_W, hi)
        if a and b and (best is None or b["cpu_ms"] < best[2]["cpu_ms"]):
            best = (row, a, b)
    if best is None:
        return ["(the goals need S = 1,024 and 16,384 at W = 256)"]
    row, a, b = best

    def both(x: dict[str, Any], y: dict[str, Any]) -> tuple[float, float]:
        return x["cpu_ms"] / y["cpu_ms"], x["median_ms"] / y["median_ms"]

    cpu, wall = both(b, a)
    lines = [(f"- best target `{row}`: t(16,384) / t(1,024) = {cpu:.1f} CPU ({wall:.1f} "
              f"wall); goal <= 20: {'met' if cpu <= 20 else 'NOT met'}")]
    torch_cell = _find(results, "torch band mask", GOAL_W, hi)
    if torch_cell:
        cpu, wall = both(torch_cell, b)
        lines.append(f"- vs PyTorch band mask at 16,384: {cpu:.1f}x faster CPU ({wall:.1f}x "
                     f"wall); goal >= 10x: {'met' if cpu >= 10 else 'NOT met'}")
    big = _find(results, row, GOAL_W, top)
    if big:
        gib = big["peak_extra_mib"] / 1024
        lines.append(f"- peak extra memory at 65,536: {gib:.2f} GiB; goal <= 2 GiB: "
                     f"{'met' if gib <= 2 else 'NOT met'}")
    for seq in seqs:
        direct = _find(results, "ort (direct)", GOAL_W, seq)
        auto = _find(results, "ort (auto)", GOAL_W, seq)
        if direct and auto:
            cpu, wall = both(auto, direct)
            verdict = ("" if seq > 2 * GOAL_W else
                       f"; S <= 2W, goal <= 1.10: {'met' if cpu <= 1.1 else 'NOT met'}")
            lines.append(f"- ort auto / ort direct (before) at S = {seq:,}: {cpu:.2f} CPU "
                         f"({wall:.2f} wall){verdict}")
    return lines


def render(report: dict[str, Any]) -> str:
    results, seqs = report["results"], report["seqs"]
    out = ["# Sliding-window attention: blocked vs direct", "",
           (f"{report['when']}; {report['machine']}. One `multi_head_attention` layer (embed "
            "512, 8 heads, causal window W, batch 1); each cell in its own process; cells read "
            "`median wall ms / median CPU ms of the process / peak extra MiB`. The machine is "
            "shared with other work: compare ratios within this run, and prefer the CPU times."),
           ""]
    for window in report["windows"]:
        rows = sorted({r["row"] for r in results if r["window"] == window})
        out += [f"## W = {window}", "", "| target | " + " | ".join(f"S={s:,}" for s in seqs)
                + " |", "|---|" + "---:|" * len(seqs)]
        for row in rows:
            out.append(f"| {row} | " + " | ".join(
                _cell(next((r for r in results if r["row"] == row and r["window"] == window
                            and r["seq"] == s), None)) for s in seqs) + " |")
        out.append("")
    out += ["## Goals (W = 256)", "", *goals(results, seqs), ""]
    return "\n".join(out)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(report["windows"]), figsize=(6 * len(report["windows"]), 4.5),
                             squeeze=False)
    for ax, window in zip(axes[0], report["windows"]):
        for row in sorted({r["row"] for r in report["results"] if r["window"] == window}):
            pts = sorted((r["seq"], r["median_ms"]) for r in report["results"]
                         if r["row"] == row and r["window"] == window and "error" not in r)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=row)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length S")
        ax.set_ylabel("median latency (ms)")
        ax.set_title(f"sliding window W = {window}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="S = 1,024 and 4,096, W = 256 only")
    ap.add_argument("--seqs", type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--windows", type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--targets", type=lambda s: s.split(","), default=["ort", "onnx",
                                                                       "decomposed"])
    ap.add_argument("--impls", type=lambda s: s.split(","), default=["auto"],
                    help="window_impl values to export (ort also gets 'direct')")
    ap.add_argument("--no-torch", dest="torch", action="store_false")
    ap.add_argument("--no-edifice", dest="edifice", action="store_false")
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime/torch threads (0: all)")
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds per cell")
    ap.add_argument("--budget", type=float, default=2.0, help="seconds of timed runs per cell")
    ap.add_argument("--memory-gib", type=float, default=12.0, help="address-space cap per cell")
    args = ap.parse_args(argv)
    args.seqs = args.seqs or list(QUICK_SEQS if args.quick else SEQS)
    args.windows = args.windows or ([GOAL_W] if args.quick else list(WINDOWS))
    if args.torch:
        try:
            import torch  # noqa: F401
        except ImportError:
            print("torch is not installed: the PyTorch column is skipped", file=sys.stderr)
            args.torch = False
    return args


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 2 and sys.argv[1] == "--worker":
        return worker_main(sys.argv[2])
    if argv is None and len(sys.argv) > 2 and sys.argv[1] == "--render":
        report = json.loads(Path(sys.argv[2]).read_text())  # re-render a finished run
        path = Path(sys.argv[2]).with_suffix(".md")
        path.write_text(render(report))
        plot(report, path.with_suffix(".png"))
        print(render(report))
        return 0
    args = parse_args(argv)
    import platform

    name = "window_quick" if args.quick else "window"
    with tempfile.TemporaryDirectory(prefix="attngraph-window-") as tmp:
        cells = export_cells(Path(tmp), args)
        results = measure(cells, args)
    report = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} "
                         f"CPUs, Python {platform.python_version()}",
              "seqs": args.seqs, "windows": args.windows, "results": results}
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    (out_dir / f"{name}.md").write_text(render(report))
    plot(report, out_dir / f"{name}.png")
    print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
