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
import datetime as _dt
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
EMBED = 512
HEADS = 8
WINDOW = 256
ALL_SEQS = (128, 512, 2048, 8192)
QUICK_SEQS = (128, 512)
ALL_MODES = ("full", "causal", "window")
ONNX_TARGETS = ("ort", "onnx", "decomposed")
FUSED_TARGETS = ("ort", "onnx")
TORCH_TARGET = "torch-sdpa"
GOAL_SEQS = (2048, 8192)
GOAL_SPEEDUP = 1.7
GOAL_MEMORY_RATIO = 0.1
MODE_LABEL = {"full": "full", "causal": "causal", "window": f"sliding window {WINDOW}"}


# -- worker side: one measurement per process -------------------------------------------------


def _proc_status(field: str) -> int | None:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in KiB, None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset the process's peak RSS (VmHWM) to its current RSS; False when unsupported."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        return False
    hwm, rss = _proc_status("VmHWM"), _proc_status("VmRSS")
    return hwm is not None and rss is not None and hwm <= rss + 1024


def _rss_kib() -> int:
    """Current resident set size in KiB."""
    rss = _proc_status("VmRSS")
    if rss is not None:
        return rss
    import psutil  # fallback off Linux

    return int(psutil.Process().memory_info().rss // 1024)


def _measure(run_once: Any, min_runs: int, max_runs: int, budget_s: float) -> dict[str, Any]:
    """Warm up once, then time runs; returns latencies and the peak extra memory (MiB)."""
    baseline_kib = _rss_kib()
    hwm_reset = _reset_peak()
    t0 = time.perf_counter()
    run_once()
    warmup_s = time.perf_counter() - t0
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_runs:
        t0 = time.perf_counter()
        run_once()
        times.append(time.perf_counter() - t0)
        if len(times) >= min_runs and time.perf_counter() - start >= budget_s:
            break
    if hwm_reset:
        peak_kib = _proc_status("VmHWM") or 0
        method = "VmHWM reset before warm-up"
    else:
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        method = "ru_maxrss minus RSS before warm-up"
    return {
        "median_ms": statistics.median(times) * 1e3,
        "min_ms": min(times) * 1e3,
        "times_ms": [t * 1e3 for t in times],
        "runs": len(times),
        "warmup_ms": warmup_s * 1e3,
        "baseline_mib": baseline_kib / 1024,
        "peak_extra_mib": max(0, peak_kib - baseline_kib) / 1024,
        "memory_method": method,
    }


def _limit_memory(limit_gib: float) -> None:
    """Cap the worker's address space so a runaway cell fails instead of waking the OOM killer."""
    if limit_gib <= 0:
        return
    limit = int(limit_gib * 1024**3)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ValueError, OSError):
        pass


def _onnx_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Measure one exported model with onnxruntime's CPU execution provider."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    import attngraph as ag

    threads = spec["threads"] or None
    sess = ag.Session(spec["model"], ["CPUExecutionProvider"], threads=threads)
    raw = sess.session  # time onnxruntime itself, not attngraph's feed checks
    x = np.random.default_rng(0).standard_normal((1, spec["seq"], EMBED), dtype=np.float32)
    feeds = {"x": x}
    # No run before the measurement: onnxruntime's CPU arena keeps what the first run
    # allocates, so the baseline must be taken before any run (the warm-up in `_measure`).
    if set(sess.inputs) != {"x"}:
        raise RuntimeError(f"expected one input 'x', the model has {list(sess.inputs)}")
    output_names = sess.output_names

    def run_once() -> None:
        raw.run(output_names, feeds)

    return _measure(run_once, spec["min_runs"], spec["max_runs"], spec["budget_s"])


def _torch_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Measure torch.nn.functional.scaled_dot_product_attention with the same projections."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    with np.load(spec["params"], allow_pickle=False) as data:
        p = {k: torch.from_numpy(np.ascontiguousarray(data[k])) for k in data.files}
    seq, mode = spec["seq"], spec["mode"]
    x = torch.from_numpy(
        np.random.default_rng(0).standard_normal((1, seq, EMBED), dtype=np.float32))
    mask = None
    if mode == "window":  # bool mask, True = attend: j <= i and j > i - WINDOW
        i = torch.arange(seq).unsqueeze(1)
        j = torch.arange(seq).unsqueeze(0)
        mask = (j <= i) & (j > i - WINDOW)
    head_dim = EMBED // HEADS

    def proj(t: torch.Tensor, sub: str) -> torch.Tensor:
        return t @ p[f"{spec['layer']}.{sub}.kernel"] + p[f"{spec['layer']}.{sub}.bias"]

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(1, seq, HEADS, head_dim).transpose(1, 2)

    def run_once() -> None:
        with torch.no_grad():
            q, k, v = (heads(proj(x, s)) for s in ("query", "key", "value"))
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                               is_causal=(mode == "causal"))
            proj(o.transpose(1, 2).reshape(1, seq, EMBED), "output")

    return _measure(run_once, spec["min_runs"], spec["max_runs"], spec["budget_s"])


