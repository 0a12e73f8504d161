"""The worker side of the attention benchmark: one measurement per process (`--worker`)."""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from typing import Any

from _attention_config import EMBED, HEADS, ROOT, TORCH_TARGET, WINDOW

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
