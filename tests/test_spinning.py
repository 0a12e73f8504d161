"""ag.Session's spinning choice: "auto" spins only when the session's threads find their CPUs
free; True / False fix it; the choice reaches onnxruntime's session options."""

from __future__ import annotations

import os

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
    """A 4-CPU machine whose busy CPUs the test sets."""
    monkeypatch.setattr(os, "cpu_count", lambda: 4)

    def busy(value):
        monkeypatch.setattr(_cpu, "busy_cpus", lambda: value)

    return busy


@pytest.mark.parametrize("busy, threads, spins", [
    (0.0, None, True),   # an idle machine: every CPU free
    (0.4, None, True),   # background noise within the half CPU of slack
    (1.0, None, False),  # one CPU taken: a pool of 4 would fight for it
    (1.0, 2, True),      # ... a pool of 2 fits on the 3 free CPUs
    (3.0, 2, False),
    (None, None, True),  # load unknown (not Linux): onnxruntime's own default
])
def test_auto_spins_when_the_threads_fit(machine, busy, threads, spins) -> None:
    machine(busy)
    model, params = tiny()
    session = ag.Session(model, params=params, threads=threads)
    assert session.spinning is spins
    assert allow_spinning(session) == ("" if spins else "0")  # unset: onnxruntime spins


@pytest.mark.parametrize("fixed", [True, False])
def test_true_or_false_is_kept_whatever_the_load(machine, fixed) -> None:
    machine(1.0 if fixed else 0.0)  # the opposite of what "auto" would choose
    model, params = tiny()
    session = ag.Session(model, params=params, spinning=fixed)
    assert session.spinning is fixed and allow_spinning(session) == ("" if fixed else "0")


@pytest.mark.parametrize("wrong", ["yes", 1, None])
def test_other_values_are_refused(wrong) -> None:
    model, params = tiny()
    with pytest.raises(ag.ConfigError, match="spinning must be True, False or 'auto'"):
        ag.Session(model, params=params, spinning=wrong)


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads Linux's /proc/stat")
def test_busy_cpus_watches_the_machine_and_reuses_a_recent_look(monkeypatch) -> None:
    monkeypatch.setattr(_cpu, "_last", None)
    busy = _cpu.busy_cpus()
    assert busy is not None and 0.0 <= busy <= (os.cpu_count() or 1)
    monkeypatch.setattr(_cpu, "_ticks", lambda: pytest.fail("looked again within KEEP_S"))
    assert _cpu.busy_cpus() == busy


def test_busy_cpus_counts_the_ticks_other_work_spent(monkeypatch) -> None:
    monkeypatch.setattr(_cpu, "_last", None)
    monkeypatch.setattr(_cpu, "SAMPLE_S", 0.0)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    looks = iter([(1000, 600), (1100, 650)])  # 100 ticks spent, 50 of them idle
    monkeypatch.setattr(_cpu, "_ticks", lambda: next(looks))
    assert _cpu.busy_cpus() == pytest.approx(2.0)  # half of 4 CPUs busy
    monkeypatch.setattr(_cpu, "_last", None)
    monkeypatch.setattr(_cpu, "_ticks", lambda: None)
    assert _cpu.busy_cpus() is None
