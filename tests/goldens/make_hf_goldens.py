"""Write the PyTorch / Hugging Face goldens for the transformer presets and attention layers.

One small `.npz` per reference module, in this directory:

    hf_gpt2.npz     transformers.GPT2LMHeadModel            -> ag.models.gpt
    hf_bert.npz     transformers.BertModel                  -> ag.models.bert
    hf_t5.npz       transformers.T5ForConditionalGeneration -> ag.models.t5
    hf_llama.npz    transformers.LlamaForCausalLM           -> ag.models.llama
    hf_mistral.npz  transformers.MistralForCausalLM         -> ag.models.mistral
    torch_mha.npz                 torch.nn.MultiheadAttention (self + cross attention)
    torch_encoder_post_relu.npz   torch.nn.TransformerEncoderLayer (norm_first=False, relu)
    torch_encoder_pre_gelu.npz    torch.nn.TransformerEncoderLayer (norm_first=True, gelu)
    torch_decoder_post_gelu.npz   torch.nn.TransformerDecoderLayer (norm_first=False, gelu)
    torch_decoder_pre_relu.npz    torch.nn.TransformerDecoderLayer (norm_first=True, relu)

and one Hugging Face checkpoint folder per family for `from_pretrained`, in hf/ (written by
hf_checkpoints.py: gpt2, bert, t5, llama (sharded), mistral (bf16), qwen2, gemma2, phi3, each
`save_pretrained` output plus a golden.npz with transformers' outputs and greedy tokens; under
2 MB all together). `--checkpoints-only` writes just those.

Each .npz file above holds

    w/<name>      f32   the module's `state_dict()`, exactly as torch gives it (tied weights
                        appear under every name that shares them, as in `state_dict()`)
    in/<name>           the inputs (int64 ids, int64/bool masks, f32 tensors)
    out/<name>    f32   the outputs
    config        str   JSON: the HF config (`config.to_dict()`) or the torch module's options
    defaults      str   JSON: the HF config class's defaults (HF files only)
    param_count   int64 the number of parameters: `model.num_parameters()` for HF (shared
                        tensors counted once, buffers not counted), else
                        `sum(p.numel() for p in module.parameters())`
    versions      str   JSON: the torch and transformers versions that wrote the file

Every model is built from a tiny config, seeded, in eval mode, and then all of its parameters
are re-drawn (std 1/sqrt(fan_in) for projections, 1 for embeddings, 1 +- 0.2 for norm scales,
+-0.1 for biases): Hugging Face's own initialisation gives zero biases, unit norm scales and
near-uniform attention, which would hide a wrong bias, a swapped norm or a wrong attention scale.
Norm epsilons are set to 1e-2 so that a preset that ignored the configured epsilon would fail.
The modules run in float64 from the stored float32 weights (outputs rounded to float32), so the
goldens carry no float32 accumulation noise; a float32 run must agree with it to 1e-3.
Hugging Face models use the "eager" attention implementation.

Only this script needs torch and transformers; the tests read the files with numpy alone.
Run it in a separate environment (never the project's .venv):

    python3 -m venv /tmp/hfvenv
    /tmp/hfvenv/bin/pip install torch transformers numpy   # or 'attngraph[torch]' transformers
    /tmp/hfvenv/bin/python tests/goldens/make_hf_goldens.py [OUT_DIR] [--checkpoints-only]

The files are byte-for-byte reproducible for given torch / transformers versions (fixed zip
timestamps, sorted members). The committed files were written with torch 2.13.0 (CPU) and
transformers 5.23.0.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from hf_checkpoints import (  # the from_pretrained folders (tests/goldens/hf/) and what
    CHECKPOINTS,  # both sets of goldens share
    CLASSES,
    NORM_EPS,
    forward_inputs,
    write_all,
)
from make_goldens import write_npz  # the same byte-stable .npz writer

MAX_BYTES = 200_000

# Tiny configs: GPT-2, BERT and T5 are hf_checkpoints.py's (GPT-2 with 16 positions; T5:
# head_dim (d_kv=8) * num_heads (3) != d_model, 8 buckets with max_distance 8 so both the
# logarithmic buckets and the clamp at max_distance are reached by an 11-token input).
# Llama / Mistral here are their own older, smaller configs: head_dim 16 (hidden 64 / 4 heads)
# with 2 kv heads (GQA), so onnxruntime's fused rotary kernels apply; Mistral's window (4) is
# shorter than its sequence (11). rope_theta: the name transformers < 5 takes and transformers
# 5 turns into rope_parameters.
_DECODER = {"vocab_size": 48, "hidden_size": 64, "intermediate_size": 32,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "rms_norm_eps": NORM_EPS, "rope_theta": 1000.0, "bos_token_id": 0,
            "eos_token_id": 1}
HF_CONFIGS: dict[str, dict[str, Any]] = {
    "gpt2": {**CHECKPOINTS["gpt2"], "n_positions": 16},
    "bert": CHECKPOINTS["bert"],
    "t5": CHECKPOINTS["t5"],
    "llama": dict(_DECODER),
    "mistral": {**_DECODER, "sliding_window": 4},
}
HF_CLASSES = {k: CLASSES[k] for k in HF_CONFIGS}
SEEDS = {"gpt2": 10, "bert": 11, "t5": 12, "llama": 13, "mistral": 14, "torch_mha": 20,
         "torch_encoder_post_relu": 21, "torch_encoder_pre_gelu": 22,
         "torch_decoder_post_gelu": 23, "torch_decoder_pre_relu": 24}
TORCH_LAYERS = {  # name -> (decoder?, norm_first, activation)
    "torch_encoder_post_relu": (False, False, "relu"),
    "torch_encoder_pre_gelu": (False, True, "gelu"),
    "torch_decoder_post_gelu": (True, False, "gelu"),
    "torch_decoder_pre_relu": (True, True, "relu"),
}
EMBED, HEADS, FFN, BATCH = 32, 4, 64, 2
GPT2_CONV1D = ("c_attn", "c_proj", "c_fc")  # GPT-2's Conv1D stores weights as [in, out]


def _randomize(torch: Any, module: Any, seed: int) -> None:
    """Re-draw every parameter (tied ones once) so that every weight matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if p.ndim == 1:
                is_bias = leaf.endswith("bias")
                p.copy_(noise * 0.1 if is_bias else 1.0 + 0.2 * noise)
            elif any(k in name for k in ("embed", "wte", "wpe", "shared", "relative_attention")):
                p.copy_(noise)
            else:
                conv1d = any(f".{k}." in f".{name}" for k in GPT2_CONV1D) and "transformer." in name
                fan_in = p.shape[0] if conv1d else p.shape[1]
                p.copy_(noise / fan_in ** 0.5)


