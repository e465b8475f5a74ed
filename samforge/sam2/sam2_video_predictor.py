"""``sam2.sam2_video_predictor`` under samforge. ``SAM2VideoPredictorVOS`` is ``SAM2VideoPredictor`` (the
official one only adds ``torch.compile``)."""

from samforge.predict.sam2_video_predictor import SAM2VideoPredictor, SAM2VideoPredictorVOS

__all__ = ["SAM2VideoPredictor", "SAM2VideoPredictorVOS"]
