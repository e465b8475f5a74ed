"""model.aligned_attention: a model trained from scratch starts with its mask decoder's keys equal to its queries
(samforge.models.attention_init); nothing else changes, and weights from a checkpoint are never touched."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from sam2_oracle import SMALL_OVERRIDES

from samforge.models.attention_init import align_query_key
from samforge.models.build import build_sam
from samforge.models.configs import SAM_CONFIGS
from samforge.models.transformer import Attention
from samforge.train.config import load_config
from samforge.train.task import Sam2Task, SamTask

TINY = {"image_size": 64, "patch_size": 8, "encoder_embed_dim": 32, "encoder_depth": 1, "encoder_num_heads": 2,
        "encoder_global_attn_indexes": (0,), "window_size": 4, "prompt_embed_dim": 32, "decoder_num_heads": 2,
        "decoder_mlp_dim": 64, "iou_head_hidden_dim": 32}
TINY_ARCH = [f"model.arch.{k}={list(v) if isinstance(v, tuple) else v}" for k, v in TINY.items()]


def tiny_sam() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_sam(dataclasses.replace(SAM_CONFIGS["vit_small"], **TINY))


def decoder_attentions(decoder: torch.nn.Module) -> list[Attention]:
    return [m for m in decoder.modules() if isinstance(m, Attention)]


def test_every_decoder_attention_starts_with_keys_equal_to_queries_and_nothing_else_moves():
    model = tiny_sam()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attentions = decoder_attentions(model.mask_decoder)
    # SAM's two-way transformer: per layer token self-attention and the two cross-attentions, plus the final one
    assert align_query_key(model.mask_decoder) == len(attentions) == 3 * 2 + 1
    for a in attentions:
        assert torch.equal(a.k_proj.weight, a.q_proj.weight) and torch.equal(a.k_proj.bias, a.q_proj.bias)
        assert not torch.equal(a.k_proj.weight, a.v_proj.weight)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("mask_decoder.") and ".k_proj." in k for k in changed)
    # the projections still train apart
    a = attentions[0]
    x = torch.randn(1, 5, a.q_proj.in_features)
    a(q=x, k=x * 2, v=x).sum().backward()
    assert not torch.allclose(a.q_proj.weight.grad, a.k_proj.weight.grad)


def test_the_training_task_aligns_only_a_model_trained_from_scratch(tmp_path):
    cfg = load_config(None, [*TINY_ARCH, "model.aligned_attention=true"])
    built = SamTask(cfg).build_model(torch.device("cpu"))
    assert all(torch.equal(a.k_proj.weight, a.q_proj.weight) for a in decoder_attentions(built.model.mask_decoder))
    plain = SamTask(load_config(None, TINY_ARCH)).build_model(torch.device("cpu")).model
    assert not any(torch.equal(a.k_proj.weight, a.q_proj.weight) for a in decoder_attentions(plain.mask_decoder))
    # from a checkpoint the weights are the checkpoint's, the setting or not
    path = tmp_path / "plain.pt"
    torch.save(plain.state_dict(), path)
    cfg = load_config(None, [*TINY_ARCH, "model.aligned_attention=true", f"model.checkpoint={path}"])
    loaded = SamTask(cfg).build_model(torch.device("cpu")).model
    for name, value in plain.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_a_sam2_model_from_scratch_aligns_its_mask_decoder_only():
    cfg = load_config(None, ["model.type=sam2.1_hiera_t", "model.aligned_attention=true"])
    cfg.model.overrides = list(SMALL_OVERRIDES)  # a small Hiera
    model = Sam2Task(cfg).build_model(torch.device("cpu")).model
    decoder = decoder_attentions(model.sam_mask_decoder)
    assert decoder and all(torch.equal(a.k_proj.weight, a.q_proj.weight) for a in decoder)
    others = [m for name, m in model.named_modules() if isinstance(m, Attention) and not name.startswith("sam_mask")]
    assert others and not any(torch.equal(a.k_proj.weight, a.q_proj.weight) for a in others)  # memory attention


def test_bad_input_is_named():
    with pytest.raises(TypeError, match="module: expected a torch.nn.Module, got dict"):
        align_query_key({})
    with pytest.raises(ValueError, match="model.aligned_attention"):
        load_config(None, ["model.aligned_attention=maybe"])
