"""SAM 2's image and prompt transforms: images resized to a square of the model's size (no padding,
unlike SAM), prompts scaled by the same factors, and the masks' post-processing.

Matches the official ``SAM2Transforms`` bit for bit (the same torchvision operations).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SAM2Transforms:
    """``resolution``: the model's square input size. ``max_hole_area`` / ``max_sprinkle_area`` ask for
    small holes / specks in the low-res masks to be removed; like the official code on CPU (without its
    CUDA connected-components extension) samforge warns and skips that step."""

    def __init__(
        self, resolution: int, mask_threshold: float, max_hole_area: float = 0.0, max_sprinkle_area: float = 0.0
    ) -> None:
        self.resolution = resolution
        self.mask_threshold = mask_threshold
        self.max_hole_area = max_hole_area
        self.max_sprinkle_area = max_sprinkle_area
        self.mean = list(IMAGENET_MEAN)
        self.std = list(IMAGENET_STD)

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        """``H x W x 3`` uint8 image -> normalized ``3 x resolution x resolution`` float tensor."""
        x = TF.to_tensor(image)
        x = TF.resize(x, [self.resolution, self.resolution], antialias=True)
        return TF.normalize(x, self.mean, self.std)

    def forward_batch(self, images: list[np.ndarray]) -> torch.Tensor:
        return torch.stack([self(image) for image in images], dim=0)

    def transform_coords(
        self, coords: torch.Tensor, normalize: bool = False, orig_hw: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Coordinates ``... x 2`` (x, y) to the model's input frame; ``normalize``: they are in pixels of an
        image of ``orig_hw`` (else already in [0, 1])."""
        if normalize:
            if orig_hw is None:
                raise ValueError("orig_hw is needed to normalize coordinates")
            h, w = orig_hw
            coords = coords.clone()
            coords[..., 0] = coords[..., 0] / w
            coords[..., 1] = coords[..., 1] / h
        return coords * self.resolution

    def transform_boxes(
        self, boxes: torch.Tensor, normalize: bool = False, orig_hw: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Boxes ``B x 4`` (XYXY) -> corners ``B x 2 x 2`` in the model's input frame."""
        return self.transform_coords(boxes.reshape(-1, 2, 2), normalize, orig_hw)

    def postprocess_masks(self, masks: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        """Low-res logits ``B x C x h x w`` -> float logits at the original image size."""
        masks = masks.float()
        if self.max_hole_area > 0 or self.max_sprinkle_area > 0:
            warnings.warn(
                "max_hole_area / max_sprinkle_area need connected components, which the official sam2 computes "
                "with a CUDA extension and skips without it; samforge skips this step likewise "
                "(masks are unchanged).",
                UserWarning,
                stacklevel=3,
            )
        return F.interpolate(masks, orig_hw, mode="bilinear", align_corners=False)
