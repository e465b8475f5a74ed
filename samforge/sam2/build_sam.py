"""``sam2.build_sam`` under samforge: the SAM 2 builders (``*_hf`` ones on local weights, see
``samforge.predict.pretrained``)."""

from samforge.models.sam2 import build_sam2
from samforge.predict.pretrained import HF_MODEL_ID_TO_FILENAMES, build_sam2_hf
from samforge.predict.sam2_video_predictor import build_sam2_video_predictor, build_sam2_video_predictor_hf

__all__ = [
    "HF_MODEL_ID_TO_FILENAMES",
    "build_sam2",
    "build_sam2_hf",
    "build_sam2_video_predictor",
    "build_sam2_video_predictor_hf",
]
