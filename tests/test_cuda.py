"""onnxruntime's CUDA execution provider: cached decoding keeps its buffers on the GPU and
gives the CPU's tokens. Runs where onnxruntime-gpu sees a GPU (`pip install attngraph[cuda]`);
elsewhere the module is skipped, and the CPU suite covers the same code paths."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import attngraph as ag

pytestmark = pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers(),
    reason="onnxruntime has no CUDA execution provider here (onnxruntime-gpu and a GPU)")

VOCAB = 61


def decoder(window: int | None) -> ag.Model:
    common = {"vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 40,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
    if window is None:
        return ag.models.llama(**common)
    return ag.models.mistral(**common, sliding_window=window)


@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize("share", [True, False])
def test_generate_on_cuda_gives_the_cpu_tokens(share: bool, window: int | None) -> None:
    """Left-padded batch, shared buffer and copying form, with and without a window."""
    model = decoder(window)
    proto = ag.export(model, model.init(seed=0), kv_cache=True, share_buffer=share)
    cpu = ag.Session(proto, ["CPUExecutionProvider"])
    gpu = ag.Session(proto, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert gpu.device == "cuda" and gpu.device_id == 0
    ids = np.random.default_rng(1).integers(1, VOCAB, (2, 9))
    mask = np.ones_like(ids)
    mask[1, :4] = 0
    want = ag.generate(cpu, ids, 12, attention_mask=mask)
    np.testing.assert_array_equal(ag.generate(gpu, ids, 12, attention_mask=mask), want)


def test_cache_buffers_are_made_on_the_gpu() -> None:
    model = decoder(None)
    gpu = ag.Session(ag.export(model, model.init(), kv_cache=True), ["CUDAExecutionProvider"])
    value = gpu.buffer((1, 2, 8, 16), "float32")
    assert value.device_name().lower() == "cuda"
    assert not value.numpy().any()
