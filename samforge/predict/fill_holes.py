"""Fill small holes in mask logits, as the official SAM 2 video predictor's ``fill_hole_area`` does.

A hole is an 8-connected component of background pixels (logit <= 0) with at most ``max_area`` pixels; its
logits become 0.1 (just foreground). The official code needs its CUDA extension for the connected components
(and skips the step, with a warning, without it); OpenCV's ``connectedComponentsWithStats`` does it on any
device's masks here, on the CPU: the masks are the small low-resolution ones (``S/4 x S/4``).
``small_components`` is the mechanism, shared with the SAM 2 automatic mask generator's hole/sprinkle cleanup.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

HOLE_FILL_LOGIT = 0.1


def small_components(binary: np.ndarray, max_area: float) -> np.ndarray:
    """Where ``binary`` (``H x W`` bool) is True and its 8-connected region has at most ``max_area`` pixels."""
    _, labels, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=8)
    small = stats[:, cv2.CC_STAT_AREA] <= max_area
    small[0] = False  # label 0: the pixels outside the regions examined
    return small[labels]


def fill_holes_in_mask_scores(mask: torch.Tensor, max_area: int) -> torch.Tensor:
    """``N x 1 x H x W`` logits with every background component of area <= ``max_area`` set to 0.1."""
    if not isinstance(mask, torch.Tensor) or mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must be an N x 1 x H x W tensor, got {getattr(mask, 'shape', type(mask).__name__)}")
    if not isinstance(max_area, int) or max_area <= 0:
        raise ValueError(f"max_area must be a positive int, got {max_area!r}")
    background = (mask <= 0).squeeze(1).cpu().numpy()
    holes = np.stack([small_components(bg, max_area) for bg in background])
    if not holes.any():
        return mask
    is_hole = torch.from_numpy(holes).to(mask.device).unsqueeze(1)
    return torch.where(is_hole, torch.tensor(HOLE_FILL_LOGIT, dtype=mask.dtype, device=mask.device), mask)
