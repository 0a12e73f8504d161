"""PyTorch `nn.MultiheadAttention` / `nn.TransformerEncoderLayer` / `TransformerDecoderLayer`
weights -> attngraph's layers (numpy only)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..._model import Model
from ._weights import _NORM, _as_arrays, _finish


def _mha_params(arrays: dict[str, np.ndarray], prefix: str, name: str,
                used: set[str], problems: list[str]) -> dict[str, np.ndarray]:
    """nn.MultiheadAttention's parameters under `prefix` -> `{name}.query/key/value/output`."""
    out: dict[str, np.ndarray] = {}
    subs = ("query", "key", "value")
    if f"{prefix}in_proj_weight" in arrays:
        w = arrays[f"{prefix}in_proj_weight"]
        used.add(f"{prefix}in_proj_weight")
        if w.ndim != 2 or w.shape[0] % 3:
            problems.append(f"{prefix}in_proj_weight: expected [3E, E], given {list(w.shape)}")
            return out
        for sub, part in zip(subs, np.split(w, 3, axis=0)):
            out[f"{name}.{sub}.kernel"] = part.T
    else:  # kdim / vdim != embed_dim: separate projections
        for sub, short in zip(subs, "qkv"):
            key = f"{prefix}{short}_proj_weight"
            if key in arrays:
                used.add(key)
                out[f"{name}.{sub}.kernel"] = arrays[key].T
            else:
                problems.append(f"missing {key!r} (or {prefix}in_proj_weight)")
    if f"{prefix}in_proj_bias" in arrays:
        used.add(f"{prefix}in_proj_bias")
        for sub, part in zip(subs, np.split(arrays[f"{prefix}in_proj_bias"], 3)):
            out[f"{name}.{sub}.bias"] = part
    for leaf, target in (("weight", "kernel"), ("bias", "bias")):
        key = f"{prefix}out_proj.{leaf}"
        if key in arrays:
            used.add(key)
            out[f"{name}.output.{target}"] = arrays[key].T if leaf == "weight" else arrays[key]
    for key in (f"{prefix}bias_k", f"{prefix}bias_v"):
        if key in arrays:
            used.add(key)
            problems.append(f"{key!r}: add_bias_kv=True has no attngraph equivalent")
    return out


def _unused(arrays: Mapping[str, np.ndarray], used: set[str], prefix: str) -> list[str]:
    return [f"unmapped {k!r} {list(a.shape)}" for k, a in arrays.items()
            if k.startswith(prefix) and k not in used]


def load_torch_mha(state_dict: Mapping[str, Any], model: Model | None = None, *,
                   name: str, prefix: str = "") -> dict[str, np.ndarray]:
    """`torch.nn.MultiheadAttention` weights -> `ag.multi_head_attention(..., name=name)`.

    `in_proj_weight` [3E, E] splits into the query / key / value kernels (transposed to
    [E, E] each), `in_proj_bias` likewise; `out_proj` becomes `output`. `prefix` selects a
    submodule's keys (e.g. "self_attn."). With `model`, the result is checked against all of
    the model's parameters. Note PyTorch's key_padding_mask is True = ignore, attngraph's is
    True = attend: pass `~mask`.
    """
    who = f"hf.load_torch_mha({name!r})"
    arrays = _as_arrays(state_dict, who)
    used: set[str] = set()
    problems: list[str] = []
    params = _mha_params(arrays, prefix, name, used, problems)
    problems += _unused(arrays, used, prefix)
    return _finish(who, params, problems, model)


def load_torch_transformer_layer(state_dict: Mapping[str, Any], model: Model | None = None, *,
                                 name: str, prefix: str = "") -> dict[str, np.ndarray]:
    """`torch.nn.TransformerEncoderLayer` / `TransformerDecoderLayer` weights ->
    `ag.transformer_block(..., name=name)`.

    self_attn -> `{name}.attn`, multihead_attn -> `{name}.cross_attn`, linear1 / linear2 ->
    `{name}.ffn.up` / `.down`, norm1..3 -> `{name}.norm1..3`. Build the block with the same
    `norm_position` ("pre" for norm_first=True, else "post"), `activation`, `norm_eps`
    (layer_norm_eps) and, for a decoder, `causal=True` (tgt_mask) and `context=memory`.
    """
    who = f"hf.load_torch_transformer_layer({name!r})"
    arrays = _as_arrays(state_dict, who)
    used: set[str] = set()
    problems: list[str] = []
    params = _mha_params(arrays, f"{prefix}self_attn.", f"{name}.attn", used, problems)
    if any(k.startswith(f"{prefix}multihead_attn.") for k in arrays):
        params.update(_mha_params(arrays, f"{prefix}multihead_attn.", f"{name}.cross_attn",
                                  used, problems))
    for torch_name, ag_name in (("linear1", "ffn.up"), ("linear2", "ffn.down"),
                                ("norm1", "norm1"), ("norm2", "norm2"), ("norm3", "norm3")):
        for leaf in ("weight", "bias"):
            key = f"{prefix}{torch_name}.{leaf}"
            if key not in arrays:
                continue
            used.add(key)
            a = arrays[key]
            if torch_name.startswith("linear"):
                params[f"{name}.{ag_name}.{'kernel' if leaf == 'weight' else 'bias'}"] = \
                    a.T if leaf == "weight" else a
            else:
                params[f"{name}.{ag_name}.{_NORM[leaf]}"] = a
    problems += _unused(arrays, used, prefix)
    return _finish(who, params, problems, model)


