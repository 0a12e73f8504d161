"""Shared by the example scripts: export one model for every target into exported/ and keep
exported/MANIFEST.json up to date."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from typing import Any

import attngraph as ag

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPORTED = os.path.join(ROOT, "exported")
TARGETS = ("ort", "onnx", "decomposed")


def export_example(name: str, build: Callable[[], tuple[ag.Model, Any]],
                   **options: Any) -> list[str]:
    """Write exported/<name>.<target>.onnx for every target (`options` go to ag.export, e.g.
    streaming=True); return the paths."""
    os.makedirs(EXPORTED, exist_ok=True)
    model, params = build()
    paths = []
    for target in TARGETS:
        path = os.path.join(EXPORTED, f"{name}.{target}.onnx")
        proto = ag.export(model, params, path, target=target, **options)
        _record(os.path.basename(path), model, target, proto.opset_import[0].version)
        paths.append(path)
        print(f"wrote {os.path.relpath(path, ROOT)}")
    return paths


def _record(filename: str, model: ag.Model, target: str, opset: int) -> None:
    manifest_path = os.path.join(EXPORTED, "MANIFEST.json")
    manifest: dict[str, Any] = {}
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            manifest = json.load(f)
    with open(os.path.join(EXPORTED, filename), "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    manifest[filename] = {
        "sha256": digest, "target": target, "opset": opset,
        "inputs": {k: str(t) for k, t in model.input_types.items()},
        "outputs": {k: str(t) for k, t in model.output_types.items()},
    }
    text = json.dumps(dict(sorted(manifest.items())), indent=2) + "\n"
    with open(manifest_path + ".tmp", "w") as f:
        f.write(text)
    os.replace(manifest_path + ".tmp", manifest_path)
