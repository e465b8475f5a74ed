"""Prediction: SamPredictor, resizing transforms and input checks. Knows models only."""

from samforge.predict.predictor import SamPredictor
from samforge.predict.transforms import ResizeLongestSide

__all__ = ["ResizeLongestSide", "SamPredictor"]
