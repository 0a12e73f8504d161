"""Benchmark autoregressive decoding: tokens/s with the KV cache vs recomputing every step,
and against Hugging Face transformers' `generate` when torch and transformers are installed.

The model is a 4-layer, 512-wide GPT-2 (8 heads, MLP 2048, vocabulary 8000, 2112 positions),
batch 1, greedy. For each context length (128, 512, 2048) a prompt of that many tokens is
decoded; the prefill and the first token are excluded, then the following tokens are timed:

    cached     ag.generate on `export(..., kv_cache=True)` ("ort": GroupQueryAttention with
               its cache, kept on the device by I/O binding)
    recompute  ag.generate on the plain export: each step runs the whole sequence again
    hf         GPT2LMHeadModel.generate(use_cache=True) on the same weights (same threads),
               timed from its first new token to its last by a streamer

    make bench                                  # everything
    .venv/bin/python bench/decode.py --quick    # contexts 128 and 512

Results: bench/results/decode.md and decode.json (decode_quick.* with --quick). Figures are
ratios of runs made side by side in one process; the best of --rounds rounds is kept because
the machine may be shared.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import attngraph as ag

CONFIG = {"vocab_size": 8000, "n_positions": 2112, "n_embd": 512, "n_layer": 4, "n_head": 8}
CONTEXTS = (128, 512, 2048)
QUICK_CONTEXTS = (128, 512)
NEW_TOKENS = 32
GOAL_SPEEDUP, GOAL_CONTEXT, GOAL_HF = 10.0, 2048, 1.5
BUDGET_S = 6.0  # time allowed for the recompute baseline per context


def timed_decode(source: Any, prompt: np.ndarray, n: int) -> float:
    """Seconds for n tokens after the prefill and first token."""
    stream = ag.generate_stream(source, prompt, n + 1, progress=False)
    next(stream)
    start = time.perf_counter()
    count = sum(1 for _ in stream)
    assert count == n
    return time.perf_counter() - start


def hf_model(params_out: dict[str, Any]) -> Any:
    """GPT2LMHeadModel of CONFIG; fills params_out with the same weights for attngraph."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from attngraph.models.hf import load_hf_weights

    torch.manual_seed(0)
    config = GPT2Config(**CONFIG, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config).eval()
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    params_out.update(load_hf_weights("gpt", state, ag.models.gpt(**CONFIG)))
    return model


def hf_decode(model: Any, prompt: np.ndarray, n: int) -> tuple[float, np.ndarray]:
    """Seconds for n tokens after the prefill and first token (timed by a streamer that
    generate calls once per token), and the generated ids."""
    import torch
    from transformers.generation.streamers import BaseStreamer

    class Clock(BaseStreamer):  # type: ignore[misc]
        def __init__(self) -> None:
            self.times: list[float] = []

        def put(self, value: Any) -> None:  # the prompt, then one call per new token
            self.times.append(time.perf_counter())

        def end(self) -> None:
            pass

    ids = torch.from_numpy(prompt)
    clock = Clock()
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n + 1,
                             min_new_tokens=n + 1, do_sample=False, use_cache=True,
                             pad_token_id=0, streamer=clock)
    assert len(clock.times) == n + 2
    return clock.times[-1] - clock.times[1], out.numpy()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="contexts 128 and 512 only")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-torch", action="store_true", help="skip the transformers column")
    args = parser.parse_args()
    contexts = QUICK_CONTEXTS if args.quick else CONTEXTS
    name = "decode_quick" if args.quick else "decode"

    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
        has_hf = not args.no_torch
    except ImportError:
        has_hf = False
    model = ag.models.gpt(**CONFIG)
    params: dict[str, Any] = {}
    hf = hf_model(params) if has_hf else None
    if not params:
        params = model.init(seed=0)
    cached = ag.Session(ag.export(model, params, target="ort", kv_cache=True))
    plain = ag.Session(ag.export(model, params, target="ort"))
    rng = np.random.default_rng(0)
    rows = []
    for ctx in contexts:
        prompt = rng.integers(0, CONFIG["vocab_size"], (1, ctx))
        one = timed_decode(plain, prompt, 1)
        n_plain = int(max(2, min(NEW_TOKENS, BUDGET_S / max(one, 1e-6))))
        best: dict[str, float] = {}
        for _ in range(args.rounds):
            times = {"cached": timed_decode(cached, prompt, NEW_TOKENS) / NEW_TOKENS,
                     "recompute": timed_decode(plain, prompt, n_plain) / n_plain}
            if hf is not None:
                times["hf"] = hf_decode(hf, prompt, NEW_TOKENS)[0] / NEW_TOKENS
            best = {k: min(v, best.get(k, np.inf)) for k, v in times.items()}
        row: dict[str, Any] = {"context": ctx, "recompute_tokens": n_plain,
                               **{f"{k}_tok_s": 1.0 / v for k, v in best.items()}}
        row["speedup"] = row["cached_tok_s"] / row["recompute_tok_s"]
        if hf is not None:
            row["vs_hf"] = row["cached_tok_s"] / row["hf_tok_s"]
            ours = ag.generate(cached, prompt, 16)
            row["same_tokens_as_hf"] = bool((ours == hf_decode(hf, prompt, 15)[1]).all())
        rows.append(row)
        print(json.dumps(row), flush=True)
    write(name, rows, has_hf)
    return 0