def worker_main(spec_json: str) -> int:
    """Entry point of a measurement subprocess: print one JSON line with the result."""
    spec = json.loads(spec_json)
    _limit_memory(spec["mem_limit_gib"])
    try:
        if spec["target"] == TORCH_TARGET:
            result = _torch_worker(spec)
        else:
            result = _onnx_worker(spec)
        result["status"] = "ok"
    except MemoryError as exc:
        result = {"status": "OOM", "error": f"MemoryError: {exc}"}
    except Exception as exc:  # noqa: BLE001 - report every failure as a table cell
        text = f"{type(exc).__name__}: {exc}"
        oom = any(s in text.lower() for s in ("bad_alloc", "failed to allocate", "out of memory"))
        result = {"status": "OOM" if oom else "error", "error": text}
    print("RESULT " + json.dumps(result), flush=True)
    return 0


# -- driver side ------------------------------------------------------------------------------


def build_model(mode: str) -> tuple[Any, dict[str, Any], str]:
    """The benchmarked model for one mode: (model, params, attention layer name)."""
    import attngraph as ag

    x = ag.input("x", ("batch", "seq", EMBED))
    options: dict[str, Any] = {"full": {}, "causal": {"causal": True},
                               "window": {"window": WINDOW}}[mode]
    y = ag.multi_head_attention(x, num_heads=HEADS, name="attn", **options)
    model = ag.Model(x, y)
    return model, model.init(0), "attn"


def _short(text: str, limit: int = 160) -> str:
    """One line of at most `limit` characters (for table cells)."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def export_all(workdir: Path, modes: list[str], targets: list[str]) -> dict[str, Any]:
    """Export each (target, mode); check each against the reference at seq 128.

    Returns ``{mode: {"params": path, "layer": name, target: {"model": path} | {"error": s}}}``.
    """
    import numpy as np

    import attngraph as ag

    out: dict[str, Any] = {}
    x = np.random.default_rng(1).standard_normal((1, 128, EMBED), dtype=np.float32)
    for mode in modes:
        model, params, layer = build_model(mode)
        params_path = workdir / f"params_{mode}.npz"
        np.savez(params_path, **params)
        entry: dict[str, Any] = {"params": str(params_path), "layer": layer}
        reference = None
        for target in targets:
            if target == TORCH_TARGET:
                continue
            path = workdir / f"attn_{mode}_{target}.onnx"
            try:
                ag.export(model, params, path, target=target)
                if reference is None:
                    reference = next(iter(model.predict(params, {"x": x}).values()))
                got = next(iter(ag.Session(str(path), ["CPUExecutionProvider"])
                                .run({"x": x}).values()))
                err = float(np.abs(got - reference).max())
                entry[target] = {"model": str(path), "max_abs_err_seq128": err}
                print(f"  exported {target:<10} {mode:<7} max |err| vs reference {err:.2e}",
                      flush=True)
            except Exception as exc:  # noqa: BLE001 - record it, keep benchmarking the rest
                entry[target] = {"error": f"export/check failed: {type(exc).__name__}: {exc}"}
                print(f"  export {target} {mode} FAILED: {_short(str(exc))}", flush=True)
        out[mode] = entry
    return out


def run_cell(spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; never raises."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                              cwd=str(ROOT))
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "error": f"timeout after {timeout_s:.0f} s"}
    wall = time.perf_counter() - t0
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
            result["worker_wall_s"] = wall
            return result
    if proc.returncode in (-9, 137):
        return {"status": "OOM", "error": "worker killed (SIGKILL, likely the OOM killer)"}
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"status": "error",
            "error": f"worker exited {proc.returncode}: {' | '.join(tail) or 'no output'}"}


def cpu_busy_percent(interval: float = 0.5) -> float:
    """System-wide CPU utilisation (%) over `interval` seconds (0 when psutil is missing)."""
    try:
        import psutil
    except ImportError:
        return 0.0
    return float(psutil.cpu_percent(interval=interval))


def wait_for_quiet(threshold: float, max_wait_s: float) -> tuple[float, float]:
    """Wait (up to `max_wait_s`) until other processes use under `threshold` % of the CPUs.

    The benchmark machine may be shared (2 cores); a cell measured while a test suite runs is
    mostly noise. Returns (busy % seen last, seconds waited)."""
    waited = 0.0
    busy = cpu_busy_percent()
    while busy > threshold and waited < max_wait_s:
        time.sleep(2.0)
        waited += 2.5
        busy = cpu_busy_percent()
    return busy, waited


def _best(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """A cell's result over its rounds: the round with the lowest median (the least disturbed
    by other processes), with every round's median and peak memory kept alongside."""
    ok = [r for r in rounds if r.get("status") == "ok"]
    if not ok:
        return dict(rounds[-1], rounds=len(rounds))
    best = dict(min(ok, key=lambda r: r["median_ms"]))
    best["round_medians_ms"] = [r["median_ms"] for r in ok]
    best["round_peak_extra_mib"] = [r["peak_extra_mib"] for r in ok]
    best["peak_extra_mib_max_over_rounds"] = max(r["peak_extra_mib"] for r in ok)
    return best


