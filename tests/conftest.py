"""Shared fixtures: one parity helper used by every test that compares targets."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import attngraph as ag
from attngraph._registry import TARGETS

ATOL = 1e-4


@pytest.fixture(params=TARGETS)
def target(request: pytest.FixtureRequest) -> str:
    return request.param


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def randn(*shape: int, seed: int = 0) -> np.ndarray:
    return rng(seed).standard_normal(shape).astype(np.float32)


def run_target(model: ag.Model, params: dict[str, np.ndarray], feeds: dict[str, Any],
               target: str, dtype: str = "float32") -> dict[str, np.ndarray]:
    proto = ag.export(model, params, target=target, dtype=dtype)
    return ag.Session(proto, ["CPUExecutionProvider"]).run(feeds)


def assert_parity(model: ag.Model, params: dict[str, np.ndarray] | None, feeds: dict[str, Any],
                  target: str, atol: float = ATOL) -> dict[str, np.ndarray]:
    """Reference vs one target in onnxruntime; a readable diff on failure. Returns reference."""
    params = model.init(seed=1) if params is None else params
    ref = model.predict(params, feeds)
    got = run_target(model, params, feeds, target)
    for name, expected in ref.items():
        actual = got[name]
        assert actual.shape == expected.shape, (
            f"{target}/{name}: shape {actual.shape} != reference {expected.shape}")
        assert not np.isnan(actual).any(), f"{target}/{name}: NaN in output"
        diff = np.abs(actual.astype(np.float64) - expected)
        worst = np.unravel_index(int(np.argmax(diff)), diff.shape) if diff.size else ()
        assert diff.max(initial=0.0) <= atol, (
            f"{target}/{name}: max abs error {diff.max():.3e} > {atol:.0e} at index {worst}: "
            f"got {actual[worst]!r}, reference {expected[worst]!r}")
    return ref


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`attngraph ARGV...` run in this process: (exit code, stdout, stderr)."""
    from attngraph.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def model_file(request: pytest.FixtureRequest, tmp_path) -> str:
    """A model file for the CLI holding the test module's MODEL_FILE source; its path."""
    path = tmp_path / "m.py"
    path.write_text(request.module.MODEL_FILE)
    return str(path)