def _state_arrays(module: Any) -> dict[str, np.ndarray]:
    return {f"w/{k}": v.detach().cpu().numpy().astype(np.float32)
            for k, v in module.state_dict().items()}


def _run_both(torch: Any, module: Any, run: Any) -> dict[str, np.ndarray]:
    """Outputs of `run(module, dtype)` in float64 (checked against a float32 run)."""
    with torch.no_grad():
        out32 = {k: v.numpy() for k, v in run(module.float(), torch.float32).items()}
        out64 = {k: v.numpy() for k, v in run(module.double(), torch.float64).items()}
    module.float()
    for k, value in out64.items():
        err = float(np.abs(out32[k] - value).max())
        if not err < 1e-3:
            raise RuntimeError(f"float32 and float64 runs disagree on {k}: {err:.3e}")
    return {f"out/{k}": v.astype(np.float32) for k, v in out64.items()}


def _hf_inputs(kind: str, rng: np.random.Generator, vocab: int) -> dict[str, np.ndarray]:
    if kind in ("bert", "t5"):
        return forward_inputs(kind, rng, vocab)
    seq = 11 if kind == "mistral" else 9
    return {"input_ids": rng.integers(0, vocab, (BATCH, seq))}


def _hf_golden(torch: Any, transformers: Any, kind: str) -> dict[str, np.ndarray]:
    config_name, model_name = HF_CLASSES[kind]
    config_cls = getattr(transformers, config_name)
    config = config_cls(**HF_CONFIGS[kind])
    config._attn_implementation = "eager"
    torch.manual_seed(SEEDS[kind])
    model = getattr(transformers, model_name)(config).eval()
    _randomize(torch, model, SEEDS[kind])
    feeds = _hf_inputs(kind, np.random.default_rng(SEEDS[kind]), config.vocab_size)

    def run(m: Any, dtype: Any) -> dict[str, Any]:
        out = m(**{k: torch.from_numpy(v) for k, v in feeds.items()}, use_cache=False) \
            if kind != "bert" else m(**{k: torch.from_numpy(v) for k, v in feeds.items()})
        if kind == "bert":
            return {"last_hidden_state": out.last_hidden_state, "pooler_output": out.pooler_output}
        return {"logits": out.logits}

    arrays = _state_arrays(model)
    arrays.update(_run_both(torch, model, run))
    arrays.update({f"in/{k}": v for k, v in feeds.items()})
    count = model.num_parameters()
    assert count == sum(p.numel() for p in model.parameters())
    arrays.update(
        config=np.array(json.dumps(config.to_dict(), sort_keys=True, default=str)),
        defaults=np.array(json.dumps(config_cls().to_dict(), sort_keys=True, default=str)),
        param_count=np.array(count, np.int64),
    )
    return arrays


def _causal(torch: Any, n: int) -> Any:
    return torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)  # True = not allowed


