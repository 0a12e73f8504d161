"""Transformer families (BERT, GPT-2, T5, Llama, Mistral, Qwen2, Gemma 2, Phi-3) built from attngraph's builders,
with Hugging Face's configuration names and defaults."""

from __future__ import annotations

import math
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from .._checks import Checker
from .._errors import caller_location
from .._graph import Value
from .._model import Model
from ..blocks import feed_forward, transformer_block
from ..layers import (
    add,
    dense,
    embedding,
    gelu,
    input,
    layer_norm,
    multi_head_attention,
    multiply,
    positional_encoding,
    rms_norm,
    scale,
    tanh,
    tied_projection,
    timestep,
)
from ..position import relative_position_bias


def _check(op: str, **ints: int) -> Checker:
    c = Checker(f"models.{op}", None, caller_location())
    for key, value in ints.items():
        c.pos_int(value, key)
    return c


def gpt(vocab_size: int = 50257, n_positions: int = 1024, n_embd: int = 768, n_layer: int = 12,
        n_head: int = 12, n_inner: int | None = None, layer_norm_epsilon: float = 1e-5) -> Model:
    """GPT-2: token + learned position embeddings, pre-norm causal blocks (GELU-tanh MLP of
    n_inner = 4 n_embd), a final layer norm and an LM head tied to the token embeddings.
    input_ids [batch, seq] -> logits [batch, seq, vocab_size]."""
    _check("gpt", vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd,
           n_layer=n_layer, n_head=n_head)
    ids = input("input_ids", ("batch", "seq"), "int64")
    wte = embedding(ids, vocab_size, n_embd, name="wte")
    h = positional_encoding(wte, "learned", max_len=n_positions, name="wpe")
    for i in range(n_layer):
        h = transformer_block(h, num_heads=n_head, ffn_dim=n_inner or 4 * n_embd, causal=True,
                              activation="gelu_tanh", norm_eps=layer_norm_epsilon, name=f"h.{i}")
    h = layer_norm(h, epsilon=layer_norm_epsilon, name="ln_f")
    return Model(ids, {"logits": tied_projection(h, wte, name="lm_head")}, name="gpt")


def bert(vocab_size: int = 30522, hidden_size: int = 768, num_hidden_layers: int = 12,
         num_attention_heads: int = 12, intermediate_size: int = 3072,
         max_position_embeddings: int = 512, type_vocab_size: int = 2,
         layer_norm_eps: float = 1e-12) -> Model:
    """BERT: token + position + segment embeddings with a layer norm, post-norm bidirectional
    encoder (GELU), and a pooler (dense + tanh on position 0).
    (input_ids, token_type_ids, attention_mask [batch, seq]) ->
    last_hidden_state [batch, seq, hidden], pooler_output [batch, hidden]."""
    _check("bert", vocab_size=vocab_size, hidden_size=hidden_size,
           num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads)
    ids = input("input_ids", ("batch", "seq"), "int64")
    types = input("token_type_ids", ("batch", "seq"), "int64")
    mask = input("attention_mask", ("batch", "seq"), "int64")
    h = embedding(ids, vocab_size, hidden_size, name="embeddings.word_embeddings")
    h = positional_encoding(h, "learned", max_len=max_position_embeddings,
                            name="embeddings.position_embeddings")
    h = add(h, embedding(types, type_vocab_size, hidden_size,
                         name="embeddings.token_type_embeddings"), name="embeddings.sum")
    h = layer_norm(h, epsilon=layer_norm_eps, name="embeddings.LayerNorm")
    for i in range(num_hidden_layers):
        h = transformer_block(h, num_heads=num_attention_heads, ffn_dim=intermediate_size,
                              key_padding_mask=mask, norm_position="post",
                              norm_eps=layer_norm_eps, name=f"encoder.layer.{i}")
    pooled = tanh(dense(timestep(h, 0, name="cls"), hidden_size, name="pooler.dense"))
    return Model([ids, types, mask], {"last_hidden_state": h, "pooler_output": pooled},
                 name="bert")


def layer_windows(op: str, num_layers: int, sliding_window: int | None,
                  layer_types: list[str] | None, sliding: Callable[[int], bool]) -> list[int | None]:
    """Each layer's window: `sliding_window` on the layers that `layer_types` marks
    "sliding_attention" when given, else on those `sliding(i)` picks (the family's own rule in
    transformers); None (full causal attention) elsewhere and when sliding_window is None."""
    c = _check(op, num_hidden_layers=num_layers)
    c.pos_int(sliding_window, "sliding_window", optional=True)
    if layer_types is not None:
        kinds = ("full_attention", "sliding_attention")
        if not isinstance(layer_types, (list, tuple)) or len(layer_types) != num_layers or \
                any(t not in kinds for t in layer_types):
            c.fail(f"layer_types must list {num_layers} of {kinds}, given {layer_types!r}")
        picked = [t == "sliding_attention" for t in layer_types]
    else:
        picked = [sliding(i) for i in range(num_layers)]
    return [sliding_window if p else None for p in picked]


