"""onnxruntime's CUDA execution provider: cached decoding keeps its buffers on the GPU and
gives the CPU's tokens. Runs where onnxruntime-gpu sees a GPU (`pip install attngraph[cuda]`);
elsewhere the module is skipped, and the CPU suite covers the same code paths."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from test_kv_cache import VOCAB, tiny

import attngraph as ag

pytestmark = pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers(),
    reason="onnxruntime has no CUDA execution provider here (onnxruntime-gpu and a GPU)")

# float32 products without TF32: greedy steps here are a few 1e-3 of the logits apart
EXACT = [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]


@pytest.mark.parametrize("kind", ["llama", "mistral"])
@pytest.mark.parametrize("share", [True, False])
def test_generate_on_cuda_gives_the_cpu_tokens(share: bool, kind: str) -> None:
    """Left-padded batch, shared buffer and copying form, with and without a window."""
    model = tiny(kind)
    proto = ag.export(model, model.init(seed=0), kv_cache=True, share_buffer=share)
    cpu = ag.Session(proto, ["CPUExecutionProvider"])
    gpu = ag.Session(proto, EXACT)
    assert gpu.device == "cuda" and gpu.device_id == 0
    ids = np.random.default_rng(1).integers(1, VOCAB, (2, 9))
    mask = np.ones_like(ids)
    mask[1, :4] = 0
    want = ag.generate(cpu, ids, 12, attention_mask=mask)
    np.testing.assert_array_equal(ag.generate(gpu, ids, 12, attention_mask=mask), want)


def test_cache_buffers_are_made_on_the_gpu() -> None:
    model = tiny("llama")
    gpu = ag.Session(ag.export(model, model.init(), kv_cache=True), ["CUDAExecutionProvider"])
    value = gpu.buffer((1, 2, 8, 16), "float32")
    assert value.device_name().lower() == "cuda"
    assert not value.numpy().any()


@pytest.mark.parametrize("kind", ["llama", "mistral"])
def test_float16_prompt_on_cuda_is_near_the_reference(kind: str) -> None:
    """onnxruntime's CUDA GroupQueryAttention takes float16 (float32 layers fall back to the
    CPU kernel): the float16 shared-buffer export on the GPU, prompt logits against the
    float32 reference, and a generate that runs with its buffers on the GPU."""
    from attngraph._decode import cache_layers, empty_past

    model = tiny(kind)
    params = model.init(seed=0)
    gpu = ag.Session(ag.export(model, params, kv_cache=True, dtype="float16"),
                     ["CUDAExecutionProvider"])
    ids = np.random.default_rng(1).integers(1, VOCAB, (2, 9))
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids),
             **empty_past(cache_layers(model), 2, np.float16)}
    got = gpu.run(feeds)["logits"].astype(np.float32)
    want = model.predict(params, {"input_ids": ids})["logits"]
    assert np.abs(got - want).max() < 2e-2
    out = ag.generate(gpu, ids, 6)
    assert out.shape == (2, 15) and (out[:, :9] == ids).all()