def write(name: str, rows: list[dict[str, Any]], has_hf: bool) -> None:
    import onnxruntime

    env = {"date": _dt.date.today().isoformat(), "machine": platform.machine(),
           "processor": platform.processor() or platform.platform(), "cpus": os.cpu_count(),
           "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
           "attngraph": ag.__version__, "config": CONFIG, "new_tokens": NEW_TOKENS}
    if has_hf:
        import torch
        import transformers

        env.update(torch=torch.__version__, transformers=transformers.__version__)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps({"env": env, "rows": rows}, indent=1) + "\n")
    lines = [
        "# Decoding speed: KV cache vs recompute" + (" vs transformers" if has_hf else ""),
        "",
        f"GPT-2 shape {CONFIG}, batch 1, greedy, CPU, {env['cpus']} cores, onnxruntime "
        f"{env['onnxruntime']}" + (f", torch {env.get('torch')}, transformers "
                                   f"{env.get('transformers')}" if has_hf else "") +
        f", {env['date']}. Decode tokens/s after the prefill (best of rounds, one run).",
        "",
        "| context | cached tok/s | recompute tok/s | cached / recompute |"
        + (" transformers tok/s | cached / transformers | same greedy tokens |" if has_hf
           else ""),
        "|---|---|---|---|" + ("---|---|---|" if has_hf else ""),
    ]
    for r in rows:
        line = (f"| {r['context']} | {r['cached_tok_s']:.1f} | {r['recompute_tok_s']:.2f} "
                f"| {r['speedup']:.1f}x |")
        if has_hf:
            line += (f" {r['hf_tok_s']:.1f} | {r['vs_hf']:.2f}x | "
                     f"{'yes' if r['same_tokens_as_hf'] else 'no'} |")
        lines.append(line)
    lines.append("")
    goal_rows = [r for r in rows if r["context"] == GOAL_CONTEXT]
    if goal_rows:
        met = goal_rows[0]["speedup"] >= GOAL_SPEEDUP
        lines.append(f"- Goal: cached >= {GOAL_SPEEDUP:.0f}x recompute at context "
                     f"{GOAL_CONTEXT}: {goal_rows[0]['speedup']:.1f}x, "
                     f"{'met' if met else 'NOT met'}.")
    if has_hf:
        worst = min(r["vs_hf"] for r in rows)
        lines.append(f"- Goal: >= {GOAL_HF}x transformers' tokens/s: lowest ratio "
                     f"{worst:.2f}x, {'met' if worst >= GOAL_HF else 'NOT met'}.")
    else:
        lines.append("- transformers column: torch / transformers not installed "
                     "(pip install -e '.[torch]').")
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / (name + '.md')}")


if __name__ == "__main__":
    sys.exit(main())
