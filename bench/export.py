"""Benchmark export: time and peak memory of writing real-sized models to ONNX.

Cells, each in its own process (peak memory is the process's peak resident set, ru_maxrss,
which counts the pages of memory-mapped files it touched):

    gpt2/attngraph   ag.export of GPT-2 small (124M parameters, random weights in memory),
                     target "ort", one file; the export call is timed
    gpt2/torch       torch.onnx.export(..., dynamo=True) of transformers' GPT2LMHeadModel with
                     the same configuration (random weights); the export call is timed
    llama/write      a TinyLlama-1.1B-shaped checkpoint (hidden 2048, 22 layers, 32 heads, 4
                     key/value heads, MLP 5632, vocabulary 32000; random fp32 weights) written
                     as sharded safetensors with Hugging Face Llama names
    llama/fp32       ag.models.hf.from_pretrained + ag.export(kv_cache=True), float32, external
                     data; from_pretrained and export are timed together
    llama/fp16       the same with dtype="float16" (weights converted while they are written)
    llama/generate   ag.Session of the fp32 export + one ag.generate step (8-token prompt):
                     the memory of running the model, reported apart from the export's
    llama/genai      onnxruntime-genai's model builder (-p fp32 -e cpu) on the same checkpoint,
                     when it and torch are installed

Ratios are of cells measured side by side in one run; the machine may be shared, so times
carry noise, and peak memory divided by the weights' fp32 bytes is the steadier figure.

    flock /tmp/attngraph-bench.lock .venv/bin/python bench/export.py            # all cells
    flock /tmp/attngraph-bench.lock .venv/bin/python bench/export.py --quick    # GPT-2 only

Results: bench/results/export.md and export.json (export_quick.* with --quick).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
GPT2 = {"vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12}
LLAMA = {"vocab_size": 32000, "hidden_size": 2048, "intermediate_size": 5632,
         "num_hidden_layers": 22, "num_attention_heads": 32, "num_key_value_heads": 4,
         "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0}
SHARD_BYTES = 2 << 30
GOALS = {"gpt2_speedup": 10.0, "gpt2_rss": 1.5, "llama_rss": 1.1}


def _peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _children_peak() -> int:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


# -- cells (each runs in a fresh process: `bench/export.py --cell NAME --work DIR`) ----------

def cell_gpt2_attngraph(work: str) -> dict[str, Any]:
    sys.path.insert(0, str(HERE.parent))
    import attngraph as ag

    model = ag.models.gpt(**GPT2)
    params = model.init()
    weights = sum(a.nbytes for a in params.values())
    path = os.path.join(work, "gpt2.onnx")
    start = time.perf_counter()
    ag.export(model, params, path, target="ort", progress=False)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak": _peak(), "weights": weights,
            "file_bytes": os.path.getsize(path)}


def cell_gpt2_torch(work: str) -> dict[str, Any]:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    class Logits(torch.nn.Module):  # input_ids -> logits, as attngraph's export
        def __init__(self) -> None:
            super().__init__()
            self.lm = GPT2LMHeadModel(GPT2Config(**GPT2, use_cache=False)).eval()

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.lm(input_ids=input_ids, use_cache=False).logits

    torch.manual_seed(0)
    model = Logits().eval()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    ids = torch.zeros((1, 8), dtype=torch.int64)
    path = os.path.join(work, "gpt2_torch.onnx")
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    start = time.perf_counter()
    with torch.no_grad():
        torch.onnx.export(model, (ids,), path, dynamo=True, input_names=["input_ids"],
                          dynamic_shapes=({0: batch, 1: seq},))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak": _peak(), "weights": weights,
            "file_bytes": sum(f.stat().st_size for f in Path(work).glob("gpt2_torch.onnx*"))}


def _llama_names(n_layers: int) -> list[tuple[str, tuple[int, ...]]]:
    h, f, v = LLAMA["hidden_size"], LLAMA["intermediate_size"], LLAMA["vocab_size"]
    kv = h // LLAMA["num_attention_heads"] * LLAMA["num_key_value_heads"]
    names = [("model.embed_tokens.weight", (v, h))]
    for i in range(n_layers):
        p = f"model.layers.{i}."
        names += [(p + "input_layernorm.weight", (h,)),
                  (p + "self_attn.q_proj.weight", (h, h)),
                  (p + "self_attn.k_proj.weight", (kv, h)),
                  (p + "self_attn.v_proj.weight", (kv, h)),
                  (p + "self_attn.o_proj.weight", (h, h)),
                  (p + "post_attention_layernorm.weight", (h,)),
                  (p + "mlp.gate_proj.weight", (f, h)),
                  (p + "mlp.up_proj.weight", (f, h)),
                  (p + "mlp.down_proj.weight", (h, f))]
    return names + [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]


def cell_llama_write(work: str) -> dict[str, Any]:
    """Random fp32 weights as HF's save_pretrained lays them out: shards of at most 2 GiB
    and model.safetensors.index.json."""
    import numpy as np
    from safetensors.numpy import save_file

    folder = os.path.join(work, "tinyllama")
    os.makedirs(folder, exist_ok=True)
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):  # a --work folder from an earlier run
        if not os.path.exists(os.path.join(folder, "tokenizer.json")):
            _tokenizer(folder)
        with open(index) as f:
            return {"seconds": 0.0, "peak": _peak(), "reused": True,
                    "weights": json.load(f)["metadata"]["total_size"]}
    rng = np.random.default_rng(0)
    names = _llama_names(LLAMA["num_hidden_layers"])
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in names:
        nbytes = 4 * int(np.prod(shape))
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    weight_map, total = {}, 0
    start = time.perf_counter()
    for k, shard in enumerate(shards):
        file = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        arrays = {}
        for name, shape in shard:
            if name.endswith("norm.weight"):
                arrays[name] = (1 + 0.1 * rng.standard_normal(shape, np.float32))
            else:
                arrays[name] = 0.02 * rng.standard_normal(shape, np.float32)
            weight_map[name] = file
            total += arrays[name].nbytes
        save_file(arrays, os.path.join(folder, file), metadata={"format": "pt"})
        del arrays
    with open(index, "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
              "hidden_act": "silu", "tie_word_embeddings": False, "torch_dtype": "float32",
              "bos_token_id": 1, "eos_token_id": 2, "attention_bias": False,
              "mlp_bias": False, "initializer_range": 0.02, "use_cache": True, **LLAMA}
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    _tokenizer(folder)
    return {"seconds": time.perf_counter() - start, "peak": _peak(), "weights": total,
            "shards": len(shards)}


def _tokenizer(folder: str) -> None:
    """A word-level tokenizer.json over the vocabulary (onnxruntime-genai's builder saves the
    checkpoint's tokenizer beside the model and fails without one)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"w{i}": i for i in range(3, LLAMA["vocab_size"])})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>",
                   "eos_token": "</s>", "unk_token": "<unk>"}, f)


