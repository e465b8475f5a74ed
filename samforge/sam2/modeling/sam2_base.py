"""``sam2.modeling.sam2_base`` under samforge."""

from samforge.models.sam2.sam2_base import NO_OBJ_SCORE, SAM2Base

__all__ = ["NO_OBJ_SCORE", "SAM2Base"]