def _lm_head(h: Value, emb: Value, vocab_size: int, tied: bool) -> Value:
    if tied:
        return tied_projection(h, emb, name="lm_head")
    return dense(h, vocab_size, use_bias=False, name="lm_head")


def llama(vocab_size: int = 32000, hidden_size: int = 4096, intermediate_size: int = 11008,
          num_hidden_layers: int = 32, num_attention_heads: int = 32,
          num_key_value_heads: int | None = None, rms_norm_eps: float = 1e-6,
          rope_theta: float = 10000.0, sliding_window: int | None = None,
          name: str = "llama", *, head_dim: int | None = None,
          rope_scaling: dict[str, Any] | None = None, tie_word_embeddings: bool = False,
          layer_types: list[str] | None = None, partial_rotary_factor: float = 1.0) -> Model:
    """Llama: token embeddings, pre-norm (RMSNorm) causal blocks with RoPE, grouped-query
    attention and a SwiGLU MLP, no biases, a final RMSNorm and an LM head (untied unless
    tie_word_embeddings). rope_scaling: "linear" or "llama3" (see `multi_head_attention`).
    sliding_window applies to every layer unless `layer_types` says otherwise.
    input_ids [batch, seq] -> logits [batch, seq, vocab_size]."""
    c = _check(name, vocab_size=vocab_size, hidden_size=hidden_size,
               num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads)
    windows = layer_windows(name, num_hidden_layers, sliding_window, layer_types,
                            lambda i: True)
    d = head_dim or hidden_size // num_attention_heads
    c.number(partial_rotary_factor, "partial_rotary_factor", lo=0.0, hi=1.0)
    rotary = None if partial_rotary_factor == 1.0 else int(d * partial_rotary_factor)
    ids = input("input_ids", ("batch", "seq"), "int64")
    emb = embedding(ids, vocab_size, hidden_size, name="embed_tokens")
    h = emb
    for i in range(num_hidden_layers):
        h = transformer_block(h, num_heads=num_attention_heads, num_kv_heads=num_key_value_heads,
                              ffn_dim=intermediate_size, causal=True, window=windows[i],
                              norm="rms", norm_eps=rms_norm_eps, activation="swiglu", rope=True,
                              rope_base=rope_theta, use_bias=False, head_dim=head_dim,
                              rotary_dim=rotary, rope_scaling=rope_scaling, name=f"layers.{i}")
    h = rms_norm(h, epsilon=rms_norm_eps, name="norm")
    return Model(ids, {"logits": _lm_head(h, emb, vocab_size, tie_word_embeddings)}, name=name)


def mistral(vocab_size: int = 32000, hidden_size: int = 4096, intermediate_size: int = 14336,
            num_hidden_layers: int = 32, num_attention_heads: int = 32,
            num_key_value_heads: int = 8, rms_norm_eps: float = 1e-6,
            rope_theta: float = 10000.0, sliding_window: int | None = 4096, **options: Any
            ) -> Model:
    """Mistral: Llama with a causal sliding window of `sliding_window` positions (the last
    `sliding_window` keys including the query, as in Hugging Face's masks) on every layer
    (transformers' rule: Mistral configs carry no `layer_types`; when one does, it is
    followed). Defaults are MistralConfig's: rms_norm_eps=1e-6 (released checkpoints set their
    own, e.g. 1e-5). `options`: llama's keyword-only options."""
    return llama(vocab_size, hidden_size, intermediate_size, num_hidden_layers,
                 num_attention_heads, num_key_value_heads, rms_norm_eps, rope_theta,
                 sliding_window, name="mistral", **options)


def phi3(vocab_size: int = 32064, hidden_size: int = 3072, intermediate_size: int = 8192,
         num_hidden_layers: int = 32, num_attention_heads: int = 32,
         num_key_value_heads: int | None = None, rms_norm_eps: float = 1e-5,
         rope_theta: float = 10000.0, sliding_window: int | None = None,
         partial_rotary_factor: float = 1.0, **options: Any) -> Model:
    """Phi-3: the Llama architecture (its packed `qkv_proj` and `gate_up_proj` weights are
    split on loading), RoPE on the first head_dim * partial_rotary_factor dims of each head,
    and `sliding_window` (when set) on every layer. `options`: llama's keyword-only options."""
    return llama(vocab_size, hidden_size, intermediate_size, num_hidden_layers,
                 num_attention_heads, num_key_value_heads, rms_norm_eps, rope_theta,
                 sliding_window, name="phi3", partial_rotary_factor=partial_rotary_factor,
                 **options)


