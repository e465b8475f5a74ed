"""SAM 2's chunked float32 encoder copy (``precision="fp32-fast"`` on a CPU, issue #25): the model's own outputs to
float32 rounding, the model's tensors shared (trained weights seen at once), rebuilt when a tensor is replaced, the
path every SAM 2 predictor's encoder call takes, and bad input refused. No timings here (benchmarks/cpu_speed.py)."""

from __future__ import annotations

import weakref

import numpy as np
import pytest
import torch
from test_fast_paths import sam2_small  # noqa: F401 (fixture)

from samforge.predict import hiera_int8, sam2_cpu_encoder
from samforge.predict.hiera_int8 import ChunkedHieraBlock
from samforge.predict.sam2_predictor import forward_image_in
from samforge.predict.sam2_cpu_encoder import fast_sam2_encoder

SAME = 1e-5  # relative difference allowed between two orders of the same fp32 computation


@pytest.fixture
def fresh_cache(monkeypatch):
    """Chunks of 2048 floats (many chunks per block) and an empty cache, so the copy is built with them."""
    monkeypatch.setattr(hiera_int8, "CHUNK_ELEMENTS", 2048)
    monkeypatch.setattr(sam2_cpu_encoder, "_CACHE", weakref.WeakKeyDictionary())


def encode(encoder, x):
    with torch.no_grad():
        return encoder(x)["backbone_fpn"]


def assert_same(levels, exact):
    for level, ref in zip(levels, exact, strict=True):
        assert level.shape == ref.shape
        assert (level - ref).abs().max().item() <= SAME * ref.abs().max().item()


def test_copy_computes_the_encoder_and_shares_its_tensors(sam2_small, fresh_cache):
    encoder = sam2_small[0].image_encoder
    fast = fast_sam2_encoder(encoder)
    assert all(type(b) is ChunkedHieraBlock for b in fast.trunk.blocks)
    assert fast_sam2_encoder(encoder) is fast  # built once
    size = sam2_small[0].image_size
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(3))
    assert_same(encode(fast, x), encode(encoder, x))
    own = dict(encoder.named_parameters())
    assert all(p is own[n] for n, p in fast.named_parameters())  # no copy of a weight
    weight = encoder.trunk.blocks[-1].mlp.layers[0].weight
    before = encode(fast, x)[-1].clone()
    with torch.no_grad():
        weight.mul_(1.5)  # trained in place: the copy sees it without a rebuild
    try:
        assert fast_sam2_encoder(encoder) is fast
        after = encode(fast, x)
        assert not torch.allclose(after[-1], before)
        assert_same(after, encode(encoder, x))
    finally:
        with torch.no_grad():
            weight.div_(1.5)


def test_copy_is_rebuilt_when_a_tensor_is_replaced(sam2_small, fresh_cache):
    encoder = sam2_small[0].image_encoder
    fast = fast_sam2_encoder(encoder)
    linear = encoder.trunk.blocks[0].mlp.layers[0]
    original = linear.weight
    linear.weight = torch.nn.Parameter(original.detach() * 2)
    try:
        rebuilt = fast_sam2_encoder(encoder)
        assert rebuilt is not fast and rebuilt.trunk.blocks[0].mlp.layers[0].weight is linear.weight
        size = sam2_small[0].image_size
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(4))
        assert_same(encode(rebuilt, x), encode(encoder, x))
    finally:
        linear.weight = original


def test_forward_image_runs_the_chunked_copy_for_fp32_fast(sam2_small, fresh_cache):
    """``forward_image_in``: what the image predictor, the automatic mask generator and the video predictor's frames
    run the encoder through."""
    model = sam2_small[0]
    calls = [0]
    fast = fast_sam2_encoder(model.image_encoder)
    handle = fast.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        x = torch.randn(1, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(5))
        with torch.no_grad():
            out = forward_image_in(model, x, "fp32-fast")
            exact = forward_image_in(model, x, "fp32")
        assert calls[0] == 1
        assert_same(out["backbone_fpn"], exact["backbone_fpn"])
        assert_same(out["vision_pos_enc"], exact["vision_pos_enc"])
    finally:
        handle.remove()


def test_bad_input_is_refused():
    with pytest.raises(TypeError, match="expected a SAM 2 image encoder"):
        fast_sam2_encoder(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match=r"expected a SAM 2 image encoder \(a Hiera trunk\), got ndarray"):
        fast_sam2_encoder(np.zeros(3))
