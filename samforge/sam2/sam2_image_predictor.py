"""``sam2.sam2_image_predictor`` under samforge."""

from samforge.predict.sam2_predictor import SAM2ImagePredictor

__all__ = ["SAM2ImagePredictor"]