def measure_all(exports: dict[str, Any], args: argparse.Namespace, seqs: list[int],
                targets: list[str]) -> dict[str, Any]:
    """Measure every (mode, seq, target) cell, `args.rounds` times, interleaved in time.

    A round repeats every cell whose earlier rounds all succeeded within
    `args.repeat_under_ms` (long cells are stable and expensive; failed cells stay failed).
    Returns ``{mode: {str(seq): {target: result}}}``.
    """
    attempts: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for rnd in range(args.rounds):
        for mode in args.modes:
            for seq in seqs:
                for target in targets:
                    key = (mode, seq, target)
                    done = attempts.setdefault(key, [])
                    if done and not all(r.get("status") == "ok"
                                        and r["median_ms"] < args.repeat_under_ms for r in done):
                        continue
                    info = exports[mode].get(target, {})
                    if "error" in info:
                        done.append({"status": "error", "error": info["error"]})
                        continue
                    busy, waited = wait_for_quiet(args.quiet_below, args.quiet_wait)
                    spec = {"target": target, "mode": mode, "seq": seq,
                            "model": info.get("model"), "params": exports[mode]["params"],
                            "layer": exports[mode]["layer"], "threads": args.threads,
                            "min_runs": args.min_runs, "max_runs": args.max_runs,
                            "budget_s": args.budget, "mem_limit_gib": args.mem_limit_gib}
                    c = run_cell(spec, args.timeout)
                    c.update(round=rnd, cpu_busy_before_pct=busy, waited_for_quiet_s=waited)
                    done.append(c)
                    if c.get("status") == "ok":
                        msg = (f"{c['median_ms']:10.2f} ms  {c['peak_extra_mib']:9.1f} MiB  "
                               f"({c['runs']} runs)")
                    else:
                        msg = f"{c.get('status')}: {_short(c.get('error', ''), 100)}"
                    print(f"  r{rnd} {mode:<7} seq {seq:>5} {target:<11} {msg}  "
                          f"[cpu busy before {busy:.0f}%]", flush=True)
    results: dict[str, Any] = {}
    for (mode, seq, target), rounds in attempts.items():
        results.setdefault(mode, {}).setdefault(str(seq), {})[target] = _best(rounds)
    return results


def torch_available() -> str | None:
    """torch's version when ``import torch`` works in a subprocess, else None."""
    try:
        proc = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"],
                              capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def machine_info(threads: int) -> dict[str, Any]:
    """CPU count, model name, versions, load average, date."""
    import numpy as np
    import onnxruntime

    import attngraph as ag

    cpu_model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import psutil

        ram_gib = psutil.virtual_memory().total / 1024**3
    except ImportError:
        ram_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(), "cpu_model": cpu_model, "ram_gib": round(ram_gib, 1),
        "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__, "attngraph": ag.__version__,
        "intra_op_threads": threads or "onnxruntime default",
        "loadavg_start": os.getloadavg(),
    }


# -- report -----------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _ratios(cell: dict[str, Any], base: dict[str, Any] | None) -> tuple[float | None,
                                                                          float | None]:
    """(speedup vs decomposed, peak-memory ratio vs decomposed) of an ok cell."""
    if cell.get("status") != "ok" or not base or base.get("status") != "ok":
        return None, None
    speedup = base["median_ms"] / cell["median_ms"]
    ratio = (cell["peak_extra_mib"] / base["peak_extra_mib"]
             if base["peak_extra_mib"] >= 1.0 else None)  # under 1 MiB the ratio is noise
    return speedup, ratio


