"""How busy this machine's CPUs are: `ag.Session` lets onnxruntime's idle pool threads spin
only when they would find their CPUs free.

Spinning threads answer the next op at once (KV-cache decoding measured 1.2x-1.3x faster than
with sleeping threads on an idle 2-core machine), but on a machine already running other work
they take CPU time from it and from each other (the same decoding ran 1.2x-1.8x slower than
with sleeping threads beside one or two busy processes; bench/README.md)."""

from __future__ import annotations

import os
import time

SAMPLE_S = 0.05  # how long busy_cpus watches the CPUs
KEEP_S = 5.0  # how long one look is reused (a test suite makes many sessions in a row)
_last: tuple[float, float | None] | None = None  # (time.monotonic() of the look, busy CPUs)


def _ticks() -> tuple[int, int] | None:
    """(all, idle) CPU time so far from /proc/stat's first line, in clock ticks; None off
    Linux. Idle includes waiting for I/O; time stolen by a hypervisor counts as busy."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    return user + nice + system + idle + iowait + irq + softirq + steal, idle + iowait


def busy_cpus() -> float | None:
    """How many CPUs other work keeps busy: watched for SAMPLE_S while this thread sleeps, the
    answer reused for KEEP_S. None where the system does not say (not Linux)."""
    global _last
    now = time.monotonic()
    if _last is not None and now - _last[0] < KEEP_S:
        return _last[1]
    first = _ticks()
    busy = None
    if first is not None:
        time.sleep(SAMPLE_S)
        second = _ticks()
        if second is not None and second[0] > first[0]:
            spent, idle = second[0] - first[0], second[1] - first[1]
            busy = (spent - idle) / spent * (os.cpu_count() or 1)
    _last = (time.monotonic(), busy)
    return busy


def spin_by_default(threads: int | None) -> bool:
    """Whether a session's idle pool threads should spin: yes when its threads (onnxruntime's
    default: one per CPU) fit on the CPUs other work leaves free, with half a CPU to spare for
    noise; yes where the load is unknown (onnxruntime's own default)."""
    busy = busy_cpus()
    if busy is None:
        return True
    cpus = os.cpu_count() or 1
    return busy + min(threads or cpus, cpus) <= cpus + 0.5
