"""Settings of the attention benchmark (`attention.py`), shared by its driver, workers and
report."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
EMBED = 512
HEADS = 8
WINDOW = 256
ALL_SEQS = (128, 512, 2048, 8192)
QUICK_SEQS = (128, 512)
ALL_MODES = ("full", "causal", "window")
ONNX_TARGETS = ("ort", "onnx", "decomposed")
FUSED_TARGETS = ("ort", "onnx")
TORCH_TARGET = "torch-sdpa"
GOAL_SEQS = (2048, 8192)
GOAL_SPEEDUP = 1.7
GOAL_MEMORY_RATIO = 0.1
MODE_LABEL = {"full": "full", "causal": "causal", "window": f"sliding window {WINDOW}"}