def qwen2(vocab_size: int = 151936, hidden_size: int = 4096, intermediate_size: int = 22016,
          num_hidden_layers: int = 32, num_attention_heads: int = 32,
          num_key_value_heads: int | None = 32, rms_norm_eps: float = 1e-6,
          rope_theta: float = 10000.0, use_sliding_window: bool = False,
          sliding_window: int | None = 4096, max_window_layers: int = 28,
          tie_word_embeddings: bool = False, layer_types: list[str] | None = None,
          rope_scaling: dict[str, Any] | None = None) -> Model:
    """Qwen2: Llama with biases on the query, key and value projections (not the output).
    The window applies only with use_sliding_window=True (a `sliding_window` value alone means
    full attention), on the layers `layer_types` marks, else on layers >= max_window_layers.
    input_ids [batch, seq] -> logits [batch, seq, vocab_size]."""
    c = _check("qwen2", vocab_size=vocab_size, hidden_size=hidden_size,
               num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads)
    c.flag(use_sliding_window, "use_sliding_window")
    windows = layer_windows("qwen2", num_hidden_layers,
                            sliding_window if use_sliding_window else None, layer_types,
                            lambda i: i >= max_window_layers)
    ids = input("input_ids", ("batch", "seq"), "int64")
    emb = embedding(ids, vocab_size, hidden_size, name="embed_tokens")
    h = emb
    for i in range(num_hidden_layers):
        a = multi_head_attention(
            rms_norm(h, epsilon=rms_norm_eps, name=f"layers.{i}.norm1"),
            num_heads=num_attention_heads, num_kv_heads=num_key_value_heads, causal=True,
            window=windows[i], rope=True, rope_base=rope_theta, rope_scaling=rope_scaling,
            use_bias=True, output_bias=False, name=f"layers.{i}.attn")
        h = add(h, a, name=f"layers.{i}.res1")
        f = feed_forward(rms_norm(h, epsilon=rms_norm_eps, name=f"layers.{i}.norm2"),
                         intermediate_size, activation="swiglu", use_bias=False,
                         name=f"layers.{i}.ffn")
        h = add(h, f, name=f"layers.{i}.res2")
    h = rms_norm(h, epsilon=rms_norm_eps, name="norm")
    return Model(ids, {"logits": _lm_head(h, emb, vocab_size, tie_word_embeddings)},
                 name="qwen2")


def gemma2(vocab_size: int = 256000, hidden_size: int = 2304, intermediate_size: int = 9216,
           num_hidden_layers: int = 26, num_attention_heads: int = 8,
           num_key_value_heads: int = 4, head_dim: int = 256, rms_norm_eps: float = 1e-6,
           rope_theta: float = 10000.0, attention_bias: bool = False,
           query_pre_attn_scalar: float = 256, sliding_window: int | None = 4096,
           layer_types: list[str] | None = None, final_logit_softcapping: float | None = 30.0,
           attn_logit_softcapping: float | None = 50.0,
           rope_scaling: dict[str, Any] | None = None) -> Model:
    """Gemma 2: token embeddings times sqrt(hidden_size) (exactly, not rounded), blocks
    x + post_norm(attn(norm(x))) then x + post_norm(mlp(norm(x))), attention scaled by
    query_pre_attn_scalar^-0.5 with scores soft-capped (c tanh(s / c), c =
    attn_logit_softcapping), a sliding window on the layers `layer_types` marks (else layers
    0, 2, 4, ...: transformers' rule) and full causal attention on the others, a GeGLU MLP
    (tanh GELU), RMSNorms, an LM head tied to the embeddings and logits soft-capped by
    final_logit_softcapping. Gemma's RMSNorm multiplies by (1 + w): `from_pretrained` and
    `load_hf_weights` store 1 + w as the norm's `scale`.
    input_ids [batch, seq] -> logits [batch, seq, vocab_size]."""
    return _gemma2(dict(locals()))


