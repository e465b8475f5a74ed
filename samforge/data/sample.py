"""The unit every dataset yields: one image with its instance masks; and bad-sample records."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Sample:
    """One image and its objects. ``image`` H x W x 3 uint8 RGB; ``masks`` K x H x W bool, K >= 1,
    each mask non-empty; ``name`` says where it came from (file path or id) for messages and reports.
    ``soft_masks`` (optional, K x H x W float32 in [0, 1]): a soft target per object (e.g. the fraction of raters
    marking each pixel, see :mod:`samforge.data.raters`), trained on in place of ``masks``; prompts still come
    from ``masks``."""

    image: np.ndarray
    masks: np.ndarray
    name: str
    soft_masks: np.ndarray | None = None
    # optional: one stored prompt (samforge.data.stored_prompts.StoredPrompt) or None per object, in masks' order
    prompts: list | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.image, np.ndarray) and self.image.ndim == 3 and self.image.shape[2] == 3
                and self.image.dtype == np.uint8):
            raise ValueError(f"{self.name}: image must be HxWx3 uint8, got {getattr(self.image, 'shape', None)} "
                             f"{getattr(self.image, 'dtype', type(self.image).__name__)}")
        if not (isinstance(self.masks, np.ndarray) and self.masks.ndim == 3 and self.masks.dtype == bool):
            raise ValueError(f"{self.name}: masks must be KxHxW bool, got {getattr(self.masks, 'shape', None)} "
                             f"{getattr(self.masks, 'dtype', type(self.masks).__name__)}")
        if self.masks.shape[1:] != self.image.shape[:2]:
            raise ValueError(f"{self.name}: masks are {self.masks.shape[1:]} but the image is {self.image.shape[:2]}")
        if self.prompts is not None and (not isinstance(self.prompts, list) or len(self.prompts) != len(self.masks)):
            raise ValueError(f"{self.name}: prompts must be a list with one entry (a stored prompt or None) per "
                             f"object ({len(self.masks)}), got {type(self.prompts).__name__} of "
                             f"{len(self.prompts) if isinstance(self.prompts, list) else '-'}")
        if self.soft_masks is not None:
            soft = self.soft_masks
            if not (isinstance(soft, np.ndarray) and soft.dtype == np.float32 and soft.shape == self.masks.shape):
                raise ValueError(f"{self.name}: soft_masks must be float32 of the masks' shape {self.masks.shape}, got "
                                 f"{getattr(soft, 'shape', None)} {getattr(soft, 'dtype', type(soft).__name__)}")
            if soft.size and not (soft.min() >= 0.0 and soft.max() <= 1.0):
                raise ValueError(f"{self.name}: soft_masks must lie in [0, 1], got {soft.min()}..{soft.max()}")


@dataclass(frozen=True)
class BadSample:
    """A sample a reader skipped, and why (unreadable, empty mask, size mismatch, ...)."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"
