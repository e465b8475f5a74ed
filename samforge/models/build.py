"""Building SAM models from named configurations, and the official-style ``sam_model_registry``."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from samforge.models.checkpoint import load_state_dict_strict, read_checkpoint
from samforge.models.configs import DEFAULT_SAM, SAM_CONFIGS, SamConfig
from samforge.models.image_encoder import ImageEncoderViT
from samforge.models.mask_decoder import MaskDecoder
from samforge.models.prompt_encoder import PromptEncoder
from samforge.models.sam import Sam
from samforge.models.transformer import TwoWayTransformer


def resolve_sam_config(config: SamConfig | str) -> tuple[str, SamConfig]:
    """A config name (``vit_b``, ``default``, ...) or a ``SamConfig`` -> (name, config)."""
    if isinstance(config, SamConfig):
        return "custom", config
    if not isinstance(config, str):
        raise TypeError(f"config must be a SamConfig or one of {sorted(SAM_CONFIGS)}, got {type(config).__name__}")
    name = DEFAULT_SAM if config == "default" else config
    if name not in SAM_CONFIGS:
        raise ValueError(f"unknown SAM model type {config!r}; expected one of {['default', *SAM_CONFIGS]}")
    return name, SAM_CONFIGS[name]


def guess_sam_config(state_dict: dict[str, torch.Tensor]) -> str | None:
    """Name of the registered configuration whose encoder shape matches a state dict, if any."""
    patch = state_dict.get("image_encoder.patch_embed.proj.weight")
    pos = state_dict.get("image_encoder.pos_embed")
    if patch is None:
        return None
    for key, value, ndim, form in (("image_encoder.patch_embed.proj.weight", patch, 4, "C x 3 x P x P"),
                                   ("image_encoder.pos_embed", pos, 4, "1 x G x G x C")):
        if value is not None and (not isinstance(value, torch.Tensor) or value.ndim != ndim):
            given = f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"state dict entry {key} must be a {ndim}-d tensor ({form}), got {given}")
    depth = len({k.split(".")[2] for k in state_dict if k.startswith("image_encoder.blocks.")})
    for name, cfg in SAM_CONFIGS.items():
        if (
            patch.shape[0] == cfg.encoder_embed_dim
            and patch.shape[-1] == cfg.patch_size
            and depth == cfg.encoder_depth
            and (pos is None or pos.shape[1] == cfg.image_embedding_size)
        ):
            return name
    return None


def build_sam(
    config: SamConfig | str = "vit_b",
    checkpoint: str | Path | None = None,
    *,
    device: str | torch.device | None = None,
) -> Sam:
    """Build a SAM model (in eval mode) and load ``checkpoint`` strictly when given."""
    name, cfg = resolve_sam_config(config)
    grid = cfg.image_embedding_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=cfg.image_size,
            patch_size=cfg.patch_size,
            embed_dim=cfg.encoder_embed_dim,
            depth=cfg.encoder_depth,
            num_heads=cfg.encoder_num_heads,
            mlp_ratio=cfg.mlp_ratio,
            out_chans=cfg.prompt_embed_dim,
            window_size=cfg.window_size,
            global_attn_indexes=cfg.encoder_global_attn_indexes,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=cfg.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(cfg.image_size, cfg.image_size),
            mask_in_chans=cfg.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            transformer_dim=cfg.prompt_embed_dim,
            transformer=TwoWayTransformer(
                depth=cfg.decoder_depth,
                embedding_dim=cfg.prompt_embed_dim,
                num_heads=cfg.decoder_num_heads,
                mlp_dim=cfg.decoder_mlp_dim,
            ),
            num_multimask_outputs=cfg.num_multimask_outputs,
            iou_head_depth=cfg.iou_head_depth,
            iou_head_hidden_dim=cfg.iou_head_hidden_dim,
        ),
    )
    sam.config = cfg
    sam.eval()
    if checkpoint is not None:
        state_dict, _ = read_checkpoint(checkpoint)
        load_sam_weights(sam, state_dict, f"checkpoint {checkpoint} (model type {name!r})", name)
    if device is not None:
        sam.to(device)
    return sam


def load_sam_weights(sam: Sam, state_dict: dict[str, torch.Tensor], source: str, name: str = "custom") -> None:
    """Strict load; on a mismatch the error also says which registered model the weights look like."""
    guess = guess_sam_config(state_dict)
    hint = f"The file looks like a {guess!r} checkpoint." if guess not in (None, name) else ""
    load_state_dict_strict(sam, state_dict, source=source, hint=hint)


def load_sam(
    checkpoint: str | Path,
    model_type: SamConfig | str | None = None,
    *,
    device: str | torch.device | None = None,
) -> Sam:
    """Load a SAM from any checkpoint file: samforge training checkpoints carry their configuration
    (``sam_config``); official files need ``model_type`` (guessed from the weights' shapes when omitted)."""
    state_dict, extras = read_checkpoint(checkpoint)
    sam = sam_from_weights(state_dict, extras, model_type, f"checkpoint {checkpoint}")
    if device is not None:
        sam.to(device)
    return sam


def sam_from_weights(state_dict: dict[str, torch.Tensor], extras: dict, model_type: SamConfig | str | None,
                     source: str) -> Sam:
    """The SAM of a read checkpoint (``read_checkpoint``'s two parts): the configuration it records, else
    ``model_type``, else the registered one its shapes match."""
    record = extras.get("sam_config")
    if isinstance(record, dict) and record.get("family", "sam") != "sam":
        raise ValueError(f"{source} holds a {record['family']!r} model, not SAM (v1): "
                         "load it with samforge.models.load_model")
    if model_type is None and isinstance(record, dict):
        config: SamConfig | str = SamConfig.from_dict(record)
    elif model_type is not None:
        config = model_type
    else:
        guess = guess_sam_config(state_dict)
        if guess is None:
            raise ValueError(
                f"{source} does not say which model it is and its shapes match no registered "
                f"configuration; pass model_type (one of {sorted(SAM_CONFIGS)})"
            )
        config = guess
    sam = build_sam(config)
    load_sam_weights(sam, state_dict, source, resolve_sam_config(config)[0])
    return sam


class _Registry(dict):
    def __missing__(self, key: str) -> nn.Module:
        raise KeyError(f"unknown SAM model type {key!r}; expected one of {sorted(self)}")


sam_model_registry: dict[str, Callable[..., Sam]] = _Registry(
    {"default": partial(build_sam, DEFAULT_SAM), **{name: partial(build_sam, name) for name in SAM_CONFIGS}}
)
