"""Edifice.Attention.MultiHead presets, with Edifice's option names and defaults."""

from __future__ import annotations

from typing import Any

from .._checks import Checker
from .._errors import caller_location
from .._model import Model
from ..blocks import transformer_block
from ..layers import (
    add,
    dense,
    input,
    last_timestep,
    layer_norm,
    multi_head_attention,
    positional_encoding,
    relu,
)
from ..layers import dropout as dropout_layer

_DEFAULTS = {"window_size": 60, "num_heads": 4, "head_dim": 64, "num_layers": 2,
             "ffn_dim": 256, "dropout": 0.1}


def recommended_defaults() -> dict[str, Any]:
    """Edifice's defaults for the sliding-window model (embed_dim has no default)."""
    return dict(_DEFAULTS)


def output_size(*, hidden_size: int | None = None, num_heads: int = 4, head_dim: int = 64,
                **_: Any) -> int:
    """Width of the presets' output: hidden_size, else num_heads * head_dim."""
    return hidden_size if hidden_size is not None else num_heads * head_dim


def sliding_window(embed_dim: int, window_size: int = 60, num_heads: int = 4, head_dim: int = 64,
                   num_layers: int = 2, ffn_dim: int = 256, dropout: float = 0.1,
                   hidden_size: int | None = None, seq_len: int | str = "seq") -> Model:
    """Frames [batch, seq, embed_dim] -> [batch, hidden] from the last position.

    Project to hidden (= hidden_size or num_heads * head_dim), add sinusoidal positions, then
    `num_layers` post-norm blocks whose self-attention sees the last `window_size` positions
    (causal sliding window) followed by a feed-forward of `ffn_dim`.
    """
    c = Checker("models.sliding_window", None, caller_location())
    c.pos_int(embed_dim, "embed_dim")
    c.pos_int(window_size, "window_size")
    c.pos_int(num_layers, "num_layers")
    hidden = output_size(hidden_size=hidden_size, num_heads=num_heads, head_dim=head_dim)
    if hidden % num_heads:
        c.fail(f"hidden_size={hidden} must be divisible by num_heads={num_heads}")
    frames = input("input", ("batch", seq_len, embed_dim))
    h = positional_encoding(dense(frames, hidden, name="input_proj"), name="pos")
    for i in range(num_layers):
        h = transformer_block(h, num_heads=num_heads, head_dim=hidden // num_heads,
                              ffn_dim=ffn_dim, window=window_size, norm_position="post",
                              dropout=dropout, name=f"layers.{i}")
    return Model(frames, {"output": last_timestep(h, name="last")}, name="sliding_window")


def attention(**opts: Any) -> Model:
    """Edifice's `build(:attention, opts)`: the sliding-window model."""
    return sliding_window(**opts)


def _hybrid_body(c: Checker, embed_dim: int, lstm_hidden: int, lstm_layers: int,
                 num_heads: int, head_dim: int, dropout: float,
                 window_size: int | None) -> tuple[Any, Any]:
    from ..recurrent import lstm

    if window_size is not None:
        c.pos_int(window_size, "window_size")
    c.pos_int(embed_dim, "embed_dim")
    c.pos_int(lstm_hidden, "lstm_hidden")
    c.pos_int(lstm_layers, "lstm_layers")
    hidden = num_heads * head_dim
    frames = input("input", ("batch", "seq", embed_dim))
    h = lstm(frames, lstm_hidden, num_layers=lstm_layers, name="lstm")
    h = dense(h, hidden, name="lstm_proj")
    a = multi_head_attention(h, num_heads=num_heads, head_dim=head_dim, window=window_size,
                             name="attn")
    h = layer_norm(add(h, dropout_layer(a, dropout, name="attn_drop"), name="attn_res"),
                   name="attn_norm")
    return frames, last_timestep(h, name="last")


def hybrid(embed_dim: int, lstm_hidden: int = 256, lstm_layers: int = 1, num_heads: int = 4,
           head_dim: int = 64, dropout: float = 0.1, window_size: int | None = None) -> Model:
    """Frames -> LSTM -> self-attention (post-norm residual) -> [batch, num_heads * head_dim]
    from the last position: the LSTM captures local patterns, attention long-range ones.

    Only the last position is read, so the attention is evaluated for the last query alone
    (in every export) and the model streams. window_size=None: that query sees every frame
    (a streamed cache grows with the stream); an int W: only the last W frames (a causal
    sliding window; streaming state stays bounded).
    """
    c = Checker("models.hybrid", None, caller_location())
    frames, out = _hybrid_body(c, embed_dim, lstm_hidden, lstm_layers, num_heads, head_dim,
                               dropout, window_size)
    return Model(frames, {"output": out}, name="hybrid")


def hybrid_mlp(embed_dim: int, lstm_hidden: int = 256, lstm_layers: int = 1, num_heads: int = 4,
               head_dim: int = 64, dropout: float = 0.1,
               mlp_sizes: tuple[int, ...] = (256, 256), window_size: int | None = None) -> Model:
    """`hybrid` followed by ReLU MLP layers of `mlp_sizes` (for policy/value heads);
    window_size as in `hybrid`."""
    c = Checker("models.hybrid_mlp", None, caller_location())
    frames, h = _hybrid_body(c, embed_dim, lstm_hidden, lstm_layers, num_heads, head_dim,
                             dropout, window_size)
    for i, size in enumerate(mlp_sizes):
        c.pos_int(size, f"mlp_sizes[{i}]")
        h = relu(dense(h, size, name=f"mlp.{i}"))
    return Model(frames, {"output": h}, name="hybrid_mlp")
