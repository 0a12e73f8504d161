"""The example models: exported files in exported/ are reproduced byte for byte, and every
example agrees with the reference on every target."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import sys

import pytest
from conftest import assert_parity

import attngraph as ag

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))
EXAMPLES = ["sliding_window", "hybrid", "hybrid_mlp", "gpt", "bert", "llama", "mistral", "t5"]


@pytest.mark.parametrize("name", EXAMPLES)
def test_reexport_matches_exported_bytes_and_manifest(name: str, tmp_path) -> None:
    module = importlib.import_module(name)
    model, params = module.build()
    with open(os.path.join(ROOT, "exported", "MANIFEST.json")) as f:
        manifest = json.load(f)
    for target in ("ort", "onnx", "decomposed"):
        filename = f"{name}.{target}.onnx"
        fresh = ag.export(model, params, tmp_path / filename, target=target)
        data = (tmp_path / filename).read_bytes()
        with open(os.path.join(ROOT, "exported", filename), "rb") as f:
            assert data == f.read(), f"{filename} differs from exported/ (run `make export`)"
        entry = manifest[filename]
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["target"] == target and entry["opset"] == fresh.opset_import[0].version


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_parity(name: str, target: str) -> None:
    module = importlib.import_module(name)
    model, params = module.build()
    assert_parity(model, params, module.feeds(), target)