def _gemma2(o: dict[str, Any], embed_scale: float | None = None, post_norms: bool = True
            ) -> Model:
    # embed_scale / post_norms exist so that tests can show the goldens catch a rounded scale
    # or missing post-norms; the public preset never changes them.
    g = SimpleNamespace(**o)
    c = _check("gemma2", vocab_size=g.vocab_size, hidden_size=g.hidden_size,
               num_hidden_layers=g.num_hidden_layers,
               num_attention_heads=g.num_attention_heads, head_dim=g.head_dim)
    c.number(g.query_pre_attn_scalar, "query_pre_attn_scalar", positive=True)
    windows = layer_windows("gemma2", g.num_hidden_layers, g.sliding_window, g.layer_types,
                            lambda i: i % 2 == 0)
    ids = input("input_ids", ("batch", "seq"), "int64")
    emb = embedding(ids, g.vocab_size, g.hidden_size, name="embed_tokens")
    h = scale(emb, math.sqrt(g.hidden_size) if embed_scale is None else embed_scale,
              name="embed_scale")

    def norm(t: Value, label: str) -> Value:
        return rms_norm(t, epsilon=g.rms_norm_eps, name=label)

    for i in range(g.num_hidden_layers):
        p = f"layers.{i}"
        a = multi_head_attention(
            norm(h, f"{p}.norm1"), num_heads=g.num_attention_heads,
            num_kv_heads=g.num_key_value_heads, head_dim=g.head_dim, causal=True,
            window=windows[i], scale=float(g.query_pre_attn_scalar) ** -0.5,
            softcap=g.attn_logit_softcapping, rope=True, rope_base=g.rope_theta,
            rope_scaling=g.rope_scaling, use_bias=g.attention_bias, name=f"{p}.attn")
        h = add(h, norm(a, f"{p}.post_attn_norm") if post_norms else a, name=f"{p}.res1")
        x = norm(h, f"{p}.norm2")
        gate = gelu(dense(x, g.intermediate_size, use_bias=False, name=f"{p}.ffn.gate"),
                    approximate="tanh")
        up = dense(x, g.intermediate_size, use_bias=False, name=f"{p}.ffn.up")
        f = dense(multiply(gate, up, name=f"{p}.ffn.glu"), g.hidden_size, use_bias=False,
                  name=f"{p}.ffn.down")
        h = add(h, norm(f, f"{p}.post_ffn_norm") if post_norms else f, name=f"{p}.res2")
    logits = tied_projection(norm(h, "norm"), emb, name="lm_head")
    if g.final_logit_softcapping is not None:
        cap = float(c.number(g.final_logit_softcapping, "final_logit_softcapping",
                             positive=True) or 1.0)
        logits = scale(tanh(scale(logits, 1.0 / cap, name="softcap.in"), name="softcap.tanh"),
                       cap, name="softcap.out")
    return Model(ids, {"logits": logits}, name="gemma2")


def t5(vocab_size: int = 32128, d_model: int = 512, d_kv: int = 64, d_ff: int = 2048,
       num_layers: int = 6, num_decoder_layers: int | None = None, num_heads: int = 8,
       relative_attention_num_buckets: int = 32, relative_attention_max_distance: int = 128,
       layer_norm_epsilon: float = 1e-6) -> Model:
    """T5 (v1.0): shared token embeddings, an encoder and a decoder of pre-norm (RMS) blocks
    with ReLU MLPs and no biases, unscaled attention (scale 1) with one relative-position bias
    table per stack, cross-attention, and an LM head tied to the embeddings (x * d_model^-0.5).
    (input_ids, attention_mask, decoder_input_ids) -> logits [batch, dec_seq, vocab_size]."""
    _check("t5", vocab_size=vocab_size, d_model=d_model, d_kv=d_kv, d_ff=d_ff,
           num_layers=num_layers, num_heads=num_heads)
    ids = input("input_ids", ("batch", "seq"), "int64")
    mask = input("attention_mask", ("batch", "seq"), "int64")
    dec_ids = input("decoder_input_ids", ("batch", "dec_seq"), "int64")
    shared = embedding(ids, vocab_size, d_model, name="shared")
    common: dict[str, Any] = {"num_heads": num_heads, "head_dim": d_kv, "ffn_dim": d_ff, "norm": "rms",
              "norm_eps": layer_norm_epsilon, "activation": "relu", "use_bias": False,
              "scale": 1.0}
    buckets: dict[str, Any] = {"num_buckets": relative_attention_num_buckets,
               "max_distance": relative_attention_max_distance, "num_heads": num_heads}
    enc_bias = relative_position_bias(shared, bidirectional=True,
                                      name="encoder.relative_attention_bias", **buckets)
    h = shared
    for i in range(num_layers):
        h = transformer_block(h, key_padding_mask=mask, attn_bias=enc_bias,
                              name=f"encoder.block.{i}", **common)
    enc = rms_norm(h, epsilon=layer_norm_epsilon, name="encoder.final_layer_norm")
    d = embedding(dec_ids, vocab_size, d_model, shared_with=shared, name="decoder.embed_tokens")
    dec_bias = relative_position_bias(d, bidirectional=False,
                                      name="decoder.relative_attention_bias", **buckets)
    for i in range(num_decoder_layers or num_layers):
        d = transformer_block(d, enc, causal=True, attn_bias=dec_bias,
                              context_padding_mask=mask, name=f"decoder.block.{i}", **common)
    d = rms_norm(d, epsilon=layer_norm_epsilon, name="decoder.final_layer_norm")
    scaled = scale(d, d_model ** -0.5, name="decoder.rescale")
    return Model([ids, mask, dec_ids], {"logits": tied_projection(scaled, shared, name="lm_head")},
                 name="t5")
