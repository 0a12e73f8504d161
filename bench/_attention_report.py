"""The attention benchmark's results page (markdown) and plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from _attention_config import (
    EMBED,
    FUSED_TARGETS,
    GOAL_MEMORY_RATIO,
    GOAL_SEQS,
    GOAL_SPEEDUP,
    HEADS,
    MODE_LABEL,
    TORCH_TARGET,
)
from _attention_driver import _short

from attngraph._table import render


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
        (f"Machine: {m['cpu_count']} CPUs ({m['cpu_model']}), {m['ram_gib']} GiB RAM, "
        f"onnxruntime {m['onnxruntime']} (CPUExecutionProvider, intra-op threads: "
        f"{m['intra_op_threads']}), numpy {m['numpy']}, Python {m['python']}, "
        f"torch {report['torch'] or 'not installed (torch-sdpa skipped)'}, "
        f"attngraph {m['attngraph']}, {m['date']}; load average at start "
        f"{', '.join(f'{v:.2f}' for v in m['loadavg_start'])}, at end "
        f"{', '.join(f'{v:.2f}' for v in m['loadavg_end'])}."), "",
        f"Command: `{report['command']}` ({report['elapsed_s']:.0f} s).", "",
        ("Each cell runs in a fresh process: one warm-up run, then N timed runs (N "
        f"{report['min_runs']}..{report['max_runs']}, about {report['budget_s']:g} s of work); "
        "**median ms** is the median latency, **peak extra MiB** the peak resident memory "
        "during warm-up and timed runs above the resident memory just before them. Cells "
        f"faster than {report['repeat_under_ms']:g} ms are measured in up to "
        f"{report['rounds']} rounds spread over the run and the fastest round is shown (the "
        "machine may be shared; before each cell the driver waits up to "
        f"a few seconds for CPU use under {report['quiet_below_pct']:g}%). "
        "**speedup** = decomposed median / this median (> 1 is faster than decomposed); "
        "**mem ratio** = this peak extra / decomposed peak extra (– when decomposed's is "
        "under 1 MiB)."), "",
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
        rows = []
        for seq in report["seqs"]:
            cells = report["results"].get(mode, {}).get(str(seq), {})
            for target in report["targets"]:
                cell = cells.get(target)
                if cell is None:
                    continue
                if cell.get("status") != "ok":
                    what = f"{cell.get('status', 'error')}: {_short(cell.get('error', ''))}"
                    rows.append((seq, target, what, "", "", ""))
                    continue
                speedup, ratio = _ratios(cell, cells.get("decomposed"))
                rows.append((seq, target, f"{cell['median_ms']:.2f}",
                             f"{cell['peak_extra_mib']:.1f}",
                             _fmt(speedup) + ("x" if _fmt(speedup) != "–" else ""),
                             _fmt(ratio, 3)))
        table = render(("seq", "target", "median ms", "peak extra MiB", "speedup vs decomposed",
                        "mem ratio vs decomposed"), rows, style="markdown", align="rlrrrr")
        lines += [f"## {MODE_LABEL[mode]}", "", table, ""]
    lines += ["## Goals", "",
              (f"Causal at seq {' and '.join(map(str, GOAL_SEQS))}: the best fused target "
              f"({' or '.join(FUSED_TARGETS)}; torch-sdpa is a reference, not a target) must be "
              f">= {GOAL_SPEEDUP}x faster than decomposed and use <= "
              f"{GOAL_MEMORY_RATIO:g} of its peak extra memory."), ""]
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
