"""The driver side of the attention benchmark: export, run each cell in its own process, wait
for a quiet machine, keep the best round."""

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

from _attention_config import EMBED, HEADS, HERE, ROOT, TORCH_TARGET, WINDOW


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
    cmd = [sys.executable, str(HERE / "attention.py"), "--worker", json.dumps(spec)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True,
                              timeout=timeout_s, cwd=str(ROOT))
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
                              check=False, capture_output=True, text=True, timeout=120)
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
