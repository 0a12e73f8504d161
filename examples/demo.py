"""The main job: build the example models, export each for every target into exported/, run
them in onnxruntime, validate against the numpy reference and print one table; then decode
with a key/value cache (gpt, llama, mistral) on every target and check the greedy tokens
against the reference interpreter.

    make demo
"""

from __future__ import annotations

import importlib
import os
import sys
import time

import numpy as np
import onnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _export_util import TARGETS, export_example

import attngraph as ag
from attngraph._table import render
from attngraph._validate import compare

NAMES = ["sliding_window", "hybrid", "hybrid_mlp", "gpt", "bert", "llama", "mistral", "t5"]
EXAMPLES = {name: importlib.import_module(name) for name in NAMES}
FUSED = ("MultiHeadAttention", "GroupQueryAttention", "Attention")


def main() -> int:
    rows = []
    ok = True
    for name, module in EXAMPLES.items():
        model, params = module.build()
        feeds = module.feeds()
        reference = model.predict(params, feeds)
        paths = export_example(name, module.build)
        for target, path in zip(TARGETS, paths):
            graph = onnx.load(path).graph
            fused = sorted({n.op_type for n in graph.node if n.op_type in FUSED})
            n_fused = sum(n.op_type in FUSED for n in graph.node)
            session = ag.Session(path)
            start = time.perf_counter()
            got = session.run(feeds)
            ms = (time.perf_counter() - start) * 1e3
            for out, expected in reference.items():
                check = compare(target, out, got[out], expected, "float32")
                ok &= check.passed
                rows.append((name, target, out, f"{n_fused} x {'/'.join(fused) or '-'}",
                             "x".join(map(str, got[out].shape)), f"{check.max_abs:.1e}",
                             f"{ms:.1f}", "pass" if check.passed else "FAIL"))
    header = ("model", "target", "output", "attention nodes", "shape", "max abs err", "ms",
              "result")
    print()
    print(render(header, rows))
    print(f"\n{'all outputs agree with the reference' if ok else 'SOME OUTPUTS DISAGREE'} "
          f"(fp32 tolerance 1e-4 + 1e-4*|ref|); providers: {', '.join(ag.Session(paths[0]).providers)}")
    ok &= generation()
    return 0 if ok else 1


def generation(new_tokens: int = 24) -> bool:
    """Greedy decoding of a left-padded batch with the KV cache on every target vs the same
    loop in the reference interpreter."""
    prompts = [[5, 17, 3, 42, 8, 11], [60, 2]]
    ids = np.zeros((2, 6), np.int64)
    mask = np.zeros((2, 6), np.int64)
    for row, prompt in enumerate(prompts):
        ids[row, 6 - len(prompt):] = prompt
        mask[row, 6 - len(prompt):] = 1
    rows, ok = [], True
    for name in ("gpt", "llama", "mistral"):
        model, params = EXAMPLES[name].build()
        expected = ag.generate(model, ids, new_tokens, params=params, attention_mask=mask)
        for target in TARGETS:
            session = ag.Session(ag.export(model, params, target=target, kv_cache=True))
            start = time.perf_counter()
            got = ag.generate(session, ids, new_tokens, attention_mask=mask)
            rate = got[:, 6:].size / (time.perf_counter() - start)
            same = bool((got == expected).all())
            ok &= same
            rows.append((name, target, " ".join(map(str, got[1, 6:12])) + " ...",
                         f"{rate:.0f}", "pass" if same else "FAIL"))
    header = ("model", "target", f"row 2 (prompt {prompts[1]})", "tok/s", "tokens = reference")
    print(f"\nKV-cache generation: {new_tokens} greedy tokens, a left-padded batch of 2")
    print(render(header, rows))
    return ok


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    sys.exit(main())
