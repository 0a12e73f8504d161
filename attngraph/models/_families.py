"""Transformer families (BERT, GPT-2, T5, Llama, Mistral) built from attngraph's builders,
with Hugging Face's configuration names and defaults."""

from __future__ import annotations

from typing import Any

from .._checks import Checker
from .._errors import caller_location
from .._model import Model
from ..blocks import transformer_block
from ..layers import (
    add,
    dense,
    embedding,
    input,
    layer_norm,
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


def llama(vocab_size: int = 32000, hidden_size: int = 4096, intermediate_size: int = 11008,
          num_hidden_layers: int = 32, num_attention_heads: int = 32,
          num_key_value_heads: int | None = None, rms_norm_eps: float = 1e-6,
          rope_theta: float = 10000.0, sliding_window: int | None = None,
          name: str = "llama") -> Model:
    """Llama: token embeddings, pre-norm (RMSNorm) causal blocks with RoPE, grouped-query
    attention and a SwiGLU MLP, no biases, a final RMSNorm and an untied LM head.
    input_ids [batch, seq] -> logits [batch, seq, vocab_size]."""
    _check(name, vocab_size=vocab_size, hidden_size=hidden_size,
           num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads)
    ids = input("input_ids", ("batch", "seq"), "int64")
    h = embedding(ids, vocab_size, hidden_size, name="embed_tokens")
    for i in range(num_hidden_layers):
        h = transformer_block(h, num_heads=num_attention_heads, num_kv_heads=num_key_value_heads,
                              ffn_dim=intermediate_size, causal=True, window=sliding_window,
                              norm="rms", norm_eps=rms_norm_eps, activation="swiglu", rope=True,
                              rope_base=rope_theta, use_bias=False, name=f"layers.{i}")
    h = rms_norm(h, epsilon=rms_norm_eps, name="norm")
    return Model(ids, {"logits": dense(h, vocab_size, use_bias=False, name="lm_head")}, name=name)


def mistral(vocab_size: int = 32000, hidden_size: int = 4096, intermediate_size: int = 14336,
            num_hidden_layers: int = 32, num_attention_heads: int = 32,
            num_key_value_heads: int = 8, rms_norm_eps: float = 1e-6,
            rope_theta: float = 10000.0, sliding_window: int = 4096) -> Model:
    """Mistral: Llama with a causal sliding window of `sliding_window` positions (the last
    `sliding_window` keys including the query, as in Hugging Face's masks). Defaults are
    MistralConfig's: rms_norm_eps=1e-6 (released checkpoints set their own, e.g. 1e-5)."""
    return llama(vocab_size, hidden_size, intermediate_size, num_hidden_layers,
                 num_attention_heads, num_key_value_heads, rms_norm_eps, rope_theta,
                 sliding_window, name="mistral")


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
