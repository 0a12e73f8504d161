"""`ag.validate`: compare exported models in onnxruntime against the reference interpreter."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._checks import require_model
from ._errors import ExportError, caller_location
from ._registry import TARGETS
from ._table import render

# (atol, rtol) per exported float dtype: |got - ref| <= atol + rtol * |ref| element-wise.
TOLERANCES: dict[str, tuple[float, float]] = {"float32": (1e-4, 1e-4), "float16": (2e-2, 2e-2)}


@dataclass
class Check:
    target: str
    output: str
    max_abs: float
    max_rel: float
    atol: float
    rtol: float
    passed: bool
    error: str | None = None
    # max over elements of |got - ref| / (atol + rtol * |ref|): the share of its tolerance the
    # worst element uses (<= 1 passes). Why a large max rel err can still pass: it sits where
    # |ref| is near zero, and atol covers it there.
    used: float = float("nan")
    tolerance: str | None = None  # the rule when it is not atol + rtol * |ref| (quantized)
    note: str | None = None  # shown after "pass" (the quantized error measured)

    def verdict(self) -> str:
        """'pass (worst element at 3% of its tolerance)' or 'FAIL: ...'."""
        share = "" if np.isnan(self.used) else f"worst element at {self.used:.1%} of its tolerance"
        why = "; ".join(x for x in (self.note, share) if x)
        if self.passed:
            return f"pass ({why})" if why else "pass"
        reason = self.error or why
        return f"FAIL: {reason}" if reason else "FAIL"


@dataclass
class ValidationReport:
    """Per target and output: max abs / rel error and pass/fail. `bool(report)` = all passed."""

    dtype: str
    checks: list[Check] = field(default_factory=list)
    quantize: str | None = None
    matmuls: dict[str, int] = field(default_factory=dict)  # target -> quantized MatMuls

    @property
    def passed(self) -> bool:
        """True when the report holds checks and every one of them passed."""
        return bool(self.checks) and all(c.passed for c in self.checks)

    def __bool__(self) -> bool:
        return self.passed

    def worst(self, target: str) -> float:
        """The largest max abs error over `target`'s outputs ("ort", "onnx", "decomposed");
        NaN when the report holds no check for that target."""
        if not isinstance(target, str) or target not in TARGETS:
            loc = caller_location()
            raise ExportError(f"ValidationReport.worst: target must be one of {list(TARGETS)}, "
                              f"given {target!r}" + (f" (at {loc})" if loc else ""))
        return max((c.max_abs for c in self.checks if c.target == target), default=float("nan"))

    def __str__(self) -> str:
        rows = [(c.target, c.output, f"{c.max_abs:.2e}", f"{c.max_rel:.2e}",
                 c.tolerance or f"{c.atol:.0e} + {c.rtol:.0e}*|ref|", c.verdict())
                for c in self.checks]
        lines = [render(("target", "output", "max abs err", "max rel err", "tolerance",
                         "result"), rows)]
        what = self.dtype + (f", {self.quantize} weights vs the float32 reference"
                             if self.quantize else "")
        rule = (f"an output passes when rms(got - ref) <= tolerance*rms(ref), the accuracy "
                f"{self.quantize} weights are held to (about three quantized MatMuls' error; "
                f"deep models on random weights exceed it)"
                if self.quantize else
                "an output passes when every element has |got - ref| <= atol + rtol*|ref|")
        lines.append(f"validation ({what}): {'PASSED' if self.passed else 'FAILED'}: {rule}")
        return "\n".join(lines)


def compare(target: str, name: str, got: np.ndarray, ref: np.ndarray, dtype: str) -> Check:
    """One output's errors against the reference under the dtype's tolerance."""
    atol, rtol = TOLERANCES[dtype]
    got64, ref64 = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if got64.shape != ref64.shape:
        return Check(target, name, float("inf"), float("inf"), atol, rtol, False,
                     f"shape {list(got64.shape)} != reference {list(ref64.shape)}")
    if got64.size == 0:
        return Check(target, name, 0.0, 0.0, atol, rtol, True)
    finite_ok = bool(np.array_equal(np.isnan(got64), np.isnan(ref64)))
    diff = np.abs(got64 - ref64)
    diff = np.where(np.isnan(got64) & np.isnan(ref64), 0.0, diff)
    max_abs = float(np.nanmax(diff)) if not np.isnan(diff).all() else float("inf")
    max_rel = float(np.nanmax(diff / np.maximum(np.abs(ref64), 1e-6)))
    bound = atol + rtol * np.abs(ref64)
    passed = finite_ok and bool(np.all(diff <= bound))
    used = float(np.nanmax(diff / bound)) if not np.isnan(diff).all() else float("inf")
    return Check(target, name, max_abs, max_rel, atol, rtol, passed,
                 None if finite_ok else "NaN where the reference has none", used)


def validate(model: Any, params: Mapping[str, np.ndarray], feeds: Mapping[str, Any],
             targets: Sequence[str] = TARGETS, *, dtype: str = "float32",
             providers: Sequence[str] | None = None,
             quantize: str | None = None) -> ValidationReport:
    """Export for each target, run in onnxruntime, compare every output with `model.predict`.

    With `quantize` ("int8" / "int4", float32 only) the quantized export is compared with the
    float32 reference under `attngraph.quantize.TOLERANCES`: rms(got - ref) <= tol * rms(ref)
    per output (int4 0.25, int8 0.05: an accuracy claim, about three quantized MatMuls' worth of
    the grid's error). The report gives the ratio measured and what the grid alone explains
    for the export's n quantized MatMuls, GRID_ERROR * sqrt(n): a failure within it is the
    accuracy int4 / int8 costs these weights (deep models on random weights fail so); one beyond
    it points at a defect.

    Returns a ValidationReport; `report.passed` is True when every output of every target is
    within the tolerance of `dtype` (TOLERANCES).
    """
    from ._export import export
    from .runtime import Session

    require_model(model, "validate", caller_location(), error=ExportError)
    if isinstance(targets, str):
        targets = (targets,)
    if not isinstance(targets, (list, tuple, set, frozenset)) or not targets:
        raise ExportError(f"validate: targets must be a target name or a non-empty list of "
                          f"them (some of {list(TARGETS)}), given {targets!r}")
    for t in targets:
        if t not in TARGETS:
            raise ExportError(f"validate: unknown target {t!r}; expected some of {list(TARGETS)}")
    if dtype not in TOLERANCES:
        raise ExportError(f"validate: dtype must be one of {list(TOLERANCES)}, given {dtype!r}")
    if quantize is not None:
        from .quantize import check_mode

        check_mode(quantize, "validate")
        if dtype != "float32":
            raise ExportError(f"validate: quantize goes with dtype='float32', given {dtype!r}")
    ref = model.predict(params, feeds)
    run_feeds = {k: np.asarray(v).astype(dtype) if np.asarray(v).dtype.kind == "f"
                 else np.asarray(v) for k, v in feeds.items()}
    report = ValidationReport(dtype, quantize=quantize)
    for target in targets:
        proto = export(model, params, target=target, dtype=dtype, quantize=quantize)
        session = Session(proto, providers)
        got = session.run(run_feeds)
        if quantize is not None:
            from .quantize import quantized_matmuls

            report.matmuls[target] = quantized_matmuls(proto)
        for name, expected in ref.items():
            check = compare(target, name, got[name], expected, dtype)
            report.checks.append(check if quantize is None else compare_quantized(
                check, got[name], expected, quantize, report.matmuls[target]))
    return report


def compare_quantized(check: Check, got: np.ndarray, ref: np.ndarray, mode: str,
                      matmuls: int | None = None) -> Check:
    """`check` (errors measured) judged by the quantized rule: rms(got - ref) <= tol *
    rms(ref), and no NaN where the reference has none. With `matmuls` (the export's quantized
    MatMuls) the note also says whether the error is within what the grid alone explains."""
    from .quantize import GRID_ERROR
    from .quantize import TOLERANCES as QUANTIZED

    tol = QUANTIZED[mode]
    if check.error is not None or np.asarray(ref).size == 0:
        return check
    diff = np.asarray(got, np.float64) - np.asarray(ref, np.float64)
    ratio = float(np.sqrt(np.mean(diff**2)) / max(np.sqrt(np.mean(np.square(ref, dtype=np.float64))),
                                                  1e-12))
    note = f"rms err {ratio:.3f}*rms(ref)" + ("" if ratio <= tol else f" > {tol:g}*rms(ref)")
    if matmuls:
        grid = GRID_ERROR[mode] * np.sqrt(matmuls)
        note += (f"; {mode}'s grid alone explains <= {grid:.2f} here ({GRID_ERROR[mode]:g} per "
                 f"quantized MatMul x sqrt({matmuls})): "
                 + ("the error is the grid's" if ratio <= grid else
                    "more than the grid explains, look for a defect"))
    return Check(check.target, check.output, check.max_abs, check.max_rel, 0.0, 0.0,
                 bool(ratio <= tol), None, tolerance=f"rms err <= {tol:g}*rms(ref)", note=note)
