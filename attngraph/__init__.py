"""attngraph: describe attention models in Python, check them in numpy, export fused ONNX.

    import attngraph as ag
    x = ag.input("x", ("batch", "seq", 64))
    y = ag.multi_head_attention(x, num_heads=4, causal=True)
    model = ag.Model(x, y)
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import models
from . import ops as _ops  # noqa: F401  (registers every op)
from ._errors import (
    AttnGraphError,
    ConfigError,
    ExportError,
    FeedError,
    GraphError,
    ParamError,
    ShapeError,
    UnsupportedError,
)
from ._export import export
from ._graph import Value
from ._model import Model
from ._params import load_params, save_params
from ._stream import Stream
from ._types import TensorType
from ._validate import ValidationReport, validate
from .analysis import AttentionReport, analyze, plot_attention
from .blocks import feed_forward, transformer_block
from .cost import AttentionCost, attention_cost
from .factory import attention_module, get_attention, process_sequence
from .genai import save_genai
from .generation import generate, generate_stream
from .importance import HeadImportance, head_importance
from .layers import (
    add,
    concatenate,
    dense,
    dropout,
    embedding,
    gelu,
    input,
    last_timestep,
    layer_norm,
    mean_pool,
    multi_head_attention,
    multiply,
    positional_encoding,
    relu,
    rms_norm,
    scale,
    scaled_dot_product_attention,
    sigmoid,
    silu,
    softmax,
    tanh,
    tied_projection,
    timestep,
)
from .patterns import (
    block_sparse_mask,
    block_sparse_pattern,
    causal_mask,
    strided_mask,
    strided_pattern,
    window_mask,
)
from .position import alibi_bias, relative_position_bias
from .recurrent import gru, lstm
from .runtime import RuntimeFailure, Session
from .triton import save_triton

__all__ = [
    "AttentionCost",
    "AttentionReport",
    "AttnGraphError",
    "ConfigError",
    "ExportError",
    "FeedError",
    "GraphError",
    "HeadImportance",
    "Model",
    "ParamError",
    "RuntimeFailure",
    "Session",
    "ShapeError",
    "Stream",
    "TensorType",
    "UnsupportedError",
    "ValidationReport",
    "Value",
    "__version__",
    "add",
    "alibi_bias",
    "analyze",
    "attention_cost",
    "attention_module",
    "block_sparse_mask",
    "block_sparse_pattern",
    "causal_mask",
    "concatenate",
    "dense",
    "dropout",
    "embedding",
    "export",
    "feed_forward",
    "gelu",
    "generate",
    "generate_stream",
    "get_attention",
    "gru",
    "head_importance",
    "input",
    "last_timestep",
    "layer_norm",
    "load_params",
    "lstm",
    "mean_pool",
    "models",
    "multi_head_attention",
    "multiply",
    "plot_attention",
    "positional_encoding",
    "process_sequence",
    "relative_position_bias",
    "relu",
    "rms_norm",
    "save_genai",
    "save_params",
    "save_triton",
    "scale",
    "scaled_dot_product_attention",
    "sigmoid",
    "silu",
    "softmax",
    "strided_mask",
    "strided_pattern",
    "tanh",
    "tied_projection",
    "timestep",
    "transformer_block",
    "validate",
    "window_mask",
]
