"""ag.Session's spinning choice: "auto" spins only when the session's threads find their CPUs
free; True / False fix it; the choice reaches onnxruntime's session options."""

from __future__ import annotations

import os

import numpy as np
import pytest

import attngraph as ag
from attngraph import _cpu


def tiny() -> tuple[ag.Model, dict]:
    x = ag.input("x", ("batch", "seq", 4))
    model = ag.Model(x, ag.dense(x, 3, name="proj"))
    return model, model.init(seed=0)


def allow_spinning(session: ag.Session) -> str:
    """The session's allow_spinning entry; "" when unset (onnxruntime then spins)."""
    options = session.session.get_session_options()
    try:
        return options.get_session_config_entry("session.intra_op.allow_spinning")
    except RuntimeError:  # no such entry
        return ""


@pytest.fixture
def machine(monkeypatch):
    """A machine of 4 usable CPUs whose physical cores and busy CPUs the test sets."""
    monkeypatch.setattr(_cpu, "usable_cpus", lambda: [0, 1, 2, 3])

    def set_up(busy, cores=4):
        monkeypatch.setattr(_cpu, "busy_cpus", lambda: busy)
        monkeypatch.setattr(_cpu, "physical_cores", lambda cpus: cores)

    return set_up


@pytest.mark.parametrize("busy, threads, cores, spins", [
    (0.0, None, 4, True),   # an idle machine: every CPU free
    (0.4, None, 4, True),   # background noise within the half CPU of slack
    (1.0, None, 4, False),  # one CPU taken: the default pool of 4 would fight for it
    (1.0, 2, 4, True),      # ... a pool of 2 fits on the 3 free CPUs
    (1.0, None, 2, True),   # 2 cores of 2 hyperthreads: the default pool is 2 threads
    (3.0, 2, 4, False),
    (None, None, 4, True),  # load unknown (not Linux): onnxruntime's own default
])
def test_auto_spins_when_the_threads_fit(machine, busy, threads, cores, spins) -> None:
    machine(busy, cores)
    model, params = tiny()
    session = ag.Session(model, params=params, threads=threads)
    assert session.spinning is spins
    assert allow_spinning(session) == ("" if spins else "0")  # unset: onnxruntime spins


@pytest.mark.parametrize("fixed", [True, False, np.True_, np.False_])
def test_true_or_false_is_kept_whatever_the_load(machine, fixed) -> None:
    machine(1.0 if fixed else 0.0)  # the opposite of what "auto" would choose
    model, params = tiny()
    session = ag.Session(model, params=params, spinning=fixed)
    assert session.spinning is bool(fixed)
    assert allow_spinning(session) == ("" if fixed else "0")


@pytest.mark.parametrize("wrong", ["yes", 1, None])
def test_other_values_are_refused_before_any_work(wrong, monkeypatch) -> None:
    model, params = tiny()
    monkeypatch.setattr(ag.Session, "_load_bytes", lambda *a: pytest.fail("exported first"))
    with pytest.raises(ag.ConfigError, match="spinning must be True, False or 'auto'"):
        ag.Session(model, params=params, spinning=wrong)


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads Linux's /proc/stat")
def test_busy_cpus_watches_the_machine_and_reuses_a_recent_look(monkeypatch) -> None:
    monkeypatch.setattr(_cpu, "_last", None)
    busy = _cpu.busy_cpus()
    assert busy is not None and 0.0 <= busy <= len(_cpu.usable_cpus())
    monkeypatch.setattr(_cpu, "_ticks", lambda cpus: pytest.fail("looked again within KEEP_S"))
    assert _cpu.busy_cpus() == busy


def in_turn(*looks):
    """A stand-in for `_cpu._ticks` that returns `looks` one after the other."""
    pending = iter(looks)
    return lambda cpus: next(pending)


def test_busy_cpus_counts_the_ticks_other_work_spent(monkeypatch) -> None:
    monkeypatch.setattr(_cpu, "_last", None)
    monkeypatch.setattr(_cpu, "SAMPLE_S", 0.0)
    monkeypatch.setattr(_cpu, "usable_cpus", lambda: [0, 1, 2, 3])
    monkeypatch.setattr(_cpu, "_ticks", in_turn((1000, 600), (1100, 650)))  # 100 ticks, 50 idle
    assert _cpu.busy_cpus() == pytest.approx(2.0)  # half of 4 CPUs busy
    for still in ([(1000, 600), (1000, 600)], [None]):  # no tick passed; no /proc/stat
        monkeypatch.setattr(_cpu, "_last", None)
        monkeypatch.setattr(_cpu, "_ticks", in_turn(*still))
        assert _cpu.busy_cpus() is None


def test_ticks_read_only_the_usable_cpus(tmp_path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  40 0 40 400 0 0 0 0 0 0\n"
                    "cpu0 10 0 10 100 0 0 0 0 0 0\n"
                    "cpu1 20 0 20 150 5 0 0 5 0 0\n"
                    "cpu2 10 0 10 150 0 0 0 0 0 0\n"
                    "intr 12345\n")
    assert _cpu._ticks([1], str(stat)) == (200, 155)  # steal busy, iowait idle
    assert _cpu._ticks([0, 2], str(stat)) == (290, 250)
    assert _cpu._ticks([7], str(stat)) is None
