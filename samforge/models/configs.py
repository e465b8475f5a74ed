"""Named SAM configurations as data. A configuration fully determines the architecture."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class SamConfig:
    """Architecture of a SAM (v1) model. Defaults are the official ones shared by vit_b/l/h."""

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    mlp_ratio: float = 4.0
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_num_heads: int = 8
    decoder_mlp_dim: int = 2048
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "encoder_global_attn_indexes", tuple(self.encoder_global_attn_indexes))
        if self.image_size % self.patch_size != 0:
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        if self.encoder_embed_dim % self.encoder_num_heads != 0:
            raise ValueError(
                f"encoder_embed_dim {self.encoder_embed_dim} must be divisible by "
                f"encoder_num_heads {self.encoder_num_heads}"
            )
        bad = [i for i in self.encoder_global_attn_indexes if not 0 <= i < self.encoder_depth]
        if bad:
            raise ValueError(f"encoder_global_attn_indexes {bad} outside 0..{self.encoder_depth - 1}")

    @property
    def image_embedding_size(self) -> int:
        return self.image_size // self.patch_size

    def to_dict(self) -> dict:
        d = asdict(self)
        d["encoder_global_attn_indexes"] = list(self.encoder_global_attn_indexes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SamConfig":
        d = dict(d)
        d["encoder_global_attn_indexes"] = tuple(d["encoder_global_attn_indexes"])
        return cls(**d)


SAM_CONFIGS: dict[str, SamConfig] = {
    "vit_h": SamConfig(1280, 32, 16, (7, 15, 23, 31), description="official SAM ViT-H (636M parameters)"),
    "vit_l": SamConfig(1024, 24, 16, (5, 11, 17, 23), description="official SAM ViT-L (308M parameters)"),
    "vit_b": SamConfig(768, 12, 12, (2, 5, 8, 11), description="official SAM ViT-B (94M parameters)"),
    "vit_small": SamConfig(
        256,
        6,
        8,
        (2, 5),
        image_size=256,
        window_size=8,
        prompt_embed_dim=128,
        decoder_mlp_dim=1024,
        iou_head_hidden_dim=128,
        description="small ViT at 256 input, narrow decoder: for training from scratch on a CPU and fast tests",
    ),
}
DEFAULT_SAM = "vit_h"  # what the official registry calls "default"
