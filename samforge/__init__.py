"""samforge: Segment Anything, end to end.

Drop-in names of the official packages::

    from samforge import sam_model_registry, SamPredictor
    from samforge import build_sam2, SAM2ImagePredictor, SAM2AutomaticMaskGenerator
    from samforge import SAM2VideoPredictor, build_sam2_video_predictor

and the official module paths: ``segment_anything.X`` is ``samforge.X`` (``samforge.utils.transforms``,
``samforge.utils.onnx``, ``samforge.build_sam``, ``samforge.modeling``, ...) and ``sam2.X`` is ``samforge.sam2.X``;
``samforge.compat`` (opt-in) aliases the official names themselves. See README, "Drop-in".
"""

import os

# OpenMP threads that spin while waiting make every op ~30x slower when another process (a DataLoader
# worker, a second job) shares the cores, as on small CPU machines. Only effective before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# the module samforge.build_sam (official builder names) is imported before the function build_sam is bound
from samforge.build_sam import build_sam_vit_b, build_sam_vit_h, build_sam_vit_l
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
from samforge.predict.pretrained import build_sam2_hf
from samforge.predict.sam2_video_predictor import SAM2VideoPredictorVOS, build_sam2_video_predictor_hf

__version__ = "0.1.0"

__all__ = [
    "SAM2_CONFIGS",
    "SAM_CONFIGS",
    "ResizeLongestSide",
    "SAM2AutomaticMaskGenerator",
    "SAM2Base",
    "SAM2ImagePredictor",
    "SAM2VideoPredictor",
    "SAM2VideoPredictorVOS",
    "Sam",
    "SamAutomaticMaskGenerator",
    "SamConfig",
    "SamPredictor",
    "build_sam",
    "build_sam2",
    "build_sam2_hf",
    "build_sam2_video_predictor",
    "build_sam2_video_predictor_hf",
    "build_sam_vit_b",
    "build_sam_vit_h",
    "build_sam_vit_l",
    "sam_model_registry",
]
