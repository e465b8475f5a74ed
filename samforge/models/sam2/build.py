"""Building SAM 2 models from their configurations, and loading official checkpoints strictly."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import torch

from samforge.models.checkpoint import load_state_dict_strict, read_state_dict
from samforge.models.sam2.config import SAM2_CONFIGS, VIDEO_PREDICTOR_KEYS, ModelConfig, Sam2Config, load_sam2_config
from samforge.models.sam2.hiera import Hiera
from samforge.models.sam2.image_encoder import FpnNeck, ImageEncoder
from samforge.models.sam2.memory_attention import MemoryAttention, MemoryAttentionLayer
from samforge.models.sam2.memory_encoder import CXBlock, Fuser, MaskDownSampler, MemoryEncoder
from samforge.models.sam2.position_encoding import PositionEmbeddingSine
from samforge.models.sam2.rope import RoPEAttention
from samforge.models.sam2.sam2_base import SAM2Base

# what the official build_sam2 adds with apply_postprocessing=True (image models)
POSTPROCESSING_OVERRIDES = (
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
)


def _image_encoder(cfg: ModelConfig) -> ImageEncoder:
    enc = cfg.image_encoder
    t, n = enc.trunk, enc.neck
    trunk = Hiera(
        embed_dim=t.embed_dim,
        num_heads=t.num_heads,
        drop_path_rate=t.drop_path_rate,
        q_pool=t.q_pool,
        q_stride=tuple(t.q_stride),
        stages=tuple(t.stages),
        dim_mul=t.dim_mul,
        head_mul=t.head_mul,
        window_pos_embed_bkg_spatial_size=tuple(t.window_pos_embed_bkg_spatial_size),
        window_spec=tuple(t.window_spec),
        global_att_blocks=tuple(t.global_att_blocks),
        return_interm_layers=t.return_interm_layers,
    )
    neck = FpnNeck(
        position_encoding=PositionEmbeddingSine(**asdict(n.position_encoding)),
        d_model=n.d_model,
        backbone_channel_list=n.backbone_channel_list,
        kernel_size=n.kernel_size,
        stride=n.stride,
        padding=n.padding,
        fpn_interp_model=n.fpn_interp_model,
        fuse_type=n.fuse_type,
        fpn_top_down_levels=n.fpn_top_down_levels,
    )
    return ImageEncoder(trunk, neck, scalp=enc.scalp)


def _memory_attention(cfg: ModelConfig) -> MemoryAttention:
    m = cfg.memory_attention
    layer_cfg = asdict(m.layer)
    self_attn, cross_attn = layer_cfg.pop("self_attention"), layer_cfg.pop("cross_attention")
    for attn in (self_attn, cross_attn):
        attn["feat_sizes"] = tuple(attn["feat_sizes"])
    layer = MemoryAttentionLayer(
        self_attention=RoPEAttention(**self_attn), cross_attention=RoPEAttention(**cross_attn), **layer_cfg
    )
    return MemoryAttention(
        d_model=m.d_model,
        pos_enc_at_input=m.pos_enc_at_input,
        layer=layer,
        num_layers=m.num_layers,
        batch_first=m.batch_first,
    )


def _memory_encoder(cfg: ModelConfig) -> MemoryEncoder:
    m = cfg.memory_encoder
    return MemoryEncoder(
        out_dim=m.out_dim,
        mask_downsampler=MaskDownSampler(**asdict(m.mask_downsampler)),
        fuser=Fuser(CXBlock(**asdict(m.fuser.layer)), m.fuser.num_layers, m.fuser.dim, m.fuser.input_projection),
        position_encoding=PositionEmbeddingSine(**asdict(m.position_encoding)),
        in_dim=m.in_dim,
    )


def build_sam2_model(cfg: Sam2Config) -> SAM2Base:
    """A SAM2Base with random weights from a typed configuration."""
    m = cfg.model
    skip = {"image_encoder", "memory_attention", "memory_encoder", "sam_mask_decoder_extra_args"}
    skip |= {"compile_image_encoder", *VIDEO_PREDICTOR_KEYS}  # accepted in configs, not model arguments
    scalars = {k: v for k, v in asdict(m).items() if k not in skip}
    return SAM2Base(
        image_encoder=_image_encoder(m),
        memory_attention=_memory_attention(m),
        memory_encoder=_memory_encoder(m),
        sam_mask_decoder_extra_args=asdict(m.sam_mask_decoder_extra_args),
        **scalars,
    )


def guess_sam2_config(state_dict: dict[str, torch.Tensor]) -> str | None:
    """Name of the packaged configuration whose shapes match a SAM 2 state dict, if any."""
    patch = state_dict.get("image_encoder.trunk.patch_embed.proj.weight")
    if patch is None:
        return None
    depth = len({k.split(".")[3] for k in state_dict if k.startswith("image_encoder.trunk.blocks.")})
    version = "sam2.1" if "no_obj_embed_spatial" in state_dict else "sam2"
    for name in SAM2_CONFIGS:
        if not name.startswith(version + "_"):
            continue
        trunk = load_sam2_config(name)[1].model.image_encoder.trunk
        if trunk.embed_dim == patch.shape[0] and sum(trunk.stages) == depth:
            return name
    return None


def build_sam2(
    config_file: str | Path,
    ckpt_path: str | Path | None = None,
    device: str | torch.device | None = None,
    mode: str = "eval",
    hydra_overrides_extra: Sequence[str] = (),
    apply_postprocessing: bool = True,
    **kwargs: Any,
) -> SAM2Base:
    """Build a SAM 2 model as the official ``build_sam2`` does and load ``ckpt_path`` strictly when given.

    ``config_file``: an official config name (``configs/sam2.1/sam2.1_hiera_t.yaml``, ``sam2.1_hiera_t``, ...)
    or a YAML file of samforge's schema. ``device``: default CUDA when available, else CPU (the official
    default is ``"cuda"``). ``mode="eval"`` puts the model in eval mode. ``apply_postprocessing`` turns on
    the decoder's dynamic multimask fall-back, as the official build does. Other keyword arguments are
    accepted and ignored, as in the official function. The model carries its resolved configuration
    (``model.config``, a ``Sam2Config``) and its name (``model.config_name``; ``"custom"`` for a file).
    """
    if mode not in ("eval", "train"):
        raise ValueError(f"mode must be 'eval' or 'train', got {mode!r}")
    overrides = list(hydra_overrides_extra)
    if apply_postprocessing:
        overrides += POSTPROCESSING_OVERRIDES
    name, cfg = load_sam2_config(config_file, overrides)
    state_dict = read_state_dict(ckpt_path) if ckpt_path is not None else None  # a bad file fails fast
    model = build_sam2_model(cfg)
    model.config = cfg
    model.config_name = name
    if state_dict is not None:
        guess = guess_sam2_config(state_dict)
        hint = f"The file looks like a {guess!r} checkpoint." if guess not in (None, name) else ""
        load_state_dict_strict(model, state_dict, source=f"checkpoint {ckpt_path} (config {name!r})", hint=hint)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device)
    if mode == "eval":
        model.eval()
    return model
