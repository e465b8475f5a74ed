"""samforge: Segment Anything, end to end.

Drop-in names of the official packages::

    from samforge import sam_model_registry, SamPredictor
"""

from samforge.models import SAM_CONFIGS, Sam, SamConfig, build_sam, sam_model_registry
from samforge.predict import ResizeLongestSide, SamPredictor

__version__ = "0.1.0"

__all__ = ["SAM_CONFIGS", "ResizeLongestSide", "Sam", "SamConfig", "SamPredictor", "build_sam", "sam_model_registry"]
