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


def usable_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity, e.g. a container's share)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return list(range(os.cpu_count() or 1))


def physical_cores(cpus: list[int]) -> int:
    """How many physical cores `cpus` span (onnxruntime's default pool has one thread per
    physical core); len(cpus) where the topology is not readable."""
    cores = set()
    for cpu in cpus:
        topology = f"/sys/devices/system/cpu/cpu{cpu}/topology"
        try:
            with open(f"{topology}/physical_package_id", encoding="ascii") as f:
                package = f.read().strip()
            with open(f"{topology}/core_id", encoding="ascii") as f:
                cores.add((package, f.read().strip()))
        except OSError:
            return len(cpus)
    return len(cores) or len(cpus)


def _ticks(cpus: list[int], stat: str = "/proc/stat") -> tuple[int, int] | None:
    """(all, idle) time so far of `cpus`, in clock ticks, from /proc/stat's per-CPU lines; None
    off Linux. Idle includes waiting for I/O; time stolen by a hypervisor counts as busy."""
    try:
        with open(stat, encoding="ascii") as f:
            lines = f.readlines()
    except OSError:
        return None
    wanted = {f"cpu{c}" for c in cpus}
    spent = idle = 0
    for line in lines:
        fields = line.split()
        if len(fields) < 9 or fields[0] not in wanted:
            continue
        user, nice, system, free, iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
        spent += user + nice + system + free + iowait + irq + softirq + steal
        idle += free + iowait
    return (spent, idle) if spent else None


def busy_cpus() -> float | None:
    """How many of this process's CPUs other work keeps busy: watched for SAMPLE_S while this
    thread sleeps, the answer reused for KEEP_S. None where the system does not say."""
    global _last
    now = time.monotonic()
    if _last is not None and now - _last[0] < KEEP_S:
        return _last[1]
    cpus = usable_cpus()
    first = _ticks(cpus)
    busy = None
    if first is not None:
        time.sleep(SAMPLE_S)
        second = _ticks(cpus)
        if second is not None and second[0] > first[0]:
            spent, idle = second[0] - first[0], second[1] - first[1]
            busy = (spent - idle) / spent * len(cpus)
    _last = (time.monotonic(), busy)
    return busy


def spin_by_default(threads: int | None) -> bool:
    """Whether a session's idle pool threads should spin: yes when its threads (onnxruntime's
    default: one per physical core) fit on the CPUs other work leaves free, with a tenth of
    the CPUs (at least half a CPU) to spare for noise; yes where the load is unknown
    (onnxruntime's own default)."""
    busy = busy_cpus()
    if busy is None:
        return True
    cpus = usable_cpus()
    pool = min(threads or physical_cores(cpus), len(cpus))
    return busy + pool <= len(cpus) + max(0.5, 0.1 * len(cpus))
