"""The unit every dataset yields: one image with its instance masks; and bad-sample records."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Sample:
    """One image and its objects. ``image`` H x W x 3 uint8 RGB; ``masks`` K x H x W bool, K >= 1,
    each mask non-empty; ``name`` says where it came from (file path or id) for messages and reports."""

    image: np.ndarray
    masks: np.ndarray
    name: str

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


@dataclass(frozen=True)
class BadSample:
    """A sample a reader skipped, and why (unreadable, empty mask, size mismatch, ...)."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"
