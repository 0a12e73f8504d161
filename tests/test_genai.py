"""`ag.save_genai`: folders that the real onnxruntime-genai loads, generating the same greedy
tokens as `ag.generate`, with the shared past/present buffer on and off; tokenizer files that
`og.Tokenizer` loads."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np
import pytest

if sys.version_info < (3, 11):
    pytest.skip("onnxruntime-genai >= 0.18 has no wheels for Python 3.10 (the test extra "
                "leaves it out there)", allow_module_level=True)

import onnxruntime_genai as og
import tokenizers

import attngraph as ag

VOCAB, WINDOW, EOS = 53, 5, 52


def tiny(kind: str) -> tuple[ag.Model, dict[str, np.ndarray]]:
    common: dict[str, Any] = {"vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 40,
                              "num_hidden_layers": 2, "num_attention_heads": 4,
                              "num_key_value_heads": 2}
    models = {
        "gpt": lambda: ag.models.gpt(vocab_size=VOCAB, n_positions=64, n_embd=24, n_layer=2,
                                     n_head=3),
        "llama": lambda: ag.models.llama(**common),
        "mistral": lambda: ag.models.mistral(**common, sliding_window=WINDOW),
        "qwen2": lambda: ag.models.qwen2(**common, tie_word_embeddings=True),
        # layer 0 windowed, layer 1 global; both softcaps
        "gemma2": lambda: ag.models.gemma2(**common, head_dim=16, query_pre_attn_scalar=12,
                                           sliding_window=WINDOW),
        "phi3": lambda: ag.models.phi3(**common, partial_rotary_factor=0.5),
    }
    model = models[kind]()
    # larger weights than init's, so greedy tokens vary from step to step (gemma2's embedding
    # scale and softcaps already spread its logits)
    grow = 1 if kind == "gemma2" else 3
    params = {k: v * grow if v.ndim == 2 else v for k, v in model.init(seed=3).items()}
    return model, params


def genai_tokens(folder: str, ids: np.ndarray, new: int) -> np.ndarray:
    model = og.Model(folder)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=ids.shape[1] + new, batch_size=ids.shape[0])
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    for _ in range(new):  # bounded: at most `new` tokens
        if generator.is_done():
            break
        generator.generate_next_token()
    return np.array([generator.get_sequence(r) for r in range(ids.shape[0])])


CASES = [("gpt", True), ("gpt", False), ("llama", True), ("llama", False), ("mistral", True),
         ("mistral", False), ("qwen2", True), ("qwen2", False), ("gemma2", True), ("gemma2", False), ("phi3", True), ("phi3", False)]


@pytest.mark.parametrize(("kind", "share"), CASES)
def test_genai_greedy_tokens_equal_generate(tmp_path, kind: str, share: bool) -> None:
    model, params = tiny(kind)
    folder = ag.save_genai(model, params, tmp_path / kind, share_buffer=share,
                           eos_token_id=EOS, context_length=64)
    config = json.loads((tmp_path / kind / "genai_config.json").read_text())
    assert config["search"]["past_present_share_buffer"] is share
    rng = np.random.default_rng(7)
    for batch in (1, 3):  # equal-length rows (see test_genai_padded_batch for padding)
        ids = rng.integers(0, VOCAB - 1, (batch, 6))
        got = genai_tokens(folder, ids, 24)
        expected = ag.generate(model, ids, 24, params=params, eos_token_id=EOS)
        assert got.shape == expected.shape
        np.testing.assert_array_equal(got, expected, err_msg=f"{kind} share={share} B={batch}")
        assert len(set(expected[:, 6:].ravel().tolist())) > 3  # the tokens really vary
    block = config["model"]["decoder"].get("sliding_window")
    if kind in ("mistral", "gemma2"):  # shared: genai kept every position resident; copying:
        # its cache (window_size + cache_slack) is exactly the model's last WINDOW positions
        size, slack = (WINDOW, 64) if share else (WINDOW - 1, 1)
        assert block == {"window_size": size, "layers": [0, 1] if kind == "mistral" else [0],
                         "slide_key_value_cache": False, "slide_inputs": False,
                         "cache_slack": slack}
    else:
        assert block is None


PAD = 51


@pytest.mark.parametrize(("kind", "share"), [("llama", True), ("llama", False),
                                             ("mistral", True), ("gemma2", True),
                                             ("gpt", False), ("phi3", True)])
def test_genai_padded_batch(tmp_path, kind: str, share: bool) -> None:
    """genai takes a batch of rows of different lengths right-padded with pad_token_id (it
    masks each row's trailing pads); its greedy tokens equal ag.generate's on the same rows
    left-padded with an attention mask, and each row's tokens equal that row's alone."""
    model, params = tiny(kind)
    folder = ag.save_genai(model, params, tmp_path / kind, share_buffer=share,
                           eos_token_id=EOS, pad_token_id=PAD, context_length=64)
    rng = np.random.default_rng(11)
    rows = [rng.integers(0, PAD, n) for n in (7, 4, 2)]
    right = np.full((3, 7), PAD)
    left = np.full((3, 7), PAD)
    mask = np.zeros((3, 7), np.int64)
    for i, row in enumerate(rows):
        right[i, :len(row)] = row
        left[i, 7 - len(row):] = row
        mask[i, 7 - len(row):] = 1
    new = 10
    got = genai_tokens(folder, right, new)[:, 7:]
    expected = ag.generate(model, left, new, params=params, eos_token_id=EOS,
                           attention_mask=mask, pad_token_id=PAD)[:, 7:]
    np.testing.assert_array_equal(got, expected, err_msg=f"{kind} share={share}")
    for row, tokens in zip(rows, expected):  # padding changed nothing (a row that ended at
        alone = ag.generate(model, row[None], new, params=params, eos_token_id=EOS)[0]
        np.testing.assert_array_equal(tokens[:len(alone) - len(row)], alone[len(row):])
        assert (tokens[len(alone) - len(row):] == PAD).all()  # eos is padded after it)


def test_genai_window_changes_tokens(tmp_path) -> None:
    """The mistral folder's window is real: without it (llama, same weights) tokens differ
    once the sequence outgrows the window."""
    mistral, params = tiny("mistral")
    llama, _ = tiny("llama")
    ids = np.random.default_rng(8).integers(0, VOCAB - 1, (1, 9))
    a = genai_tokens(ag.save_genai(mistral, params, tmp_path / "m", eos_token_id=EOS), ids, 12)
    b = genai_tokens(ag.save_genai(llama, params, tmp_path / "l", eos_token_id=EOS), ids, 12)
    assert (a != b).any()


def test_genai_config_sizes_names_and_ids(tmp_path) -> None:
    model, params = tiny("llama")
    tok = tmp_path / "tok"
    tok.mkdir()
    _tokenizer(tok)
    (tok / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 3, "eos_token_id": [7, 8], "pad_token_id": 4}))
    ag.save_genai(model, params, tmp_path / "out", tokenizer=tok)
    config = json.loads((tmp_path / "out" / "genai_config.json").read_text())
    decoder = config["model"]["decoder"]
    assert (decoder["head_size"], decoder["hidden_size"], decoder["num_attention_heads"],
            decoder["num_key_value_heads"], decoder["num_hidden_layers"]) == (16, 64, 4, 2, 2)
    assert decoder["inputs"]["past_key_names"] == "past_key_values.%d.key"
    assert decoder["outputs"]["present_value_names"] == "present.%d.value"
    assert (config["model"]["bos_token_id"], config["model"]["eos_token_id"],
            config["model"]["pad_token_id"]) == (3, [7, 8], 4)
    assert config["model"]["vocab_size"] == VOCAB and config["model"]["type"] == "llama"
    assert config["search"]["past_present_share_buffer"] is True
    assert sorted(os.listdir(tmp_path / "out")) == [
        "genai_config.json", "generation_config.json", "model.onnx", "tokenizer.json",
        "tokenizer_config.json"]
    gpt, gpt_params = tiny("gpt")
    ag.save_genai(gpt, gpt_params, tmp_path / "gpt", eos_token_id=EOS)
    gpt_config = json.loads((tmp_path / "gpt" / "genai_config.json").read_text())
    assert gpt_config["model"]["context_length"] == 64  # gpt's learned positions
    assert gpt_config["model"]["pad_token_id"] == EOS  # pad defaults to eos


def _tokenizer(folder: Any) -> tokenizers.Tokenizer:
    """A tiny byte-level BPE tokenizer (GPT-2 style) trained with the `tokenizers` library."""
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the cat sat on the mat", "a cat and a dog"] * 10, trainer)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "GPT2Tokenizer", "bos_token": "<|endoftext|>",
         "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}))
    return tok


def test_og_tokenizer_loads_copied_files(tmp_path) -> None:
    tok = tmp_path / "tok"
    tok.mkdir()
    reference = _tokenizer(tok)
    model, params = tiny("gpt")
    folder = ag.save_genai(model, params, tmp_path / "out", tokenizer=tok, eos_token_id=0)
    tokenizer = og.Tokenizer(og.Model(folder))
    text = "the cat sat on a mat"
    expected = reference.encode(text).ids
    assert len(expected) < len(text.split()) * 2  # merges were learned and used
    assert [int(t) for t in tokenizer.encode(text)] == expected
    assert tokenizer.decode(np.array(expected, np.int32)) == text


def test_genai_mistakes(tmp_path) -> None:
    mistral, params = tiny("mistral")
    one = ag.models.mistral(vocab_size=VOCAB, hidden_size=64, intermediate_size=40,
                            num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                            sliding_window=1)
    with pytest.raises(ag.UnsupportedError, match="window of 1 needs share_buffer=True"):
        ag.save_genai(one, one.init(seed=0), tmp_path / "w1", share_buffer=False)
    assert not (tmp_path / "w1").exists()
    mistakes = [((mistral, params, 5), {}, r"out_dir must be a folder path.*given 5"),
                (("x", params, tmp_path / "m"), {}, r"model must be an ag.Model.*given str"),
                ((mistral, [1], tmp_path / "m"), {}, r"params must be a mapping.*given list"),
                ((mistral, params, tmp_path / "m"), {"tokenizer": 3}, "tokenizer must be a"),
                ((mistral, params, tmp_path / "m"), {"target": "tf"}, "target must be one of"),
                ((mistral, params, tmp_path / "m"), {"dtype": 16}, "dtype must be one of"),
                ((mistral, params, tmp_path / "m"), {"opset": 21, "kv_cahce": True},
                 r"unknown option \['kv_cahce'\]; it passes these to ag.export: \['opset'"),
                ((mistral, params, tmp_path / "m"), {"kv_cache": False}, "unknown option")]
    for args, kwargs, message in mistakes:
        with pytest.raises(ag.ConfigError, match=message) as info:
            ag.save_genai(*args, **kwargs)
        assert "test_genai.py:" in str(info.value)  # the user's line
    (tmp_path / "empty").mkdir()
    with pytest.raises(ag.ExportError, match="holds no tokenizer file"):
        ag.save_genai(mistral, params, tmp_path / "m", tokenizer=tmp_path / "empty")
    with pytest.raises(ag.ExportError, match="is not a folder"):
        ag.save_genai(mistral, params, tmp_path / "m", tokenizer=tmp_path / "nope")
    assert not (tmp_path / "m").exists()  # refused before anything was written
    for bad in (-1, VOCAB):
        with pytest.raises(ag.ConfigError, match=r"bos_token_id must be a token id in 0\.\."):
            ag.save_genai(mistral, params, tmp_path / "m", bos_token_id=bad)
    with pytest.raises(ag.ConfigError, match="eos_token_id must be an int"):
        ag.save_genai(mistral, params, tmp_path / "m", eos_token_id="x")
    bert = ag.models.bert(vocab_size=30, hidden_size=16, num_hidden_layers=1,
                          num_attention_heads=2, intermediate_size=16)
    with pytest.raises(ag.UnsupportedError, match="save_genai: a cached decoder"):
        ag.save_genai(bert, bert.init(), tmp_path / "b")


LM_FILE = '''
import attngraph as ag

def build():
    model = ag.models.llama(vocab_size=53, hidden_size=64, intermediate_size=40,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    params = {k: v * 3 if v.ndim == 2 else v for k, v in model.init(seed=3).items()}
    return model, params
'''


def test_cli_export_genai(tmp_path, capsys) -> None:
    from attngraph.cli import main

    path = tmp_path / "lm.py"
    path.write_text(LM_FILE)
    tok = tmp_path / "tok"
    tok.mkdir()
    _tokenizer(tok)
    (tok / "generation_config.json").write_text(json.dumps({"eos_token_id": EOS}))
    out = tmp_path / "genai"
    assert main(["export", str(path), "--genai", str(out), "--tokenizer", str(tok)]) == 0
    assert "share buffer on" in capsys.readouterr().out
    model, params = tiny("llama")
    ids = np.array([[4, 9, 17, 2, 30]])
    np.testing.assert_array_equal(genai_tokens(str(out), ids, 12),
                                  ag.generate(model, ids, 12, params=params, eos_token_id=EOS))
    assert og.Tokenizer(og.Model(str(out))).encode("the cat").size > 0
    assert main(["export", str(path), "--genai", str(tmp_path / "g2"),
                 "--share-buffer", "off"]) == 0
    config = json.loads((tmp_path / "g2" / "genai_config.json").read_text())
    assert config["search"]["past_present_share_buffer"] is False
    assert main(["export", str(path), "--tokenizer", str(tok)]) == 2
    assert "--tokenizer goes with --genai DIR" in capsys.readouterr().err
    assert main(["export", str(path), "-o", str(tmp_path / "m.onnx"), "--tokenizer",
                 str(tok)]) == 2
