"""The int8 copy of SAM 2's image encoder (issue #25): the chunked Hiera blocks, the neck's 1x1 convolutions as matrix
products and the cached positional embedding compute what the original modules compute; 8-bit weights x 7-bit
activations for SAM 2's linear layers; the int8 predictor run on many chunks agrees with the exact path on the parity
prompts. No timings here (benchmarks/cpu_speed.py)."""

from __future__ import annotations

import copy
import weakref

import numpy as np
import pytest
import torch
from sam2_oracle import prompt_cases as sam2_prompt_cases
from test_cpu_precision import EMB_NORM_REL, assert_embedding_close, assert_masks_agree, relative_error
from test_fast_paths import sam2_small  # noqa: F401 (fixture)
from torch import nn

from samforge import SAM2ImagePredictor
from samforge.models.sam2.hiera import Hiera, MultiScaleBlock
from samforge.predict import hiera_int8, quantize
from samforge.predict.hiera_int8 import (
    CachedPosEmbed,
    ChunkedAttention,
    ChunkedHieraBlock,
    ChunkedMLP,
    PointwiseConv,
    chunk_sam2_encoder,
)
from samforge.predict.quantize import Int8Linear, int8_encoder, quantize_linears

pytestmark = pytest.mark.usefixtures("one_thread")
SAME = 1e-5  # relative difference allowed between two orders of the same fp32 computation


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 2048 floats (a few windows, a few dozen tokens) so every chunked path runs many chunks; a fresh
    int8 cache so the predictor builds its copy with them."""
    monkeypatch.setattr(hiera_int8, "CHUNK_ELEMENTS", 2048)
    monkeypatch.setattr(quantize, "_CACHE", weakref.WeakKeyDictionary())


def count_calls(module: nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_chunked_encoder_computes_the_same(sam2_small, small_chunks):
    encoder = sam2_small[0].image_encoder
    fast = chunk_sam2_encoder(copy.deepcopy(encoder))
    assert all(type(b) is ChunkedHieraBlock and type(b.mlp) is ChunkedMLP and type(b.attn) is ChunkedAttention
               for b in fast.trunk.blocks)
    assert all(type(lateral.conv) is PointwiseConv for lateral in fast.neck.convs)
    assert all(type(b) is MultiScaleBlock for b in encoder.trunk.blocks)  # the original is left alone
    assert [n for n, _ in fast.named_parameters()] == [n for n, _ in encoder.named_parameters()]  # names kept
    trunk = fast.trunk
    third = max(i for i in range(trunk.stage_ends[1] + 1, trunk.stage_ends[2] + 1) if i not in trunk.global_att_blocks)
    third_stage = trunk.blocks[third]  # 16 x 16 grid, windows of 14 (padded): the original's path
    first_attn, third_mlp = count_calls(fast.trunk.blocks[0].attn), count_calls(third_stage.mlp.layers[0])
    third_qkv = count_calls(third_stage.attn.qkv)
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        exact, out = encoder(x), fast(x)
    assert first_attn[0] > 1 and third_mlp[0] > 1 and third_qkv[0] > 1  # chunks of windows and of tokens
    for key in ("backbone_fpn", "vision_pos_enc"):
        for a, b in zip(out[key], exact[key]):
            assert a.shape == b.shape and relative_error(a, b) <= SAME, key
    for level in out["backbone_fpn"][:2]:  # the high-resolution levels come out channels-last (fast 1x1 convs next)
        assert level.is_contiguous(memory_format=torch.channels_last)
    other = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))  # 14 x 14 third stage: windowed
    with torch.no_grad():
        for a, b in zip(fast(other)["backbone_fpn"], encoder(other)["backbone_fpn"]):
            assert a.shape == b.shape and relative_error(a, b) <= SAME


def test_chunked_modules_check_their_inputs():
    with pytest.raises(TypeError, match="MultiScaleBlock"):
        ChunkedHieraBlock(nn.Linear(2, 2))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="MultiScaleAttention"):
        ChunkedAttention(nn.Linear(2, 2))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="samforge MLP"):
        ChunkedMLP(nn.Sequential())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="1x1 nn.Conv2d"):
        PointwiseConv(nn.Conv2d(4, 8, 3))
    with pytest.raises(TypeError, match="Hiera trunk"):
        chunk_sam2_encoder(nn.Linear(2, 2))
    conv = nn.Conv2d(4, 8, 1)
    pointwise = PointwiseConv(conv)
    assert pointwise.weight is conv.weight and pointwise.bias is conv.bias
    x = torch.randn(2, 4, 5, 6)
    with torch.no_grad():
        assert relative_error(pointwise(x), conv(x)) <= SAME
        assert relative_error(pointwise(x.contiguous(memory_format=torch.channels_last)), conv(x)) <= SAME
    with pytest.raises(ValueError, match="B x 4 x H x W"):
        pointwise(torch.randn(2, 3, 5, 6))


def test_cached_pos_embed_follows_the_parameters():
    trunk = Hiera(embed_dim=8, num_heads=1, stages=(1, 1), window_spec=(4, 2), global_att_blocks=(), q_pool=1,
                  window_pos_embed_bkg_spatial_size=(4, 4))
    with torch.no_grad():
        trunk.pos_embed.normal_()
        cached = CachedPosEmbed(trunk)
        first = cached((16, 16))
        assert cached((16, 16)) is first and torch.equal(first, Hiera._get_pos_embed(trunk, (16, 16)))
        assert cached((8, 8)).shape == (1, 8, 8, 8)  # another size: computed for it
        trunk.pos_embed.add_(1.0)  # changed in place (trained, loaded): recomputed
        assert torch.equal(cached((16, 16)), Hiera._get_pos_embed(trunk, (16, 16)))


def test_int8_encoder_of_sam2_takes_8_bit_weights_and_the_chunked_blocks(sam2_small, small_chunks):
    encoder = sam2_small[0].image_encoder
    quantized = int8_encoder(encoder)
    int8 = [m for m in quantized.modules() if isinstance(m, Int8Linear)]
    assert int8 and all(m.weight_bits == 8 for m in int8) and "w8/a7" in repr(int8[0])
    assert all(type(b) is ChunkedHieraBlock for b in quantized.trunk.blocks)
    assert type(encoder.trunk.blocks[0]) is MultiScaleBlock and type(encoder.neck.convs[0].conv) is nn.Conv2d
    assert quantized.trunk.pos_embed is encoder.trunk.pos_embed  # tensors shared, modules not
    sam = quantize_linears(nn.Sequential(nn.Linear(4, 4)))
    assert sam[0].weight_bits == 7  # SAM's ViT keeps 7-bit weights (samforge.predict.quantize)


def test_8_bit_weights_halve_the_weight_error_and_do_not_saturate():
    torch.manual_seed(0)
    lin = nn.Linear(256, 128)
    binary = (torch.rand(64, 256) > 0.5).float()  # 0 and 1 quantise exactly with 8 or 7 activation bits
    with torch.no_grad():
        ref = lin(binary)
        err7, err8 = (relative_error(Int8Linear(lin, weight_bits=bits)(binary), ref) for bits in (7, 8))
    assert err8 < 0.6 * err7, (err8, err7)
    worst = nn.Linear(64, 4, bias=False)
    with torch.no_grad():
        worst.weight.fill_(1.0)  # every weight at 127
        x = torch.ones(2, 64)
        x[:, 0] = -1.0  # every other activation at the top of its 7-bit range
        assert relative_error(Int8Linear(worst, weight_bits=8)(x), worst(x)) < 0.01
    with pytest.raises(ValueError, match="weight_bits must be one of"):
        Int8Linear(lin, weight_bits=6)
    with pytest.raises(ValueError, match="weight_bits must be one of"):
        quantize_linears(nn.Sequential(lin), weight_bits=4)


def test_chunked_int8_predictor_agrees_with_fp32_on_the_parity_prompts(sam2_small, small_chunks):
    model, image, exact = sam2_small
    fast = SAM2ImagePredictor(model, precision="int8")
    fast.set_image(image)
    assert all(type(b) is ChunkedHieraBlock for b in int8_encoder(model.image_encoder).trunk.blocks)
    assert_embedding_close(fast.get_image_embedding(), exact.get_image_embedding())
    for a, b in zip(fast._features["high_res_feats"], exact._features["high_res_feats"]):
        assert relative_error(a, b) <= EMB_NORM_REL
    pairs = []
    for kwargs in sam2_prompt_cases(*image.shape[:2], np.random.default_rng(7), low_res=64).values():
        if not kwargs.get("return_logits"):
            out_fast, out_exact = fast.predict(**kwargs), exact.predict(**kwargs)
            pairs.append(tuple(o[0].reshape(-1, *image.shape[:2]) > 0 for o in (out_fast, out_exact)))
    assert_masks_agree(pairs)  # mean IoU >= 0.97, none below 0.9
