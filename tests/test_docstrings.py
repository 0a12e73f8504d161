"""Every public name has a docstring: functions, classes (not just the dataclass signature
that @dataclass writes), and their public methods and properties."""

from __future__ import annotations

import inspect

import attngraph as ag
from attngraph import analysis, cost, models
from attngraph.models import hf


def _public() -> dict[str, object]:
    names = {f"ag.{n}": getattr(ag, n) for n in ag.__all__ if n not in ("__version__", "models")}
    for mod, label in ((analysis, "analysis"), (hf, "models.hf"), (models, "models")):
        names.update({f"{label}.{n}": getattr(mod, n) for n in mod.__all__})
    names["analysis.capturing"] = analysis.capturing
    names["cost.AttentionCost"] = cost.AttentionCost
    return names


def _undocumented(label: str, obj: object) -> list[str]:
    missing = []
    if inspect.isclass(obj):
        doc = obj.__doc__ or ""
        if not doc.strip() or doc.startswith(f"{obj.__name__}("):  # @dataclass's stand-in
            missing.append(label)
        for key, member in vars(obj).items():
            if key.startswith("_"):
                continue
            func = member.fget if isinstance(member, property) else member
            if isinstance(func, (staticmethod, classmethod)):
                func = func.__func__
            if inspect.isfunction(func) and not (func.__doc__ or "").strip():
                missing.append(f"{label}.{key}")
    elif callable(obj) and not (getattr(obj, "__doc__", None) or "").strip():
        missing.append(label)
    return missing


def test_every_public_name_has_a_docstring() -> None:
    missing = [m for label, obj in _public().items() for m in _undocumented(label, obj)]
    assert not missing, f"no docstring: {missing}"


def test_named_leftovers_are_documented() -> None:
    for obj in (analysis.AttentionReport, analysis.capturing, analysis.LayerAttention.to_dict,
                cost.AttentionCost.kv_cache_bytes_per_token.fget, ag.TensorType.with_shape,
                ag.TensorType.with_dtype, ag.ValidationReport.worst):
        assert obj.__doc__ and len(obj.__doc__.split()) >= 4, obj
