"""Prediction: SamPredictor, SamAutomaticMaskGenerator, SAM2ImagePredictor, SAM2AutomaticMaskGenerator, resizing
transforms and input checks. Knows models only."""

from samforge.predict.automatic_mask_generator import SamAutomaticMaskGenerator
from samforge.predict.predictor import SamPredictor
from samforge.predict.sam2_automatic_mask_generator import SAM2AutomaticMaskGenerator
from samforge.predict.sam2_predictor import SAM2ImagePredictor
from samforge.predict.sam2_transforms import SAM2Transforms
from samforge.predict.sam2_video_predictor import SAM2VideoPredictor, build_sam2_video_predictor
from samforge.predict.transforms import ResizeLongestSide

__all__ = [
    "ResizeLongestSide",
    "SAM2AutomaticMaskGenerator",
    "SAM2ImagePredictor",
    "SAM2Transforms",
    "SAM2VideoPredictor",
    "SamAutomaticMaskGenerator",
    "SamPredictor",
    "build_sam2_video_predictor",
]