def goals(results: dict[str, Any], seqs: list[int]) -> list[dict[str, Any]]:
    """The issue's goals for causal at seq 2048 and 8192: best fused target vs decomposed."""
    out = []
    causal = results.get("causal", {})
    for seq in GOAL_SEQS:
        cells = causal.get(str(seq), {})
        base = cells.get("decomposed")
        entry: dict[str, Any] = {"seq": seq}
        if seq not in seqs or not base:
            entry["verdict"] = "not measured in this run"
        elif base.get("status") != "ok":
            entry["verdict"] = f"decomposed did not finish ({base.get('status')})"
            fused = [(t, cells[t]) for t in FUSED_TARGETS if cells.get(t, {}).get("status")
                     == "ok"]
            if fused:
                t, c = min(fused, key=lambda tc: tc[1]["median_ms"])
                entry.update(target=t, median_ms=c["median_ms"],
                             peak_extra_mib=c["peak_extra_mib"])
        else:
            fused = [(t, cells[t]) for t in FUSED_TARGETS if cells.get(t, {}).get("status")
                     == "ok"]
            if not fused:
                entry["verdict"] = "FAIL (no fused target ran)"
            else:
                t, c = min(fused, key=lambda tc: tc[1]["median_ms"])
                speedup, ratio = _ratios(c, base)
                ok_speed = speedup is not None and speedup >= GOAL_SPEEDUP
                ok_mem = ratio is not None and ratio <= GOAL_MEMORY_RATIO
                entry.update(target=t, speedup=speedup, memory_ratio=ratio,
                             speed_pass=ok_speed, memory_pass=ok_mem,
                             verdict="PASS" if ok_speed and ok_mem else "FAIL")
        out.append(entry)
    return out


def slower_cells(results: dict[str, Any]) -> list[str]:
    """Every (mode, seq, fused target) that is slower than decomposed."""
    lines = []
    for mode, by_seq in results.items():
        for seq, cells in by_seq.items():
            for target in FUSED_TARGETS:
                speedup, _ = _ratios(cells.get(target, {}), cells.get("decomposed"))
                if speedup is not None and speedup < 1.0:
                    lines.append(
                        f"{MODE_LABEL[mode]}, seq {seq}: `{target}` "
                        f"{cells[target]['median_ms']:.2f} ms vs decomposed "
                        f"{cells['decomposed']['median_ms']:.2f} ms ({speedup:.2f}x)")
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    """The results page: machine line, one table per mode, goals, slower-than-decomposed list."""
    m = report["machine"]
    lines = [
        "# Attention benchmark: one layer, embed 512, 8 heads, batch 1", "",
        f"Machine: {m['cpu_count']} CPUs ({m['cpu_model']}), {m['ram_gib']} GiB RAM, "
        f"onnxruntime {m['onnxruntime']} (CPUExecutionProvider, intra-op threads: "
        f"{m['intra_op_threads']}), numpy {m['numpy']}, Python {m['python']}, "
        f"torch {report['torch'] or 'not installed (torch-sdpa skipped)'}, "
        f"attngraph {m['attngraph']}, {m['date']}; load average at start "
        f"{', '.join(f'{v:.2f}' for v in m['loadavg_start'])}, at end "
        f"{', '.join(f'{v:.2f}' for v in m['loadavg_end'])}.", "",
        f"Command: `{report['command']}` ({report['elapsed_s']:.0f} s).", "",
        "Each cell runs in a fresh process: one warm-up run, then N timed runs (N "
        f"{report['min_runs']}..{report['max_runs']}, about {report['budget_s']:g} s of work); "
        "**median ms** is the median latency, **peak extra MiB** the peak resident memory "
        "during warm-up and timed runs above the resident memory just before them. Cells "
        f"faster than {report['repeat_under_ms']:g} ms are measured in up to "
        f"{report['rounds']} rounds spread over the run and the fastest round is shown (the "
        "machine may be shared; before each cell the driver waits up to "
        f"a few seconds for CPU use under {report['quiet_below_pct']:g}%). "
        "**speedup** = decomposed median / this median (> 1 is faster than decomposed); "
        "**mem ratio** = this peak extra / decomposed peak extra (– when decomposed's is "
        "under 1 MiB).", "",
    ]
    checks = []
    for mode, entry in report["exports"].items():
        for target in report["targets"]:
            info = entry.get(target)
            if isinstance(info, dict) and "max_abs_err_seq128" in info:
                checks.append(f"{target}/{mode} {info['max_abs_err_seq128']:.1e}")
    if checks:
        lines += ["Sanity check, max |error| vs the numpy reference at seq 128: "
                  + ", ".join(checks) + ".", ""]
    for mode in report["modes"]:
        lines += [f"## {MODE_LABEL[mode]}", "",
                  "| seq | target | median ms | peak extra MiB | speedup vs decomposed "
                  "| mem ratio vs decomposed |",
                  "|---:|---|---:|---:|---:|---:|"]
        for seq in report["seqs"]:
            cells = report["results"].get(mode, {}).get(str(seq), {})
            for target in report["targets"]:
                cell = cells.get(target)
                if cell is None:
                    continue
                if cell.get("status") != "ok":
                    what = f"{cell.get('status', 'error')}: {_short(cell.get('error', ''))}"
                    lines.append(f"| {seq} | {target} | {what} | | | |")
                    continue
                speedup, ratio = _ratios(cell, cells.get("decomposed"))
                lines.append(
                    f"| {seq} | {target} | {cell['median_ms']:.2f} | "
                    f"{cell['peak_extra_mib']:.1f} | {_fmt(speedup)}x | {_fmt(ratio, 3)} |"
                    .replace("| –x |", "| – |"))
        lines.append("")
    lines += ["## Goals", "",
              f"Causal at seq {' and '.join(map(str, GOAL_SEQS))}: the best fused target "
              f"({' or '.join(FUSED_TARGETS)}; torch-sdpa is a reference, not a target) must be "
              f">= {GOAL_SPEEDUP}x faster than decomposed and use <= "
              f"{GOAL_MEMORY_RATIO:g} of its peak extra memory.", ""]
    for g in report["goals"]:
        if "speedup" in g:
            lines.append(
                f"- causal seq {g['seq']}: best fused `{g['target']}` speedup "
                f"{_fmt(g['speedup'])}x (goal >= {GOAL_SPEEDUP}x: "
                f"{'PASS' if g['speed_pass'] else 'FAIL'}), memory ratio "
                f"{_fmt(g['memory_ratio'], 3)} (goal <= {GOAL_MEMORY_RATIO:g}: "
                f"{'PASS' if g['memory_pass'] else 'FAIL'}) -> **{g['verdict']}**")
        else:
            lines.append(f"- causal seq {g['seq']}: **{g['verdict']}**")
    lines += ["", "### Where a fused target is slower than decomposed", ""]
    slow = report["slower"]
    lines += [f"- {s}" for s in slow] if slow else ["- none"]
    failures = [f"{MODE_LABEL[mode]}, seq {seq}, `{t}`: {c.get('status')}: "
                f"{_short(c.get('error', ''), 300)}"
                for mode, by_seq in report["results"].items() for seq, cells in by_seq.items()
                for t, c in cells.items() if c.get("status") != "ok"]
    if failures:
        lines += ["", "### Cells that did not produce a measurement", ""]
        lines += [f"- {f}" for f in failures]
    lines += ["", f"Raw numbers: `{report['name']}.json`; plot: `{report['name']}.png`.", ""]
    return "\n".join(lines)


