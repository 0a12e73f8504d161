"""`attngraph export FILE.py -o OUT.onnx`: write the model as an ONNX file."""

from __future__ import annotations

import argparse
import os

from .._export import export
from .._registry import TARGETS
from ._common import human_size, model_options
from ._load import model_and_params

EXAMPLE = "export model.py -o out/model.onnx --target ort"
HELP = "export a model to an ONNX file"
FUSED_ATTENTION_OPS = frozenset({"MultiHeadAttention", "GroupQueryAttention", "Attention"})


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The command's options."""
    model_options(p, params=True)
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx")
    p.add_argument("--target", choices=TARGETS, default="ort")
    p.add_argument("--opset", type=int, default=None, help="default: 23 (ort, onnx), 17 "
                   "(decomposed)")
    p.add_argument("--kv-cache", action="store_true", help="export a decoder with a key/value "
                   "cache (past_key_values / present inputs and outputs)")


def run(args: argparse.Namespace) -> int:
    """Export to ONNX and print one line: path, target, opset, nodes, fused attention, size."""
    model, params = model_and_params(args)
    proto = export(model, params, args.output, target=args.target, opset=args.opset,
                   dtype=args.dtype, kv_cache=args.kv_cache)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    fused = sum(n.op_type in FUSED_ATTENTION_OPS for n in proto.graph.node)
    size = os.path.getsize(args.output)
    if os.path.exists(args.output + ".data"):
        size += os.path.getsize(args.output + ".data")
    print(f"wrote {args.output}: target {args.target}, opset {opset}, "
          f"{len(proto.graph.node)} nodes, {fused} fused attention, {human_size(size)}")
    return 0
