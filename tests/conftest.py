"""Shared fixtures: official (oracle) and samforge models with the same random weights."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from samforge.models.build import build_sam
from samforge.models.configs import SAM_CONFIGS, SamConfig


@pytest.fixture(autouse=True)
def bf16_runs_as_bf16(monkeypatch):
    """``precision="bf16"`` on a CPU without native bf16 runs "fp32-fast" (samforge.predict.precision); tests of the
    bf16 path run it for real on every CPU (emulated, slowly, where there is no native bf16), so the capability
    query says yes. tests/test_cpu_precision.py patches it back to test the fallback itself."""
    monkeypatch.setattr("samforge.predict.precision.native_cpu_bf16", lambda: True)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a test module (ask for it with ``pytest.mark.usefixtures("one_thread")``). On 2
    cores shared with other jobs a second, descheduled OpenMP thread stalls every op (measured 10-20x slower on
    the small-model tests); ours and the official code run in the same setting, so comparisons are unaffected."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def official_sam(cfg: SamConfig):
    """The official ``segment_anything`` Sam built with a samforge configuration (any size)."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    grid = cfg.image_embedding_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=cfg.encoder_depth,
            embed_dim=cfg.encoder_embed_dim,
            img_size=cfg.image_size,
            mlp_ratio=cfg.mlp_ratio,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=cfg.encoder_num_heads,
            patch_size=cfg.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=cfg.encoder_global_attn_indexes,
            window_size=cfg.window_size,
            out_chans=cfg.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=cfg.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(cfg.image_size, cfg.image_size),
            mask_in_chans=cfg.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=cfg.num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=cfg.decoder_depth,
                embedding_dim=cfg.prompt_embed_dim,
                mlp_dim=cfg.decoder_mlp_dim,
                num_heads=cfg.decoder_num_heads,
            ),
            transformer_dim=cfg.prompt_embed_dim,
            iou_head_depth=cfg.iou_head_depth,
            iou_head_hidden_dim=cfg.iou_head_hidden_dim,
        ),
    )
    return sam.eval()


def perturb_(model: torch.nn.Module, seed: int) -> None:
    """Move every parameter off its initial value (position embeddings and rel-pos tables start at zero,
    norms at one), so a parity test exercises all of them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


def make_pair(config: str | SamConfig, seed: int):
    """(official, samforge) models holding identical random weights."""
    cfg = SAM_CONFIGS[config] if isinstance(config, str) else config
    torch.manual_seed(seed)
    official = official_sam(cfg)
    perturb_(official, seed)
    ours = build_sam(cfg)
    ours.load_state_dict(official.state_dict(), strict=True)
    return official, ours


@pytest.fixture(scope="session")
def vit_b_pair():
    return make_pair("vit_b", seed=0)


@pytest.fixture(scope="session")
def small_pair():
    return make_pair("vit_small", seed=1)
