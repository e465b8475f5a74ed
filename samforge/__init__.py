"""samforge: Segment Anything, end to end.

Drop-in names of the official packages::

    from samforge import sam_model_registry, SamPredictor
    from samforge import build_sam2, SAM2ImagePredictor, SAM2AutomaticMaskGenerator
    from samforge import SAM2VideoPredictor, build_sam2_video_predictor
"""

import os

# OpenMP threads that spin while waiting make every op ~30x slower when another process (a DataLoader
# worker, a second job) shares the cores, as on small CPU machines. Only effective before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from samforge.models import SAM2_CONFIGS, SAM_CONFIGS, SAM2Base, Sam, SamConfig, build_sam, build_sam2, sam_model_registry
from samforge.predict import (
    ResizeLongestSide,
    SAM2AutomaticMaskGenerator,
    SAM2ImagePredictor,
    SAM2VideoPredictor,
    SamAutomaticMaskGenerator,
    SamPredictor,
    build_sam2_video_predictor,
)

__version__ = "0.1.0"

__all__ = [
    "SAM2_CONFIGS",
    "SAM_CONFIGS",
    "ResizeLongestSide",
    "SAM2AutomaticMaskGenerator",
    "SAM2Base",
    "SAM2ImagePredictor",
    "SAM2VideoPredictor",
    "Sam",
    "SamAutomaticMaskGenerator",
    "SamConfig",
    "SamPredictor",
    "build_sam",
    "build_sam2",
    "build_sam2_video_predictor",
    "sam_model_registry",
]
