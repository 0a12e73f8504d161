"""`attngraph generate MODEL --prompt IDS`: decode tokens with a key/value cache."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np

from .._export import export
from .._registry import TARGETS
from ..runtime import Session
from . import _deploy
from ._common import SPEC_HELP, info, positive_int, providers, token_ids, verbosity
from ._load import model_and_params, require_file

EXAMPLE = 'generate out/decoder.onnx --prompt "5 17 3" -n 32'
HELP = "generate tokens from prompts with a key/value cache"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The command's options."""
    p.add_argument("model", metavar="MODEL", help="a cached decoder .onnx (export --kv-cache), "
                   "or " + SPEC_HELP)
    p.add_argument("--prompt", action="append", required=True, metavar="IDS",
                   help="token ids, e.g. '5 17 3' (repeat for a batch; shorter prompts are "
                   "left-padded)")
    p.add_argument("-n", "--max-new-tokens", type=positive_int, default=20)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=positive_int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--eos", type=int, default=None, metavar="ID", help="stop token")
    p.add_argument("--seed", type=int, default=0, help="seed for init and sampling (0)")
    p.add_argument("--params", metavar="PARAMS", help="parameters for a FILE.py model")
    p.add_argument("--target", choices=("reference", *TARGETS), default="ort",
                   help="for a FILE.py model: export target, or the numpy reference")
    p.add_argument("--providers", type=providers, default=None, metavar="EP,...")
    _deploy.add_generate_arguments(p)


def run(args: argparse.Namespace) -> int:
    """Generate from one or more prompts; tokens stream to stdout as they come (one line per
    prompt), speed goes to stderr."""
    from ..generation import generate_stream

    prompts = [token_ids(text) for text in args.prompt]
    width = max(len(p) for p in prompts)
    ids = np.zeros((len(prompts), width), np.int64)
    mask = np.zeros((len(prompts), width), np.int64)
    for row, prompt in enumerate(prompts):  # left padding
        ids[row, width - len(prompt):] = prompt
        mask[row, width - len(prompt):] = 1
    model = weights = None
    if args.model.endswith(".onnx"):
        require_file(args.model, "the .onnx decoder")
        source: Any = Session(args.model, args.providers)
        params = None
    else:
        model, params = model_and_params(args)
        weights = params
        if args.target == "reference":
            source = model
        else:
            source = Session(export(model, params, target=args.target, kv_cache=True),
                             args.providers)
            params = None
    fp32 = None
    if args.quantize is not None:  # decode with quantized weights, then compare with float32
        fp32, source = source, _deploy.quantized_session(args, model, weights)
    # One prompt streams its tokens to stdout as they come; on a terminal those tokens are the
    # progress, and a bar on the same screen would overwrite them. Otherwise (a batch, printed
    # at the end, or stdout redirected) a bar may show on stderr when that is a terminal; it is
    # cleared before anything is printed.
    streaming = len(prompts) == 1
    progress = None if verbosity() >= 1 and not (streaming and sys.stdout.isatty()) else False
    stream = generate_stream(source, ids, args.max_new_tokens, params=params,
                             temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                             seed=args.seed, eos_token_id=args.eos, attention_mask=mask,
                             progress=progress)
    start, steps, rows = time.perf_counter(), 0, [list(p) for p in prompts]
    try:
        for tokens in stream:
            steps += 1
            for row, token in enumerate(tokens):
                rows[row].append(int(token))
            if streaming:
                head = "" if steps > 1 else " ".join(map(str, prompts[0])) + " |"
                print(f"{head} {tokens[0]}", end="", flush=True)
    except KeyboardInterrupt:
        if streaming and steps:
            print(flush=True)  # end the partial line of tokens
        raise
    elapsed = time.perf_counter() - start
    if streaming:
        print()
    else:
        for tokens_of_row in rows:
            print(" ".join(map(str, tokens_of_row)))
    sys.stdout.flush()
    info(f"{steps} step(s) x {len(prompts)} prompt(s) in {elapsed:.3f} s "
         f"({steps * len(prompts) / max(elapsed, 1e-9):.1f} tok/s)")
    if fp32 is not None:
        info(_deploy.agreement(fp32, ids, mask, [r[len(p):] for r, p in zip(rows, prompts)],
                               args))
    return 0

