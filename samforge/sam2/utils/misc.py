"""``sam2.utils.misc`` under samforge: ``load_video_frames`` and ``fill_holes_in_mask_scores``."""

from samforge.predict.fill_holes import fill_holes_in_mask_scores
from samforge.predict.load_video_frames import load_video_frames

__all__ = ["fill_holes_in_mask_scores", "load_video_frames"]