def _llama_export(work: str, dtype: str) -> dict[str, Any]:
    sys.path.insert(0, str(HERE.parent))
    import attngraph as ag

    folder = os.path.join(work, "tinyllama")
    out = os.path.join(work, f"llama_{dtype}")
    os.makedirs(out, exist_ok=True)
    start = time.perf_counter()
    model, params = ag.models.hf.from_pretrained(folder)
    loaded = time.perf_counter() - start
    proto = ag.export(model, params, os.path.join(out, "model.onnx"), target="ort",
                      dtype=dtype, kv_cache=True, progress=False)
    seconds = time.perf_counter() - start
    files = [os.path.join(out, "model.onnx"), *ag._export.data_files(
        proto, os.path.join(out, "model.onnx"))]
    weights = 4 * sum(math.prod(s) for _, s in _llama_names(LLAMA["num_hidden_layers"]))
    return {"seconds": seconds, "load_seconds": loaded, "peak": _peak(), "weights": weights,
            "file_bytes": sum(os.path.getsize(f) for f in files), "files": len(files)}


def cell_llama_fp32(work: str) -> dict[str, Any]:
    return _llama_export(work, "float32")


def cell_llama_fp16(work: str) -> dict[str, Any]:
    return _llama_export(work, "float16")


def cell_llama_generate(work: str) -> dict[str, Any]:
    sys.path.insert(0, str(HERE.parent))
    import numpy as np

    import attngraph as ag

    start = time.perf_counter()
    session = ag.Session(os.path.join(work, "llama_float32", "model.onnx"))
    loaded = time.perf_counter() - start
    prompt = np.random.default_rng(1).integers(3, LLAMA["vocab_size"], (1, 8))
    step = time.perf_counter()
    out = ag.generate(session, prompt, 1, progress=False)
    done = time.perf_counter()
    return {"seconds": done - start, "load_seconds": loaded, "step_seconds": done - step,
            "peak": _peak(), "tokens": out.shape[1] - prompt.shape[1]}


def cell_llama_genai(work: str) -> dict[str, Any]:
    out = os.path.join(work, "llama_genai")
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i",
           os.path.join(work, "tinyllama"), "-o", out, "-p", "fp32", "-e", "cpu",
           "-c", os.path.join(work, "genai_cache")]
    start = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if run.returncode != 0:
        raise RuntimeError(f"model builder failed: {run.stderr[-2000:]}")
    return {"seconds": seconds, "peak": _children_peak(),
            "file_bytes": sum(f.stat().st_size for f in Path(out).glob("model.onnx*"))}


CELLS = {"gpt2/attngraph": cell_gpt2_attngraph, "gpt2/torch": cell_gpt2_torch,
         "llama/write": cell_llama_write, "llama/fp32": cell_llama_fp32,
         "llama/fp16": cell_llama_fp16, "llama/generate": cell_llama_generate,
         "llama/genai": cell_llama_genai}


# -- driver ---------------------------------------------------------------------------------

