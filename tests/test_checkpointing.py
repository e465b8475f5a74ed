"""Fine-tuning in little memory and on fast hardware: activation checkpointing of the image encoder blocks (SAM's
ViT, SAM 2's Hiera) gives the same gradients as without; finetune.checkpoint_blocks picks the blocks; TF32 is set
only on CUDA Ampere+ and never under precision=fp32-strict."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from sam2_oracle import SMALL_OVERRIDES

from samforge.models.build import build_sam
from samforge.models.checkpointing import set_checkpoint_blocks
from samforge.models.configs import SAM_CONFIGS
from samforge.models.sam2 import build_sam2
from samforge.train.config import FinetuneConfig, load_config
from samforge.train.finetune import apply_finetune, encoder_blocks_owner
from samforge.utils.tf32 import set_tf32

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL_SAM = {"image_size": 64, "patch_size": 8, "encoder_embed_dim": 32, "encoder_depth": 3, "encoder_num_heads": 2,
             "encoder_global_attn_indexes": (1,), "window_size": 4, "prompt_embed_dim": 32, "decoder_num_heads": 2,
             "decoder_mlp_dim": 64, "iou_head_hidden_dim": 32}


def encoder_grads(model: torch.nn.Module, image: torch.Tensor, checkpointed: int) -> tuple[torch.Tensor, dict]:
    """The encoder's output and every parameter's gradient of a fixed random projection of it."""
    set_checkpoint_blocks(encoder_blocks_owner(model), checkpointed)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)  # the same drop-path draws in both runs (checkpointing replays the RNG on recompute)
    out = model.image_encoder(image)
    feats = out if isinstance(out, torch.Tensor) else torch.cat([f.flatten() for f in out["backbone_fpn"]])
    weights = torch.randn(feats.shape, generator=torch.Generator().manual_seed(1))
    (feats * weights).sum().backward()
    return feats.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same(plain: tuple, ckpt: tuple) -> None:
    assert torch.equal(plain[0], ckpt[0])
    assert plain[1].keys() == ckpt[1].keys() and len(plain[1]) > 10
    for name, grad in plain[1].items():
        assert torch.allclose(grad, ckpt[1][name], atol=1e-6, rtol=0), name


def test_sam_vit_checkpointed_gradients_equal_plain_ones():
    torch.manual_seed(0)
    model = build_sam(dataclasses.replace(SAM_CONFIGS["vit_small"], **SMALL_SAM)).train()
    image = torch.randn(2, 3, 64, 64)
    plain = encoder_grads(model, image, 0)
    assert_same(plain, encoder_grads(model, image, 3))
    assert_same(plain, encoder_grads(model, image, 2))  # some blocks only


def test_sam2_hiera_checkpointed_gradients_equal_plain_ones():
    torch.manual_seed(0)
    model = build_sam2("sam2.1_hiera_t", device="cpu", mode="train", hydra_overrides_extra=list(SMALL_OVERRIDES))
    model.train()
    image = torch.randn(1, 3, 256, 256)
    plain = encoder_grads(model, image, 0)
    assert_same(plain, encoder_grads(model, image, len(model.image_encoder.trunk.blocks)))


def test_checkpointing_is_off_in_inference_and_counts_are_checked():
    torch.manual_seed(0)
    model = build_sam(dataclasses.replace(SAM_CONFIGS["vit_small"], **SMALL_SAM))
    encoder = model.image_encoder
    assert set_checkpoint_blocks(encoder, 99) == 3  # at most all blocks
    calls = []
    hook = torch.utils.checkpoint.checkpoint

    def counting(*args, **kwargs):
        calls.append(kwargs.get("use_reentrant"))
        return hook(*args, **kwargs)

    import samforge.models.checkpointing as module

    module.checkpoint, original = counting, module.checkpoint
    try:
        with torch.no_grad():
            encoder(torch.randn(1, 3, 64, 64))
        assert calls == []  # nothing to save for a backward pass
        encoder(torch.randn(1, 3, 64, 64))
        assert calls == [False] * 3  # non-reentrant, one per block
    finally:
        module.checkpoint = original
    with pytest.raises(ValueError, match="checkpoint_blocks must be an int >= 0, got -1"):
        set_checkpoint_blocks(encoder, -1)
    with pytest.raises(TypeError, match="expected an image encoder with blocks"):
        set_checkpoint_blocks(torch.nn.Linear(2, 2), 1)


@pytest.mark.parametrize("size, mode, spec, expected", [
    (1024, "full", "auto", 2), (1024, "lora", "auto", 2), (1024, "decoder", "auto", 0), (64, "full", "auto", 0),
    (64, "full", "all", 2), (1024, "full", "none", 0), (64, "lora", "1", 1),
])
def test_finetune_checkpoint_blocks_default_is_all_for_full_and_lora_at_1024(size, mode, spec, expected):
    arch = {**SMALL_SAM, "image_size": size, "patch_size": 16 if size == 1024 else 8, "encoder_depth": 2}
    model = build_sam(dataclasses.replace(SAM_CONFIGS["vit_small"], **arch))
    plan = apply_finetune(model, FinetuneConfig(mode=mode, checkpoint_blocks=spec))
    assert model.image_encoder.checkpoint_blocks == expected == plan.checkpointed_blocks
    assert ("activation checkpointing on" in plan.describe()) == (expected > 0)


def test_checkpoint_blocks_setting_is_checked():
    assert load_config(None, ["finetune.checkpoint_blocks=4"]).finetune.checkpoint_blocks == "4"
    with pytest.raises(ValueError, match="finetune.checkpoint_blocks must be all, none, auto or a number of blocks"):
        load_config(None, ["finetune.checkpoint_blocks=some"])


@pytest.fixture
def tf32_flags():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("capability, strict, expected", [((8, 0), False, True), ((9, 0), False, True),
                                                          ((7, 5), False, False), ((8, 6), True, False)])
def test_tf32_is_set_on_ampere_cuda_unless_strict(monkeypatch, tf32_flags, capability, strict, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = not expected
    assert set_tf32("cuda", strict) is expected
    assert torch.backends.cuda.matmul.allow_tf32 is expected and torch.backends.cudnn.allow_tf32 is expected


def test_tf32_flags_are_left_alone_off_cuda(monkeypatch, tf32_flags):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, True
    assert set_tf32("cpu", strict=False) is False
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, True)
    assert load_config(None, ["precision=fp32-strict"]).precision == "fp32-strict"
