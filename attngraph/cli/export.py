"""`attngraph export FILE.py -o OUT.onnx`: write the model as an ONNX file."""

from __future__ import annotations

import argparse
import os

from .._export import data_files, export
from .._export._builder import all_nodes
from .._registry import TARGETS
from . import _deploy
from ._common import CLIError, human_size, model_options, verbosity
from ._hf import folder_name, is_hf
from ._load import model_and_params, split_spec

EXAMPLE = ("export model.py -o out/model.onnx --target ort   (or: export hf:DIR --kv-cache; "
           "export model.py --streaming)")
HELP = "export a model to an ONNX file"
FUSED_ATTENTION_OPS = frozenset({"MultiHeadAttention", "GroupQueryAttention", "Attention"})


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The command's options."""
    model_options(p, params=True)
    p.add_argument("-o", "--output", metavar="OUT.onnx", help="default: the model file's or "
                   "checkpoint folder's name + .onnx, here (none when only --genai or --triton is given)")
    p.add_argument("--target", choices=TARGETS, default="ort")
    p.add_argument("--opset", type=int, default=None, help="default: 23 (ort, onnx), 17 "
                   "(decomposed)")
    p.add_argument("--kv-cache", action="store_true", help="export a decoder with a key/value "
                   "cache (past_key_values / present inputs and outputs)")
    p.add_argument("--streaming", action="store_true", help="export a step model: the next "
                   "chunk of frames and per-layer state in, the chunk's outputs and new state "
                   "out (run it with `attngraph stream`)")
    p.add_argument("--share-buffer", choices=("auto", "on", "off"), default="auto",
                   help="with --kv-cache / --genai: one preallocated past/present buffer per "
                   "layer updated in place (auto: where the export supports it)")
    p.add_argument("--genai", metavar="DIR", help="write an onnxruntime-genai folder "
                   "(model.onnx, genai_config.json) for a causal language model")
    p.add_argument("--tokenizer", metavar="DIR", help="with --genai: copy this folder's "
                   "tokenizer files; its generation_config.json gives bos/eos/pad ids")
    _deploy.add_arguments(p)


def run(args: argparse.Namespace) -> int:
    """Export to ONNX and print one line: path, target, opset, nodes, fused attention, size."""
    if args.tokenizer is not None and args.genai is None:
        raise CLIError("--tokenizer goes with --genai DIR")
    share = {"auto": None, "on": True, "off": False}[args.share_buffer]
    model, params = model_and_params(args)
    if args.genai is not None:
        from ..genai import save_genai

        folder = save_genai(model, params, args.genai, target=args.target, dtype=args.dtype,
                            tokenizer=args.tokenizer, opset=args.opset, share_buffer=share,
                            quantize=args.quantize)
        config = os.path.join(folder, "genai_config.json")
        with open(config) as f:
            shared = '"past_present_share_buffer": true' in f.read()
        print(f"wrote {folder}: model.onnx, genai_config.json (share buffer "
              f"{'on' if shared else 'off'})" + (", tokenizer files" if args.tokenizer else ""))
        if args.output is None and args.triton is None:
            return 0
    stem = folder_name(args.model) if is_hf(args.model) else \
        os.path.splitext(os.path.basename(split_spec(args.model)[0]))[0]
    if args.triton is not None:
        _deploy.write_triton(args, model, params, stem, {
            "target": args.target, "opset": args.opset, "dtype": args.dtype,
            "kv_cache": args.kv_cache, "share_buffer": share if args.kv_cache else None,
            "streaming": args.streaming, "quantize": args.quantize})
        if args.output is None:
            return 0
    if args.output is None:
        args.output = f"{stem}.onnx"
    proto = export(model, params, args.output, target=args.target, opset=args.opset,
                   dtype=args.dtype, kv_cache=args.kv_cache,
                   share_buffer=share if args.kv_cache else None, streaming=args.streaming,
                   quantize=args.quantize, progress=None if verbosity() else False)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    fused = sum(n.op_type in FUSED_ATTENTION_OPS for n in all_nodes(proto.graph))  # + Scan bodies
    size = os.path.getsize(args.output)
    size += sum(os.path.getsize(f) for f in data_files(proto, args.output))
    print(f"wrote {args.output}: target {args.target}, opset {opset}, "
          f"{len(proto.graph.node)} nodes, {fused} fused attention, {human_size(size)}"
          + (" (step model)" if args.streaming else "")
          + (f", {args.quantize} weights" if args.quantize else ""))
    return 0
