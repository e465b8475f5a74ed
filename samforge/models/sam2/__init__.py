"""SAM 2: Hiera image encoder with an FPN neck, SAM heads, memory attention and memory encoder.

Module and state-dict names follow the official ``sam2`` package, so its checkpoints load as they are.
"""

from samforge.models.sam2.build import build_sam2, build_sam2_model, guess_sam2_config
from samforge.models.sam2.config import SAM2_CONFIGS, Sam2Config, load_sam2_config, resolve_sam2_config
from samforge.models.sam2.sam2_base import SAM2Base

__all__ = [
    "SAM2Base",
    "SAM2_CONFIGS",
    "Sam2Config",
    "build_sam2",
    "build_sam2_model",
    "guess_sam2_config",
    "load_sam2_config",
    "resolve_sam2_config",
]