def render_plot(report: dict[str, Any], path: Path) -> None:
    """Latency (top row) and peak extra memory (bottom row) vs seq, log-log, one panel per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    modes = report["modes"]
    fig, axes = plt.subplots(2, len(modes), figsize=(5 * len(modes), 8), squeeze=False)
    styles = {"ort": "o-", "onnx": "s-", "decomposed": "^--", TORCH_TARGET: "d:"}
    for col, mode in enumerate(modes):
        by_seq = report["results"].get(mode, {})
        for target in report["targets"]:
            pts = [(seq, by_seq.get(str(seq), {}).get(target, {})) for seq in report["seqs"]]
            ok = [(s, c) for s, c in pts if c.get("status") == "ok"]
            if not ok:
                continue
            xs = [s for s, _ in ok]
            axes[0][col].plot(xs, [c["median_ms"] for _, c in ok], styles.get(target, "x-"),
                              label=target)
            axes[1][col].plot(xs, [max(c["peak_extra_mib"], 0.1) for _, c in ok],
                              styles.get(target, "x-"), label=target)
        for row, ylabel in ((0, "median latency (ms)"), (1, "peak extra memory (MiB)")):
            ax = axes[row][col]
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(report["seqs"])
            ax.set_xticklabels([str(s) for s in report["seqs"]])
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
            ax.set_xlabel("sequence length")
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        axes[0][col].set_title(f"{MODE_LABEL[mode]}")
    m = report["machine"]
    fig.suptitle(f"one attention layer (embed {EMBED}, {HEADS} heads, batch 1), onnxruntime "
                 f"{m['onnxruntime']} CPU, {m['cpu_count']} CPUs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- main -------------------------------------------------------------------------------------


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
