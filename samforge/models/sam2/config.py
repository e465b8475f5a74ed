"""SAM 2 configurations: a typed schema (dataclasses, whose defaults are the official constructors'
defaults), the packaged YAML files that set each model, and name resolution.

A YAML file may name a ``base`` file (relative to itself) that it is merged onto; keys are the official
constructor arguments, so official-style overrides such as
``++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true`` apply as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

CONFIG_DIR = Path(__file__).parent / "configs"
SAM2_CONFIGS: dict[str, str] = {  # name -> file under CONFIG_DIR
    f"{version}_hiera_{size}": f"{version}/{version}_hiera_{size}.yaml"
    for version in ("sam2.1", "sam2")
    for size in ("t", "s", "b+", "l")
}


@dataclass
class PositionEncodingConfig:
    num_pos_feats: int = 256
    temperature: int = 10000
    normalize: bool = True
    scale: Optional[float] = None


@dataclass
class TrunkConfig:  # Hiera
    embed_dim: int = 96
    num_heads: int = 1
    drop_path_rate: float = 0.0
    q_pool: int = 3
    q_stride: List[int] = field(default_factory=lambda: [2, 2])
    stages: List[int] = field(default_factory=lambda: [2, 3, 16, 3])
    dim_mul: float = 2.0
    head_mul: float = 2.0
    window_pos_embed_bkg_spatial_size: List[int] = field(default_factory=lambda: [14, 14])
    window_spec: List[int] = field(default_factory=lambda: [8, 4, 14, 7])
    global_att_blocks: List[int] = field(default_factory=lambda: [12, 16, 20])
    return_interm_layers: bool = True


@dataclass
class NeckConfig:  # FpnNeck
    backbone_channel_list: List[int] = field(default_factory=list)
    position_encoding: PositionEncodingConfig = field(default_factory=PositionEncodingConfig)
    d_model: int = 256
    kernel_size: int = 1
    stride: int = 1
    padding: int = 0
    fpn_interp_model: str = "bilinear"
    fuse_type: str = "sum"
    fpn_top_down_levels: Optional[List[int]] = None


@dataclass
class ImageEncoderConfig:
    trunk: TrunkConfig = field(default_factory=TrunkConfig)
    neck: NeckConfig = field(default_factory=NeckConfig)
    scalp: int = 0


@dataclass
class RoPEAttentionConfig:
    embedding_dim: int = 256
    num_heads: int = 1
    downsample_rate: int = 1
    dropout: float = 0.0
    kv_in_dim: Optional[int] = None
    rope_theta: float = 10000.0
    rope_k_repeat: bool = False
    feat_sizes: List[int] = field(default_factory=lambda: [64, 64])


@dataclass
class MemoryAttentionLayerConfig:
    activation: str = "relu"
    d_model: int = 256
    dim_feedforward: int = 2048
    dropout: float = 0.1
    pos_enc_at_attn: bool = False
    pos_enc_at_cross_attn_keys: bool = True
    pos_enc_at_cross_attn_queries: bool = False
    self_attention: RoPEAttentionConfig = field(default_factory=RoPEAttentionConfig)
    cross_attention: RoPEAttentionConfig = field(default_factory=RoPEAttentionConfig)


@dataclass
class MemoryAttentionConfig:
    d_model: int = 256
    pos_enc_at_input: bool = True
    num_layers: int = 4
    batch_first: bool = True
    layer: MemoryAttentionLayerConfig = field(default_factory=MemoryAttentionLayerConfig)


@dataclass
class MaskDownSamplerConfig:
    embed_dim: int = 256
    kernel_size: int = 4
    stride: int = 4
    padding: int = 0
    total_stride: int = 16


@dataclass
class CXBlockConfig:
    dim: int = 256
    kernel_size: int = 7
    padding: int = 3
    drop_path: float = 0.0
    layer_scale_init_value: float = 1e-6
    use_dwconv: bool = True


@dataclass
class FuserConfig:
    layer: CXBlockConfig = field(default_factory=CXBlockConfig)
    num_layers: int = 2
    dim: Optional[int] = None
    input_projection: bool = False


@dataclass
class MemoryEncoderConfig:
    out_dim: int = 64
    in_dim: int = 256
    position_encoding: PositionEncodingConfig = field(default_factory=lambda: PositionEncodingConfig(num_pos_feats=64))
    mask_downsampler: MaskDownSamplerConfig = field(default_factory=MaskDownSamplerConfig)
    fuser: FuserConfig = field(default_factory=FuserConfig)


@dataclass
class MaskDecoderExtraArgs:
    dynamic_multimask_via_stability: bool = False
    dynamic_multimask_stability_delta: float = 0.05
    dynamic_multimask_stability_thresh: float = 0.98


@dataclass
class ModelConfig:  # SAM2Base
    image_encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    memory_attention: MemoryAttentionConfig = field(default_factory=MemoryAttentionConfig)
    memory_encoder: MemoryEncoderConfig = field(default_factory=MemoryEncoderConfig)
    num_maskmem: int = 7
    image_size: int = 512
    backbone_stride: int = 16
    sigmoid_scale_for_mem_enc: float = 1.0
    sigmoid_bias_for_mem_enc: float = 0.0
    binarize_mask_from_pts_for_mem_enc: bool = False
    use_mask_input_as_output_without_sam: bool = False
    max_cond_frames_in_attn: int = -1
    directly_add_no_mem_embed: bool = False
    use_high_res_features_in_sam: bool = False
    multimask_output_in_sam: bool = False
    multimask_min_pt_num: int = 1
    multimask_max_pt_num: int = 1
    multimask_output_for_tracking: bool = False
    use_multimask_token_for_obj_ptr: bool = False
    iou_prediction_use_sigmoid: bool = False
    memory_temporal_stride_for_eval: int = 1
    non_overlap_masks_for_mem_enc: bool = False
    use_obj_ptrs_in_encoder: bool = False
    max_obj_ptrs_in_encoder: int = 16
    add_tpos_enc_to_obj_ptrs: bool = True
    proj_tpos_enc_in_obj_ptrs: bool = False
    use_signed_tpos_enc_to_obj_ptrs: bool = False
    only_obj_ptrs_in_the_past_for_eval: bool = False
    pred_obj_scores: bool = False
    pred_obj_scores_mlp: bool = False
    fixed_no_obj_ptr: bool = False
    soft_no_obj_ptr: bool = False
    use_mlp_for_obj_ptr_proj: bool = False
    no_obj_embed_spatial: bool = False
    # the official default is None, which means the decoder's own defaults: these values
    sam_mask_decoder_extra_args: MaskDecoderExtraArgs = field(default_factory=MaskDecoderExtraArgs)
    compile_image_encoder: bool = False  # accepted for compatibility; samforge never compiles
    # SAM2VideoPredictor's own settings (the official video build sets them on the model; SAM2Base ignores them)
    fill_hole_area: int = 0
    non_overlap_masks: bool = False
    clear_non_cond_mem_around_input: bool = False
    add_all_frames_to_correct_as_cond: bool = False


VIDEO_PREDICTOR_KEYS = ("fill_hole_area", "non_overlap_masks", "clear_non_cond_mem_around_input",
                        "add_all_frames_to_correct_as_cond")


@dataclass
class Sam2Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    base: Optional[str] = None  # the file this one was merged onto (informational once loaded)


def resolve_sam2_config(config_file: str | Path) -> tuple[str, Path]:
    """An official config name in any of its spellings (``configs/sam2.1/sam2.1_hiera_t.yaml``,
    ``sam2.1_hiera_t.yaml``, ``sam2.1_hiera_t``) or a path to a YAML file -> (name, file)."""
    if not isinstance(config_file, (str, Path)):
        raise TypeError(f"config_file must be a config name or a YAML path, got {type(config_file).__name__}")
    name = Path(str(config_file)).name.removesuffix(".yaml")
    if name in SAM2_CONFIGS:
        return name, CONFIG_DIR / SAM2_CONFIGS[name]
    path = Path(config_file)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return "custom", path
    raise ValueError(
        f"unknown SAM 2 config {str(config_file)!r}; expected one of {list(SAM2_CONFIGS)} "
        "(also as configs/<version>/<name>.yaml) or the path of a YAML file"
    )


def _read_with_bases(path: Path, seen: tuple[Path, ...] = ()) -> DictConfig:
    if path in seen:
        raise ValueError(f"config {path} names itself as a base (through {[str(p) for p in seen]})")
    cfg = OmegaConf.load(path)
    base = cfg.get("base")
    if base is None:
        return cfg
    return OmegaConf.merge(_read_with_bases(path.parent / base, (*seen, path)), cfg)


def _parse_override(override: str) -> str:
    """Hydra-style ``key=value`` with an optional ``+``/``++`` prefix -> an OmegaConf dotlist entry."""
    if not isinstance(override, str) or "=" not in override or override.startswith("~"):
        raise ValueError(f"overrides must be 'key=value' (optionally prefixed with + or ++), got {override!r}")
    return override.lstrip("+")


def load_sam2_config(config_file: str | Path, overrides: Sequence[str] = ()) -> tuple[str, Sam2Config]:
    """Read a configuration, merged onto the schema, then the overrides: (name, typed config)."""
    name, path = resolve_sam2_config(config_file)
    if isinstance(overrides, str):
        raise TypeError(f"overrides must be a list of 'key=value' strings, got the string {overrides!r}")
    dotlist = [_parse_override(o) for o in overrides]
    try:
        schema = OmegaConf.structured(Sam2Config)
        merged = OmegaConf.merge(schema, _read_with_bases(path), OmegaConf.from_dotlist(dotlist))
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise ValueError(f"invalid SAM 2 config {name!r} ({path}) with overrides {list(overrides)}: {e}") from e
    if not cfg.model.image_encoder.neck.backbone_channel_list:
        raise ValueError(f"SAM 2 config {name!r} ({path}) sets no model.image_encoder.neck.backbone_channel_list")
    return name, cfg
