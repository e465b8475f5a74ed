"""``segment_anything.utils.transforms`` under samforge: ``ResizeLongestSide`` (the object of
``samforge.predict.transforms``, re-exported)."""

from samforge.predict.transforms import ResizeLongestSide

__all__ = ["ResizeLongestSide"]
