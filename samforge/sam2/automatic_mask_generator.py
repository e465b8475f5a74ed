"""``sam2.automatic_mask_generator`` under samforge."""

from samforge.predict.sam2_automatic_mask_generator import SAM2AutomaticMaskGenerator

__all__ = ["SAM2AutomaticMaskGenerator"]
