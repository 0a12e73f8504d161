"""Hugging Face checkpoints and PyTorch weights for attngraph's presets and layers (numpy only).

    from attngraph.models import hf
    model, params = hf.from_pretrained("path/to/checkpoint")  # config.json + safetensors
    model.predict(params, {"input_ids": ids})["logits"]      # == transformers' logits

    model = hf.build_preset("llama", hf_model.config.to_dict())  # from a state dict instead
    params = hf.load_hf_weights("llama", state_dict, model)

Families (config.json `model_type`): gpt2, bert, t5, llama, mistral, qwen2, gemma2, phi3.
`from_pretrained` memory-maps the safetensors files: parameters stored in the requested dtype
are never copied, the others are converted one tensor at a time when read (see
`CheckpointParams`). Every setting a family cannot express is a ConfigError naming its key;
every weight problem is listed in one ParamError.
"""

from __future__ import annotations

from ._config import ALIASES, DECODERS, KINDS, build_preset, preset_kwargs, rope_settings
from ._pretrained import MODEL_TYPES, CheckpointParams, from_pretrained, read_config
from ._safetensors import bf16_to_f32, read_safetensors
from ._torch import load_torch_mha, load_torch_transformer_layer
from ._weights import load_hf_weights

__all__ = ["ALIASES", "DECODERS", "KINDS", "MODEL_TYPES", "CheckpointParams", "bf16_to_f32",
           "build_preset", "from_pretrained", "load_hf_weights", "load_torch_mha",
           "load_torch_transformer_layer", "preset_kwargs", "read_config", "read_safetensors",
           "rope_settings"]
