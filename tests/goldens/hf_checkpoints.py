"""Checkpoint folders and goldens for `ag.models.hf.from_pretrained` (run by make_hf_goldens.py).

This module is also the one place for what both sets of Hugging Face goldens share: the norm
epsilon, the GPT-2 / BERT / T5 configs (`CHECKPOINTS`; make_hf_goldens.py's `hf_*.npz` files use
the same ones, GPT-2 with fewer positions), the config and model classes (`CLASSES`) and the
BERT / T5 forward inputs (`forward_inputs`).

For each family one folder `tests/goldens/hf/<name>/`, exactly what `save_pretrained` writes
(config.json, generation_config.json, model.safetensors or shards + index), plus `golden.npz`:

    in/<name>        the inputs of one forward pass (int64)
    out/<name>  f32  transformers' outputs for them (eager attention, float64 run)
    prompt      i64  [2, P] a prompt (decoder LMs only)
    greedy      i64  [2, P + N] the prompt + the N tokens of transformers' greedy `generate`
    defaults    str  JSON: the config class's defaults (`XConfig().to_dict()`)
    margin      f64  the smallest gap between the best and second-best logit over the greedy
                     steps (float64): a float32 run picks the same tokens when it is far above
                     the float32 error
    versions    str  JSON: torch and transformers versions

Weights are re-drawn after construction (see make_hf_goldens._randomize) so that a dropped
bias, norm or scale shows. llama is sharded (max_shard_size 80KB) and uses "llama3" rope
scaling with original_max_position_embeddings 64, so the scaled frequencies are reached; mistral
is stored in bfloat16 (its golden comes from the bf16-rounded weights run in float64); qwen2
uses "linear" scaling, biased q/k/v, a tied head and a window on layers >= max_window_layers;
gemma2 has both soft-caps small enough to bite, a window of 4 (shorter than the 9-token prompt)
on layers 0 and 2, query_pre_attn_scalar != head_dim and head_dim != hidden / heads; phi3 has
partial rotary (factor 0.5) and a window on every layer.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

NORM_EPS = 1e-2
_BASE = {"vocab_size": 64, "hidden_size": 64, "intermediate_size": 32, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": NORM_EPS,
         "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 0}
CHECKPOINTS: dict[str, dict[str, Any]] = {
    "gpt2": {"vocab_size": 100, "n_positions": 32, "n_embd": 32, "n_layer": 2, "n_head": 4,
             "layer_norm_epsilon": NORM_EPS, "bos_token_id": 0, "eos_token_id": 0},
    "bert": {"vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2,
             "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 16,
             "type_vocab_size": 2, "layer_norm_eps": NORM_EPS},
    "t5": {"vocab_size": 64, "d_model": 32, "d_kv": 8, "d_ff": 48, "num_layers": 2,
           "num_decoder_layers": 2, "num_heads": 3, "relative_attention_num_buckets": 8,
           "relative_attention_max_distance": 8, "layer_norm_epsilon": NORM_EPS},
    "llama": {**_BASE, "rope_parameters": {
        "rope_type": "llama3", "rope_theta": 1000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64}},
    "mistral": {**_BASE, "sliding_window": 4,
                "rope_parameters": {"rope_type": "default", "rope_theta": 1000.0}},
    "qwen2": {**_BASE, "num_hidden_layers": 3, "use_sliding_window": True, "sliding_window": 4,
              "max_window_layers": 1, "tie_word_embeddings": True,
              "rope_parameters": {"rope_type": "linear", "rope_theta": 1000.0, "factor": 2.0}},
    "gemma2": {**_BASE, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 3,
               "head_dim": 16, "query_pre_attn_scalar": 24, "sliding_window": 4,
               "attn_logit_softcapping": 4.0, "final_logit_softcapping": 8.0,
               "rope_parameters": {"rope_type": "default", "rope_theta": 1000.0}},
    "phi3": {**_BASE, "sliding_window": 5, "pad_token_id": 0,
             "rope_parameters": {"rope_type": "default", "rope_theta": 1000.0,
                                 "partial_rotary_factor": 0.5}},
}
CLASSES = {"gpt2": ("GPT2Config", "GPT2LMHeadModel"), "bert": ("BertConfig", "BertModel"),
           "t5": ("T5Config", "T5ForConditionalGeneration"),
           "llama": ("LlamaConfig", "LlamaForCausalLM"),
           "mistral": ("MistralConfig", "MistralForCausalLM"),
           "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
           "gemma2": ("Gemma2Config", "Gemma2ForCausalLM"),
           "phi3": ("Phi3Config", "Phi3ForCausalLM")}
SEEDS = {"gpt2": 30, "bert": 31, "t5": 32, "llama": 33, "mistral": 34, "qwen2": 35,
         "gemma2": 36, "phi3": 37}
SHARDED, BF16 = "llama", "mistral"
# Tied heads score h . E with h dominated by the current token's own embedding, so greedy
# decoding repeats the last token forever; smaller embeddings let the layers decide.
TIED_SMALL = {"gpt2": 0.2, "qwen2": 0.2, "gemma2": 0.05}
MIN_DISTINCT = 4  # new tokens per greedy row, so the recorded tokens say something
PROMPT, NEW = 9, 8
MIN_MARGIN = 1e-3
MAX_TOTAL = 2_000_000


def forward_inputs(name: str, rng: np.random.Generator, vocab: int) -> dict[str, np.ndarray]:
    """The inputs of one forward pass: BERT and T5 with right padding in the second row, the
    decoder LMs 11 token ids."""
    if name == "bert":
        ids = rng.integers(1, vocab, (2, 9))
        mask = np.ones((2, 9), np.int64)
        mask[1, 6:] = 0
        ids[mask == 0] = 0
        types = np.zeros((2, 9), np.int64)
        types[:, 4:] = 1
        return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}
    if name == "t5":
        ids = rng.integers(2, vocab, (2, 11))
        mask = np.ones((2, 11), np.int64)
        mask[1, 7:] = 0
        ids[mask == 0] = 0
        dec = rng.integers(2, vocab, (2, 7))
        dec[:, 0] = 0
        return {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dec}
    return {"input_ids": rng.integers(2, vocab, (2, 11))}


def _greedy(torch: Any, model: Any, rng: np.random.Generator, vocab: int
            ) -> dict[str, np.ndarray]:
    """transformers' greedy generate from a 2 x PROMPT prompt; re-drawn until every step's
    best logit leads the second by MIN_MARGIN (so float32 picks the same tokens) and each row
    has MIN_DISTINCT different new tokens."""
    model.generation_config.eos_token_id = None  # always NEW tokens
    model.generation_config.pad_token_id = 0
    for _ in range(20):
        prompt = rng.integers(2, vocab, (2, PROMPT))
        with torch.no_grad():
            out = model.generate(torch.from_numpy(prompt), max_new_tokens=NEW, do_sample=False,
                                 min_new_tokens=NEW)
            full = model(out, use_cache=False).logits.numpy()  # recompute: same tokens?
        tokens = out.numpy()
        steps = full[:, PROMPT - 1:-1]  # the logits that picked each new token
        if not (steps.argmax(-1) == tokens[:, PROMPT:]).all():
            raise RuntimeError("generate's tokens differ from the argmax of a full forward")
        top2 = np.sort(steps, axis=-1)[..., -2:]
        margin = float((top2[..., 1] - top2[..., 0]).min())
        distinct = min(len(set(row)) for row in tokens[:, PROMPT:].tolist())
        if margin >= MIN_MARGIN and distinct >= MIN_DISTINCT:
            return {"prompt": prompt, "greedy": tokens, "margin": np.array(margin)}
    raise RuntimeError(f"no prompt with a clear greedy margin and {MIN_DISTINCT} distinct new "
                       f"tokens in 20 draws")


def write_checkpoint(torch: Any, transformers: Any, name: str, root: Path,
                     randomize: Any, versions: np.ndarray, write_npz: Any) -> int:
    """Write tests/goldens/hf/<name>/; returns the folder's size in bytes."""
    config_name, model_name = CLASSES[name]
    config = getattr(transformers, config_name)(**CHECKPOINTS[name])
    config._attn_implementation = "eager"
    torch.manual_seed(SEEDS[name])
    model = getattr(transformers, model_name)(config).eval()
    randomize(torch, model, SEEDS[name])
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if name == "gemma2" and pname.endswith("norm.weight"):
                p.sub_(1.0)  # Gemma's norms scale by 1 + w: keep 1 + w near 1 (w near 0)
            if name in TIED_SMALL and pname.endswith(("embed_tokens.weight", "wte.weight")):
                p.mul_(TIED_SMALL[name])
    folder = root / name
    shutil.rmtree(folder, ignore_errors=True)
    if name == BF16:  # save a bf16 copy; run the same rounded weights with float32 buffers
        copy.deepcopy(model).to(torch.bfloat16).save_pretrained(folder)  # (rotary inv_freq
        with torch.no_grad():                                # stays float32, as on loading)
            for p in model.parameters():
                p.copy_(p.to(torch.bfloat16).to(p.dtype))
    else:
        model.save_pretrained(folder, max_shard_size="80KB" if name == SHARDED else "50GB")
    model.double()  # float64 run of the stored weights
    rng = np.random.default_rng(SEEDS[name])
    feeds = forward_inputs(name, rng, config.vocab_size)
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in feeds.items()},
                    **({} if name == "bert" else {"use_cache": False}))
    arrays: dict[str, np.ndarray] = {f"in/{k}": v for k, v in feeds.items()}
    if name == "bert":
        arrays["out/last_hidden_state"] = out.last_hidden_state.numpy().astype(np.float32)
        arrays["out/pooler_output"] = out.pooler_output.numpy().astype(np.float32)
    else:
        arrays["out/logits"] = out.logits.numpy().astype(np.float32)
    if name not in ("bert", "t5"):
        arrays.update(_greedy(torch, model, rng, config.vocab_size))
    defaults = getattr(transformers, config_name)().to_dict()  # the config class's defaults
    arrays["defaults"] = np.array(json.dumps(defaults, sort_keys=True, default=str))
    arrays["versions"] = versions
    write_npz(folder / "golden.npz", arrays)
    return sum(f.stat().st_size for f in folder.iterdir())


def write_all(torch: Any, transformers: Any, root: Path, randomize: Any, versions: np.ndarray,
              write_npz: Any) -> None:
    total = 0
    for name in CHECKPOINTS:
        size = write_checkpoint(torch, transformers, name, root, randomize, versions, write_npz)
        files = sorted(f.name for f in (root / name).iterdir())
        print(f"wrote {root / name}/ ({size:,} bytes: {', '.join(files)})")
        total += size
    print(f"checkpoint folders: {total:,} bytes")
    if total > MAX_TOTAL:
        raise RuntimeError(f"checkpoint folders take {total:,} bytes > {MAX_TOTAL:,}")
