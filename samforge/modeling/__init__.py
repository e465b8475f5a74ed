"""``segment_anything.modeling`` under samforge: SAM's modules (``samforge.models``), re-exported.

The classes hold the official state-dict names and compute the official results; their constructors take
samforge's arguments (no ``norm_layer`` / ``act_layer``: SAM's are fixed), see ``samforge.models.build``.
"""

from samforge.models.image_encoder import ImageEncoderViT
from samforge.models.mask_decoder import MaskDecoder
from samforge.models.prompt_encoder import PromptEncoder
from samforge.models.sam import Sam
from samforge.models.transformer import TwoWayTransformer

__all__ = ["ImageEncoderViT", "MaskDecoder", "PromptEncoder", "Sam", "TwoWayTransformer"]