def _mha_golden(torch: Any) -> dict[str, np.ndarray]:
    torch.manual_seed(SEEDS["torch_mha"])
    module = torch.nn.MultiheadAttention(EMBED, HEADS, batch_first=True).eval()
    _randomize(torch, module, SEEDS["torch_mha"])
    x = torch.randn(BATCH, 7, EMBED)
    context = torch.randn(BATCH, 5, EMBED)
    pad = torch.zeros(BATCH, 7, dtype=torch.bool)
    pad[1, 5:] = True  # PyTorch convention: True = padding (ignored key)
    ctx_pad = torch.zeros(BATCH, 5, dtype=torch.bool)
    ctx_pad[0, 3:] = True

    def run(m: Any, dtype: Any) -> dict[str, Any]:
        xs, cs = x.to(dtype), context.to(dtype)
        self_out = m(xs, xs, xs, key_padding_mask=pad, attn_mask=_causal(torch, 7),
                     need_weights=False)[0]
        cross_out = m(xs, cs, cs, key_padding_mask=ctx_pad, need_weights=False)[0]
        return {"self": self_out, "cross": cross_out}

    arrays = _state_arrays(module)
    arrays.update(_run_both(torch, module, run))
    arrays.update({"in/x": x.numpy(), "in/context": context.numpy(),
                   "in/key_padding_mask": pad.numpy(), "in/context_padding_mask": ctx_pad.numpy()})
    config = {"module": "MultiheadAttention", "embed_dim": EMBED, "num_heads": HEADS,
              "batch_first": True, "self": "causal attn_mask + key_padding_mask",
              "cross": "key=value=context, key_padding_mask=context_padding_mask"}
    arrays.update(config=np.array(json.dumps(config, sort_keys=True)),
                  param_count=np.array(sum(p.numel() for p in module.parameters()), np.int64))
    return arrays


def _layer_golden(torch: Any, name: str) -> dict[str, np.ndarray]:
    decoder, norm_first, activation = TORCH_LAYERS[name]
    torch.manual_seed(SEEDS[name])
    cls = torch.nn.TransformerDecoderLayer if decoder else torch.nn.TransformerEncoderLayer
    module = cls(EMBED, HEADS, dim_feedforward=FFN, dropout=0.0, activation=activation,
                 batch_first=True, norm_first=norm_first).eval()
    _randomize(torch, module, SEEDS[name])
    x = torch.randn(BATCH, 6 if decoder else 7, EMBED)
    memory = torch.randn(BATCH, 7, EMBED)
    pad = torch.zeros(BATCH, 7, dtype=torch.bool)
    pad[1, 4:] = True  # PyTorch convention: True = padding

    def run(m: Any, dtype: Any) -> dict[str, Any]:
        if decoder:
            out = m(x.to(dtype), memory.to(dtype), tgt_mask=_causal(torch, x.shape[1]),
                    tgt_is_causal=True, memory_key_padding_mask=pad)
        else:
            out = m(x.to(dtype), src_key_padding_mask=pad)
        return {"output": out}

    arrays = _state_arrays(module)
    arrays.update(_run_both(torch, module, run))
    arrays["in/x"] = x.numpy()
    arrays["in/memory_key_padding_mask" if decoder else "in/src_key_padding_mask"] = pad.numpy()
    if decoder:
        arrays["in/memory"] = memory.numpy()
    config = {"module": cls.__name__, "d_model": EMBED, "nhead": HEADS, "dim_feedforward": FFN,
              "activation": activation, "norm_first": norm_first, "layer_norm_eps": 1e-5,
              "batch_first": True}
    arrays.update(config=np.array(json.dumps(config, sort_keys=True)),
                  param_count=np.array(sum(p.numel() for p in module.parameters()), np.int64))
    return arrays


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    flags = [a for a in argv if a.startswith("--")]
    argv = [a for a in argv if not a.startswith("--")]
    try:
        import torch
        import transformers
    except ImportError as exc:
        print(f"make_hf_goldens.py needs PyTorch and transformers ({exc}). Install them in a "
              "separate environment (pip install 'attngraph[torch]' transformers) and run this "
              "script with it; the tests themselves need neither.", file=sys.stderr)
        return 1
    torch.backends.mha.set_fastpath_enabled(False)  # the fast path zeroes padded positions
    transformers.logging.set_verbosity_error()
    out_dir = Path(argv[0]) if argv else Path(__file__).resolve().parent
    out_dir.mkdir(parents=True, exist_ok=True)
    versions = np.array(json.dumps({"torch": torch.__version__.split("+")[0],
                                    "transformers": transformers.__version__}, sort_keys=True))
    goldens: dict[str, Any] = {f"hf_{k}": (lambda k=k: _hf_golden(torch, transformers, k))
                               for k in HF_CONFIGS}
    goldens["torch_mha"] = lambda: _mha_golden(torch)
    goldens.update({k: (lambda k=k: _layer_golden(torch, k)) for k in TORCH_LAYERS})
    if "--checkpoints-only" in flags:
        goldens = {}
    for name, make in goldens.items():
        arrays = make()
        arrays["versions"] = versions
        path = out_dir / f"{name}.npz"
        write_npz(path, arrays)
        size = path.stat().st_size
        print(f"wrote {path} ({size:,} bytes, {int(arrays['param_count']):,} parameters)")
        if size > MAX_BYTES:
            raise RuntimeError(f"{path} is {size:,} bytes > {MAX_BYTES:,}: shrink its config")
    write_all(torch, transformers, out_dir / "hf", _randomize, versions, write_npz)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
