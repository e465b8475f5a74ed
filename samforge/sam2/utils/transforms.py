"""``sam2.utils.transforms`` under samforge."""

from samforge.predict.sam2_transforms import SAM2Transforms

__all__ = ["SAM2Transforms"]
