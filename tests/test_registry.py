"""The registry holds the official configurations with the official parameter counts and state-dict layout."""

from __future__ import annotations

import pytest
import torch
from segment_anything import sam_model_registry as official_registry

from samforge import SAM_CONFIGS, SamConfig, build_sam, sam_model_registry

# Official parameter counts, read off the official builders.
OFFICIAL_PARAMS = {"vit_b": 93_735_472, "vit_l": 312_342_832, "vit_h": 641_090_608}


def layout(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h"])
def test_official_configs_match_official_layout(name):
    with torch.device("meta"):
        ours = sam_model_registry[name]()
        official = official_registry[name]()
    assert layout(ours) == layout(official)
    n_ours = sum(p.numel() for p in ours.parameters())
    assert n_ours == sum(p.numel() for p in official.parameters()) == OFFICIAL_PARAMS[name]


def test_default_is_vit_h_and_names():
    assert {"default", "vit_b", "vit_l", "vit_h", "vit_small"} <= set(sam_model_registry)
    with torch.device("meta"):
        assert layout(sam_model_registry["default"]()) == layout(sam_model_registry["vit_h"]())
    with pytest.raises(KeyError, match="vit_b"):
        sam_model_registry["vit_x"]


def test_small_config_is_small_and_runs():
    cfg = SAM_CONFIGS["vit_small"]
    assert cfg.image_size == 256 and 4 <= cfg.encoder_depth <= 6 and 192 <= cfg.encoder_embed_dim <= 384
    torch.manual_seed(0)
    sam = sam_model_registry["vit_small"]()
    assert not sam.training
    n = sum(p.numel() for p in sam.parameters())
    assert n < 15_000_000
    with torch.no_grad():
        emb = sam.image_encoder(torch.randn(2, 3, 256, 256))
    assert emb.shape == (2, cfg.prompt_embed_dim, 16, 16)


def test_configs_are_data():
    cfg = SAM_CONFIGS["vit_b"]
    assert SamConfig.from_dict(cfg.to_dict()) == cfg
    custom = SamConfig(128, 2, 4, (1,), image_size=128, window_size=4, prompt_embed_dim=64, decoder_mlp_dim=128)
    model = build_sam(custom)
    assert model.image_encoder.img_size == 128 and len(model.image_encoder.blocks) == 2
    with torch.no_grad():
        assert model.image_encoder(torch.zeros(1, 3, 128, 128)).shape == (1, 64, 8, 8)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(image_size=250), "multiple of patch_size"),
        (dict(encoder_num_heads=7), "divisible"),
        (dict(encoder_global_attn_indexes=(9,)), "outside"),
    ],
)
def test_bad_configs(kwargs, match):
    base = dict(encoder_embed_dim=128, encoder_depth=2, encoder_num_heads=4, encoder_global_attn_indexes=(1,))
    with pytest.raises(ValueError, match=match):
        SamConfig(**{**base, **kwargs})


def test_build_sam_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown SAM model type"):
        build_sam("vit_q")
    with pytest.raises(TypeError, match="SamConfig"):
        build_sam(3)
