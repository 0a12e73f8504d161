"""`attngraph export` options for deployment: --triton REPO and --quantize int8|int4."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..quantize import MODES
from ._common import positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    """--quantize and the Triton repository options."""
    p.add_argument("--quantize", choices=MODES, default=None,
                   help="quantize the MatMul weights (onnxruntime's tools): int4 = MatMulNBits "
                   "in blocks of 32, int8 = dynamic int8; runs in onnxruntime only")
    p.add_argument("--triton", metavar="REPO", help="write a Triton model repository for the "
                   "onnxruntime backend: REPO/NAME/config.pbtxt and REPO/NAME/1/model.onnx")
    p.add_argument("--name", default=None, help="with --triton: the model's name (default: the "
                   "model file's name)")
    p.add_argument("--max-batch-size", type=int, default=8, metavar="B",
                   help="with --triton: largest batch Triton forms (8; 0 = no batching)")
    p.add_argument("--instances", type=positive_int, default=1,
                   help="with --triton: model instances (1)")
    p.add_argument("--kind", choices=("cpu", "gpu"), default="cpu",
                   help="with --triton: instance kind (cpu)")


def add_generate_arguments(p: argparse.ArgumentParser) -> None:
    """`generate --quantize`: decode with quantized weights, report agreement with float32."""
    p.add_argument("--quantize", choices=MODES, default=None,
                   help="decode with int8/int4 weights (quantized here with onnxruntime's "
                   "tools) and report on stderr how many greedy tokens equal float32's")


def quantized_session(args: argparse.Namespace, model: Any, params: Any) -> Any:
    """The quantized decoder for `generate --quantize`: from the .onnx file, or exported."""
    from ..runtime import Session
    from ._common import CLIError

    if args.temperature != 0.0:
        raise CLIError("--quantize compares greedy tokens with float32: leave --temperature 0")
    if args.model.endswith(".onnx"):
        from ..quantize import quantize_file

        return Session(quantize_file(args.model, args.quantize), args.providers)
    if args.target == "reference":
        raise CLIError("--quantize runs in onnxruntime: choose --target ort, onnx or decomposed")
    from .._export import export

    return Session(export(model, params, target=args.target, kv_cache=True,
                          quantize=args.quantize), args.providers)


def agreement(fp32: Any, ids: np.ndarray, mask: np.ndarray, new: list[list[int]],
              args: argparse.Namespace, params: Any = None) -> str:
    """Decode the same prompts greedily with the float32 `fp32`; compare with `new`, the
    quantized model's new tokens per prompt."""
    from ..generation import generate

    want = generate(fp32, ids, args.max_new_tokens, params=params, eos_token_id=args.eos,
                    attention_mask=mask, progress=False)[:, ids.shape[1]:]
    same = total = 0
    first: list[int] = []
    for row, tokens in enumerate(new):
        equal = [a == int(b) for a, b in zip(tokens, want[row])]
        same += sum(equal)
        total += len(equal)
        first.append(equal.index(False) if False in equal else len(equal))
    where = ", ".join(str(f) for f in first)
    return (f"greedy agreement of {args.quantize} with float32: {same}/{total} tokens "
            f"({same / max(total, 1):.0%}); identical for the first {where} token(s)"
            + (" per prompt" if len(first) > 1 else ""))


def write_triton(args: argparse.Namespace, model: Any, params: Mapping[str, np.ndarray],
                 stem: str, export_options: dict[str, Any]) -> None:
    """Write the repository and print one line naming what was written."""
    from ..triton import save_triton

    name = args.name or re.sub(r"[^A-Za-z0-9_.-]", "_", stem)
    batch = args.max_batch_size
    folder = save_triton(model, params, args.triton, name=name, max_batch_size=batch,
                         dynamic_batching=batch > 0, instances=args.instances, kind=args.kind,
                         **export_options)
    quantized = f", {args.quantize} weights" if args.quantize else ""
    print(f"wrote {folder}: config.pbtxt, 1/model.onnx (Triton onnxruntime backend, max batch "
          f"{batch}, {args.instances} {args.kind} instance(s){quantized}); serve it with: "
          f"attngraph serve {os.path.dirname(folder) or '.'}")
