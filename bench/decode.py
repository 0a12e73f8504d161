"""Benchmark autoregressive decoding: tokens/s of `ag.generate` with the KV cache against
recomputing every step, Hugging Face transformers' `generate` and onnxruntime-genai's own loop
on the same file.

Two shapes, batch 1, greedy, the same weights everywhere (made by transformers with seed 0):
    gpt    4-layer, 512-wide GPT-2 (8 heads, MLP 2048, vocabulary 8000, 2112 positions)
    llama  4-layer, 512-wide Llama with GQA (8 query / 2 key-value heads of 64, MLP 1408,
           vocabulary 8000)
    mistral (only with --shapes mistral) the llama shape with a 1024-position sliding window
           on every layer: the shared buffer with GroupQueryAttention's own window
For each context (512, 2048) a prompt of that many tokens is decoded; the prefill and the
first token are excluded, then each following token is timed; tok/s is 1 / the median token
time (robust to a busy spell on a shared machine; the mean is recorded too). Columns:

    cached     ag.generate on `ag.save_genai`'s model.onnx (`export(..., kv_cache=True)`; "ort":
               GroupQueryAttention writing one preallocated shared past/present buffer in place)
    copying    the same with share_buffer=False (the cache is copied into a new present each step)
    recompute  ag.generate on the plain export: each step runs the whole sequence again
    hf         LlamaForCausalLM / GPT2LMHeadModel.generate(use_cache=True), timed from its first
               new token to its last by a streamer
    genai      onnxruntime-genai's Generator on the same model.onnx, share buffer on
    genai_copy the same with past_present_share_buffer false (its other mode)
    floor      the least a cached token can cost here: cached's weight products and its
               GroupQueryAttention kernels over `context` cached positions, and nothing else
               (no norm, activation, rotary, mask, Python), every input bound once (see
               bench/_floor.py); `products` and `grouped` in its json entry: the products alone,
               and the products with the attention done as one product per key/value head
    cached_spin, cached_sleep   (only when asked for) cached with the session's spinning fixed
               on / off instead of "auto"

Every (shape, context, column) cell runs in its own process; --rounds rounds go through every
column in turn and each column keeps its best round (the machine may be shared: a busy spell
then slows every column alike). Figures are ratios of cells measured side by side in one run.

    make bench                                        # everything
    .venv/bin/python bench/decode.py --quick          # context 2048 only
    .venv/bin/python bench/decode.py --quick --shapes mistral --out decode_mistral
    flock /tmp/attngraph-bench.lock .venv/bin/python bench/decode.py
    .venv/bin/python bench/decode.py --quick --load 2 --columns cached,cached_spin,cached_sleep,genai
                                                      # beside two busy processes

Results: bench/results/decode.md and decode.json (decode_quick.* with --quick; not kept).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _floor import Floor, attention_only, floor_model, products_only

import attngraph as ag

SHAPES: dict[str, dict[str, Any]] = {
    "gpt": {"vocab_size": 8000, "n_positions": 2112, "n_embd": 512, "n_layer": 4, "n_head": 8},
    "llama": {"vocab_size": 8000, "hidden_size": 512, "intermediate_size": 1408,
              "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 2},
    # the llama shape with a 1024-position window on every layer (--shapes mistral)
    "mistral": {"vocab_size": 8000, "hidden_size": 512, "intermediate_size": 1408,
                "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 2,
                "sliding_window": 1024},
}
DEFAULT_SHAPES = ("gpt", "llama")
CONTEXTS = (512, 2048)
QUICK_CONTEXTS = (2048,)
# what runs by default: every column in a process of its own; "interleaved" (cached, hf,
# genai and genai_copy token by token in one process) is there to compare under load, and
# cached_spin / cached_sleep (cached with spinning fixed on / off instead of "auto") to see
# what the session's choice is worth
RUNS = ("cached", "copying", "recompute", "hf", "genai", "genai_copy", "floor")
COLUMNS = (*RUNS, "cached_spin", "cached_sleep")
NEW_TOKENS = 32
GOAL_CONTEXT = 2048
GOALS = {"recompute": 10.0, "hf": 2.5, "genai": 1.2}  # cached / column, at GOAL_CONTEXT
BUDGET_S = 6.0  # time allowed for the recompute baseline per cell


# -- one cell (a subprocess) -------------------------------------------------------------------


def hf_model(shape: str) -> tuple[Any, ag.Model, dict[str, np.ndarray]]:
    """The transformers model of SHAPES[shape] (seed 0), the attngraph model and its params
    (without torch / transformers: None and model.init(seed=0); the hf column then fails)."""
    cfg = SHAPES[shape]
    try:
        import torch
        import transformers as tf
    except ImportError:
        model = getattr(ag.models, shape)(**cfg)
        return None, model, model.init(seed=0)

    from attngraph.models.hf import load_hf_weights

    torch.manual_seed(0)
    if shape == "gpt":
        config = tf.GPT2Config(**cfg, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                               bos_token_id=0, eos_token_id=0)
        hf = tf.GPT2LMHeadModel(config).eval()
        model = ag.models.gpt(**cfg)
    else:
        config_cls, model_cls = {"llama": (tf.LlamaConfig, tf.LlamaForCausalLM),
                                 "mistral": (tf.MistralConfig, tf.MistralForCausalLM)}[shape]
        config = config_cls(**cfg, max_position_embeddings=4096, bos_token_id=0, eos_token_id=0,
                            tie_word_embeddings=False)
        hf = model_cls(config).eval()
        model = getattr(ag.models, shape)(**cfg)
    state = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    return hf, model, load_hf_weights(shape, state, model)


def timed_ag(source: Any, prompt: np.ndarray, n: int) -> list[float]:
    """Seconds of each of n tokens after the prefill and first token."""
    stream = ag.generate_stream(source, prompt, n + 1, progress=False)
    next(stream)
    times = [time.perf_counter()]
    for _ in stream:
        times.append(time.perf_counter())
    assert len(times) == n + 1
    return list(np.diff(times))


def timed_hf(model: Any, prompt: np.ndarray, n: int) -> list[float]:
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
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n + 1,
                       min_new_tokens=n + 1, do_sample=False, use_cache=True, pad_token_id=0,
                       streamer=clock)
    assert len(clock.times) == n + 2
    return list(np.diff(clock.times[1:]))


def timed_genai(folder: str, prompt: np.ndarray, n: int) -> tuple[list[float], list[int]]:
    import onnxruntime_genai as og

    model = og.Model(folder)
    params = og.GeneratorParams(model)
    total = prompt.shape[1] + n + 1
    params.set_search_options(max_length=total, min_length=total)  # eos never ends it early
    generator = og.Generator(model, params)
    generator.append_tokens(prompt)
    generator.generate_next_token()
    times = [time.perf_counter()]
    for _ in range(n):
        generator.generate_next_token()
        times.append(time.perf_counter())
    return list(np.diff(times)), [int(t) for t in generator.get_sequence(0)[prompt.shape[1]:]]


def floor_cell(ctx: int, folder: str, threads: int) -> dict[str, Any]:
    """tok/s of the floor (products + the file's attention kernels), of the products alone and
    of the products with grouped attention, each timed alone after a warm-up."""
    import onnx

    path = os.path.join(folder, "model.onnx")
    spinning = ag.Session(path, threads=threads or None).spinning  # what cached would choose
    proto = onnx.load(path)
    products = products_only(proto)
    out: dict[str, Any] = {"spinning": spinning}
    for name, parts in (("tok_s", (products, attention_only(proto, ctx, "gqa"))),
                        ("products_tok_s", (products,)),
                        ("grouped_tok_s", (products, attention_only(proto, ctx, "grouped")))):
        floor = Floor(floor_model(*parts), threads or None, spinning, ctx)
        for _ in range(20):
            floor.run()
        steps = []
        for _ in range(200):
            start = time.perf_counter()
            floor.run()
            steps.append(time.perf_counter() - start)
        out[name] = 1.0 / float(np.median(steps))
        del floor
    out["weight_bytes"] = sum(len(t.raw_data) for t in products[3])
    return out


def cell(shape: str, ctx: int, column: str, folder: str, threads: int) -> dict[str, Any]:
    if column == "floor":
        return floor_cell(ctx, folder, threads)
    hf, model, params = hf_model(shape)
    if hf is not None and threads:
        import torch

        torch.set_num_threads(threads)
    prompt = np.random.default_rng(ctx).integers(0, 8000, (1, ctx))
    out: dict[str, Any] = {}
    n = NEW_TOKENS
    if column in ("cached", "copying", "cached_spin", "cached_sleep"):
        spinning = {"cached_spin": True, "cached_sleep": False}.get(column, "auto")
        source: Any = ag.Session(
            ag.export(model, params, kv_cache=True, share_buffer=False) if column == "copying"
            else os.path.join(folder, "model.onnx"), threads=threads or None, spinning=spinning)
        out["spinning"] = source.spinning
        out["shared"] = source.metadata.get("attngraph.share_buffer")
        run = lambda: timed_ag(source, prompt, n)
        out["tokens"] = ag.generate(source, prompt, 16)[0, ctx:].tolist()
    elif column == "recompute":
        source = ag.Session(ag.export(model, params), threads=threads or None)
        one = timed_ag(source, prompt, 1)[0]
        n = int(max(3, min(NEW_TOKENS, BUDGET_S / max(one, 1e-6))))
        run = lambda: timed_ag(source, prompt, n)
    elif column == "hf":
        if hf is None:
            raise SystemExit("torch / transformers not installed (pip install -e '.[torch]')")
        run = lambda: timed_hf(hf, prompt, n)
        import torch

        with torch.no_grad():
            ids = torch.from_numpy(prompt)
            out["tokens"] = hf.generate(ids, attention_mask=torch.ones_like(ids),
                                        max_new_tokens=16, do_sample=False,
                                        pad_token_id=0)[0, ctx:].tolist()
    else:
        sub = os.path.join(folder, column)
        ag.save_genai(model, params, sub, share_buffer=column == "genai", eos_token_id=0,
                      context_length=ctx + NEW_TOKENS + 8)
        if threads:
            path = os.path.join(sub, "genai_config.json")
            config = json.loads(Path(path).read_text())
            config["model"]["decoder"]["session_options"]["intra_op_num_threads"] = threads
            Path(path).write_text(json.dumps(config))
        out["tokens"] = timed_genai(sub, prompt, 15)[1]
        run = lambda: timed_genai(sub, prompt, n)[0]
    steps = np.array(run())
    # the median token: robust to a busy spell on a shared machine; the mean as well
    out.update(tok_s=1.0 / float(np.median(steps)), mean_tok_s=n / float(steps.sum()),
               tokens_timed=n)
    return out


def interleaved(shape: str, ctx: int, _: str, folder: str, threads: int) -> dict[str, Any]:
    """cached, hf, genai and genai_copy in one process, token by token: transformers' generate
    runs, and each time its streamer receives a token, one ag.generate step and one step of
    each onnxruntime-genai generator run inside the callback. Every engine's token then sees
    the same moment of the machine; transformers' token time is the gap between callbacks
    minus the time spent inside them."""
    import onnxruntime_genai as og
    import torch
    from transformers.generation.streamers import BaseStreamer

    hf, model, params = hf_model(shape)
    if threads:
        torch.set_num_threads(threads)
    prompt = np.random.default_rng(ctx).integers(0, 8000, (1, ctx))
    n = NEW_TOKENS
    total = ctx + n + 2
    gens = {}
    for column, share in (("genai", True), ("genai_copy", False)):
        sub = os.path.join(folder, column)
        ag.save_genai(model, params, sub, share_buffer=share, eos_token_id=0,
                      context_length=total)
        if threads:
            path = Path(sub, "genai_config.json")
            config = json.loads(path.read_text())
            config["model"]["decoder"]["session_options"]["intra_op_num_threads"] = threads
            path.write_text(json.dumps(config))
        gm = og.Model(sub)
        gp = og.GeneratorParams(gm)
        gp.set_search_options(max_length=total, min_length=total)
        gens[column] = (gm, og.Generator(gm, gp))
    session = ag.Session(os.path.join(folder, "model.onnx"), threads=threads or None)
    stream = ag.generate_stream(session, prompt, n + 2, progress=False)
    steps: dict[str, list[float]] = {"cached": [], "hf": [], "genai": [], "genai_copy": []}
    tokens: dict[str, list[int]] = {"cached": [], "hf": []}

    def step_others(first: bool) -> None:
        t = time.perf_counter()
        tokens["cached"].append(int(next(stream)[0]))
        steps["cached"].append(time.perf_counter() - t)
        for column, (_, gen) in gens.items():
            t = time.perf_counter()
            if first:
                gen.append_tokens(prompt)
            gen.generate_next_token()
            steps[column].append(time.perf_counter() - t)

    class Clock(BaseStreamer):  # type: ignore[misc]
        def __init__(self) -> None:
            self.calls, self.resumed = 0, 0.0

        def put(self, value: Any) -> None:  # the prompt, then one call per new token
            now = time.perf_counter()
            if self.calls >= 2:  # after the prefill and first token: hf's token time
                steps["hf"].append(now - self.resumed)
            if self.calls >= 1:
                tokens["hf"].append(int(value.reshape(-1)[-1]))
                step_others(first=self.calls == 1)
            self.calls += 1
            self.resumed = time.perf_counter()

        def end(self) -> None:
            pass

    ids = torch.from_numpy(prompt)
    with torch.no_grad():
        hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n + 1,
                    min_new_tokens=n + 1, do_sample=False, use_cache=True, pad_token_id=0,
                    streamer=Clock())
    out: dict[str, Any] = {}
    for column, times in steps.items():
        times = times[-n:] if column == "hf" else times[1:]  # drop the prefill step
        t = np.array(times)
        out[column] = {"tok_s": 1.0 / float(np.median(t)), "mean_tok_s": len(t) / float(t.sum()),
                       "tokens_timed": len(t)}
    out["cached"]["tokens"] = tokens["cached"][:16]
    out["hf"]["tokens"] = tokens["hf"][:16]
    for column, (_, gen) in gens.items():
        out[column]["tokens"] = [int(x) for x in gen.get_sequence(0)[ctx:ctx + 16]]
    return out


# -- the driver --------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="context 2048 only")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shapes", default=",".join(DEFAULT_SHAPES),
                        help="of " + ", ".join(SHAPES))
    parser.add_argument("--columns", default=",".join(RUNS), help="cells, each in its "
                        "own process: " + ", ".join(COLUMNS) + ", or interleaved (cached, hf, "
                        "genai and genai_copy token by token in one process)")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads for every "
                        "engine (0: each engine's default); 1 is steadier on a busy machine")
    parser.add_argument("--load", type=int, default=0, help="busy processes kept running "
                        "beside every cell (a machine shared with other work)")
    parser.add_argument("--out", help="results name (default decode, decode_quick)")
    parser.add_argument("--cell", help=argparse.SUPPRESS)  # shape,ctx,column,folder,threads
    args = parser.parse_args()
    if args.cell:
        shape, ctx, column, folder, threads = args.cell.split(",", 4)
        run = interleaved if column == "interleaved" else cell
        print(json.dumps(run(shape, int(ctx), column, folder, int(threads))))
        return 0
    contexts = QUICK_CONTEXTS if args.quick else CONTEXTS
    rounds = args.rounds
    columns = args.columns.split(",")
    rows = []
    with tempfile.TemporaryDirectory(prefix="ag-decode-") as tmp, busy(args.load):
        for shape in args.shapes.split(","):
            for ctx in contexts:
                folder = os.path.join(tmp, f"{shape}{ctx}")
                _, model, params = hf_model(shape)
                ag.save_genai(model, params, folder, eos_token_id=0,
                              context_length=ctx + NEW_TOKENS + 8)  # the file every column runs
                row: dict[str, Any] = {"shape": shape, "context": ctx, "rounds": []}
                for _ in range(rounds):  # rounds outermost: a busy spell hits every column
                    this: dict[str, float] = {}
                    for column in columns:
                        got = run_cell(shape, ctx, column, folder, args.threads)
                        print(json.dumps({"shape": shape, "context": ctx, column: got}),
                              flush=True)
                        for name, value in (got.items() if column == "interleaved"
                                            else [(column, got)]):
                            if "tok_s" in value:
                                this[name] = value["tok_s"]
                            if value.get("tok_s", 0) > row.get(name, {}).get("tok_s", -1):
                                row[name] = value
                    row["rounds"].append(this)  # tok/s of every column in this round
                rows.append(summarise(row))
    write(args.out or ("decode_quick" if args.quick else "decode"), rows, args.threads,
          args.load)
    return 0


@contextlib.contextmanager
def busy(count: int) -> Iterator[None]:
    """`count` processes that keep a CPU each busy until the block ends (each also stops when
    this process is gone, or after a day)."""
    loop = ("import os, time\nparent, end = os.getppid(), time.monotonic() + 86400\n"
            "while os.getppid() == parent and time.monotonic() < end: pass")
    hogs = [subprocess.Popen([sys.executable, "-c", loop]) for _ in range(count)]
    try:
        time.sleep(0.5 if hogs else 0)
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def run_cell(shape: str, ctx: int, column: str, folder: str, threads: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--cell", f"{shape},{ctx},{column},{folder},{threads}"]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
    if done.returncode:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1][:200]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarise(row: dict[str, Any]) -> dict[str, Any]:
    cached = row.get("cached", {}).get("tok_s")
    for column in COLUMNS[1:]:
        other = row.get(column, {}).get("tok_s")
        if cached and other:
            row[f"cached_vs_{column}"] = cached / other
    ours = row.get("cached", {}).get("tokens")
    for column in ("hf", "genai", "genai_copy"):
        theirs = row.get(column, {}).get("tokens")
        if ours is not None and theirs is not None:
            row[f"same_tokens_{column}"] = ours == theirs
    return row


def write(name: str, rows: list[dict[str, Any]], threads: int, load: int) -> None:
    import importlib

    import onnxruntime

    def version(name: str) -> str:
        try:
            return str(importlib.import_module(name).__version__)
        except ImportError:
            return "not installed"

    env = {"date": _dt.date.today().isoformat(), "machine": platform.machine(),
           "processor": platform.processor() or platform.platform(), "cpus": os.cpu_count(),
           "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
           "onnxruntime_genai": version("onnxruntime_genai"), "torch": version("torch"),
           "transformers": version("transformers"), "attngraph": ag.__version__,
           "shapes": {k: SHAPES[k] for k in dict.fromkeys(r["shape"] for r in rows)},
           "new_tokens": NEW_TOKENS, "threads": threads or "default",
           "busy_processes": load}
    columns = [c for c in COLUMNS if any(c in r for r in rows)]
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps({"env": env, "rows": rows}, indent=1) + "\n")
    lines = [
        "# Decoding speed: ag.generate vs recompute, transformers and onnxruntime-genai", "",
        f"Batch 1, greedy, CPU, {env['cpus']} cores; onnxruntime {env['onnxruntime']}, "
        f"onnxruntime-genai {env['onnxruntime_genai']}, torch {env['torch']}, transformers "
        f"{env['transformers']}; {env['date']}; intra-op threads: {env['threads']}; "
        f"{load} busy process(es) beside every cell. Decode "
        "tokens/s after the prefill and first "
        "token, each cell in its own process (best of rounds). Shapes: "
        + "; ".join(f"{k} {v}" for k, v in env["shapes"].items()) + ".", "",
        "| shape | context | " + " | ".join(f"{c} tok/s" for c in columns)
        + " | cached / recompute | cached / hf | cached / genai | cached / genai_copy "
          "| same greedy tokens (hf, genai) |",
        "|---|---|" + "---|" * (len(columns) + 5),
    ]
    for r in rows:
        cells = [f"{r[c]['tok_s']:.1f}" if "tok_s" in r.get(c, {}) else
                 r.get(c, {}).get("error", "-") for c in columns]
        ratios = [f"{r[k]:.2f}x" if k in r else "-" for k in
                  ("cached_vs_recompute", "cached_vs_hf", "cached_vs_genai",
                   "cached_vs_genai_copy")]
        same = ", ".join({True: "yes", False: "no"}.get(r.get(f"same_tokens_{c}"), "-")
                         for c in ("hf", "genai"))
        lines.append(f"| {r['shape']} | {r['context']} | " + " | ".join(cells + ratios)
                     + f" | {same} |")
    lines.append("")
    chose = [f"{r['shape']} @ {r['context']}: {'spin' if r['cached']['spinning'] else 'sleep'}"
             for r in rows if "spinning" in r.get("cached", {})]
    if chose:
        lines += ["cached's session chose (spinning=\"auto\"): " + "; ".join(chose) + ".", ""]
    for r in rows:
        if r["context"] != GOAL_CONTEXT:
            continue
        for column, goal in GOALS.items():
            ratios = [r[k] for k in (f"cached_vs_{column}", f"cached_vs_{column}_copy")
                      if k in r]
            if column == "genai":  # against genai's fastest mode
                ratios = [min(ratios)] if ratios else []
            if ratios:
                met = "met" if ratios[0] >= goal else "NOT met"
                lines.append(f"- Goal {r['shape']} @ {GOAL_CONTEXT}: cached >= {goal}x "
                             f"{column}: {ratios[0]:.2f}x, {met}.")
    for r in rows:  # paired rounds: the table keeps each column's best, these show the spread
        paired = [x for x in r.get("rounds", []) if "cached" in x and "hf" in x]
        if r["context"] == GOAL_CONTEXT and len(paired) > 1:
            median = (float(np.median([x["cached"] for x in paired]))
                      / float(np.median([x["hf"] for x in paired])))
            lines.append(
                f"- Rounds {r['shape']} @ {GOAL_CONTEXT}: cached / hf in each round "
                + ", ".join(f"{x['cached'] / x['hf']:.2f}x ({x['cached']:.0f} / {x['hf']:.0f})"
                            for x in paired)
                + f"; median against median {median:.2f}x.")
    for r in rows:
        floor, hf = r.get("floor", {}), r.get("hf", {})
        if r["context"] == GOAL_CONTEXT and "tok_s" in floor and "tok_s" in r.get("cached", {}):
            allows = f"; floor / hf {floor['tok_s'] / hf['tok_s']:.2f}x" if "tok_s" in hf else ""
            lines.append(
                f"- Floor {r['shape']} @ {GOAL_CONTEXT}: {floor['tok_s']:.1f} tok/s, cached "
                f"reaches {r['cached_vs_floor']:.0%} of it{allows} (the most cached / hf could "
                f"be with onnxruntime's attention kernel); products alone "
                f"{floor['products_tok_s']:.1f} tok/s ({floor['weight_bytes'] / 2**20:.1f} MiB), "
                f"products + grouped attention {floor['grouped_tok_s']:.1f} tok/s.")
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / (name + '.md')}")


if __name__ == "__main__":
    sys.exit(main())