def _have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _run_cell(name: str, work: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--cell", name, "--work", work]
    run = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if run.returncode != 0:
        return {"error": (run.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(run.stdout.strip().splitlines()[-1])


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _report(results: dict[str, dict[str, Any]], quick: bool) -> str:
    from importlib.metadata import version

    def v(pkg: str) -> str:
        try:
            return version(pkg)
        except Exception:  # noqa: BLE001 - not installed
            return "not installed"

    setup = (f"{_dt.datetime.now(_dt.UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
             f"{os.cpu_count()} cores (shared machine), Python {platform.python_version()}, "
             f"onnx {v('onnx')}, onnxruntime {v('onnxruntime')}, torch {v('torch')}, "
             f"transformers {v('transformers')}, onnxruntime-genai {v('onnxruntime-genai')}.")
    lines = [f"# Export benchmark{' (quick)' if quick else ''}", "", setup,
             "Each cell is its own process; peak = the process's peak resident set.", "",
             "| cell | time | peak memory | peak / fp32 weights | output |",
             "|---|---|---|---|---|"]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error'][:80]} | | | |")
            continue
        weights = r.get("weights") or results.get("llama/write", {}).get("weights")
        ratio = f"{r['peak'] / weights:.2f}x" if weights else ""
        out = _gib(r["file_bytes"]) if "file_bytes" in r else ""
        lines.append(f"| {name} | {r['seconds']:.1f} s | {_gib(r['peak'])} | {ratio} | {out} |")
    lines += ["", "## Goals", ""]
    a, t = results.get("gpt2/attngraph", {}), results.get("gpt2/torch", {})
    if "seconds" in a:
        lines.append(f"- GPT-2 small peak {a['peak'] / a['weights']:.2f}x its weights "
                     f"(goal <= {GOALS['gpt2_rss']}x).")
        if "seconds" in t:
            lines.append(f"- GPT-2 small export {t['seconds'] / a['seconds']:.1f}x faster than "
                         f"torch.onnx dynamo (goal >= {GOALS['gpt2_speedup']:.0f}x).")
        else:
            lines.append("- torch.onnx dynamo: not measured (torch/transformers/onnxscript "
                         "not installed, or it failed).")
    for dtype in ("fp32", "fp16"):
        r = results.get(f"llama/{dtype}", {})
        if "seconds" in r:
            lines.append(f"- TinyLlama shape {dtype} export: peak {r['peak'] / r['weights']:.2f}x "
                         f"the fp32 weights (goal <= {GOALS['llama_rss']}x), {r['seconds']:.1f} s "
                         f"(from_pretrained {r['load_seconds']:.2f} s of it).")
    g, b = results.get("llama/generate", {}), results.get("llama/genai", {})
    if "seconds" in g:
        lines.append(f"- One generate step on the fp32 export (separate process): session "
                     f"{g['load_seconds']:.1f} s, step {g['step_seconds']:.2f} s, peak "
                     f"{_gib(g['peak'])}.")
    f32 = results.get("llama/fp32", {})
    if "seconds" in b and "seconds" in f32:
        lines.append(f"- onnxruntime-genai's builder on the same checkpoint: {b['seconds']:.1f} s, "
                     f"peak {_gib(b['peak'])}; attngraph fp32 export "
                     f"{b['seconds'] / f32['seconds']:.1f}x faster.")
    elif not quick:
        lines.append("- onnxruntime-genai's builder: not measured (needs onnxruntime-genai and "
                     "torch + transformers).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="GPT-2 cells only")
    ap.add_argument("--no-torch", action="store_true", help="skip torch.onnx and the builder")
    ap.add_argument("--work", help="scratch folder (default: a temporary one, removed after)")
    ap.add_argument("--cells", help="comma-separated cells to run, in that order (a re-check; "
                    "results go to export_cells.*)")
    ap.add_argument("--cell", choices=sorted(CELLS), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.cell:
        print(json.dumps(CELLS[args.cell](args.work)))
        return 0
    work = args.work or tempfile.mkdtemp(prefix="attngraph-bench-export-")
    names = ["gpt2/attngraph"]
    torch_ok = not args.no_torch and all(map(_have, ("torch", "transformers", "onnxscript")))
    if torch_ok:
        names.append("gpt2/torch")
    if not args.quick:
        names += ["llama/write", "llama/fp32", "llama/fp16", "llama/generate"]
        if torch_ok and _have("onnxruntime_genai"):
            names.append("llama/genai")
    if args.cells:
        names = args.cells.split(",")
    results: dict[str, dict[str, Any]] = {}
    try:
        outputs = {"llama/fp32": "llama_float32", "llama/genai": "llama_genai"}
        for name in names:
            if name in outputs:  # a repeated cell starts from an empty folder too
                shutil.rmtree(os.path.join(work, outputs[name]), ignore_errors=True)
            runs = sum(k.split(" ")[0] == name for k in results)
            key = f"{name} ({runs + 1})" if runs else name
            results[key] = _run_cell(name, work)
            print(f"{key}: {results[key]}", file=sys.stderr)
            if name.startswith("llama/fp16"):  # free the disk: only the fp32 export is run
                shutil.rmtree(os.path.join(work, "llama_float16"), ignore_errors=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    stem = "export_cells" if args.cells else "export_quick" if args.quick else "export"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    text = _report(results, args.quick)
    (RESULTS / f"{stem}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
