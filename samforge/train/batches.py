"""Samples as the trainer wants them: resized so the long side is the model's input size, normalized,
padded to a square, with up to ``max_objects`` masks; and the collate that batches them.

The dataset is indexed by ``(index, draw)`` pairs (see :class:`samforge.data.sampler.ResumableSampler`)
so the random choice of objects depends only on the pair: a resumed run sees the same data.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from samforge.data.sample import Sample
from samforge.models.sam import PIXEL_MEAN, PIXEL_STD
from samforge.predict.transforms import ResizeLongestSide

_MEAN = torch.tensor(PIXEL_MEAN).view(3, 1, 1)
_STD = torch.tensor(PIXEL_STD).view(3, 1, 1)


def prepare_image(image: np.ndarray, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """HxWx3 uint8 -> normalized, zero-padded 3 x size x size float32 (exactly as Sam.preprocess after the
    predictor's resize), and the resized (h, w) before padding."""
    resized = ResizeLongestSide(size).apply_image(image)
    h, w = resized.shape[:2]
    x = (torch.from_numpy(resized).permute(2, 0, 1).float() - _MEAN) / _STD
    return F.pad(x, (0, size - w, 0, size - h)), (h, w)


def prepare_masks(masks: np.ndarray, resized_hw: tuple[int, int], size: int) -> torch.Tensor:
    """K x H x W bool -> K x size x size bool, resized to ``resized_hw`` (area-weighted, threshold 0.5), padded."""
    m = torch.from_numpy(masks).float()[:, None]
    m = F.interpolate(m, resized_hw, mode="bilinear", align_corners=False, antialias=True)[:, 0] > 0.5
    return F.pad(m, (0, size - resized_hw[1], 0, size - resized_hw[0]))


class TrainingSamples(torch.utils.data.Dataset):
    """Wraps a dataset of :class:`Sample` for training at ``image_size``."""

    def __init__(self, dataset: Any, image_size: int, max_objects: int, seed: int = 0) -> None:
        if max_objects < 1:
            raise ValueError(f"max_objects must be >= 1, got {max_objects}")
        self.dataset = dataset
        self.image_size = image_size
        self.max_objects = max_objects
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int] | int) -> dict:
        index, draw = key if isinstance(key, tuple) else (key, 0)
        sample: Sample = self.dataset[index]
        rng = np.random.default_rng([self.seed, index, draw])
        image, resized_hw = prepare_image(sample.image, self.image_size)
        masks = prepare_masks(sample.masks, resized_hw, self.image_size)
        keep = masks.flatten(1).any(1)  # objects that vanish when downscaled cannot be prompted
        masks = masks[keep]
        if len(masks) > self.max_objects:
            masks = masks[torch.from_numpy(np.sort(rng.choice(len(masks), self.max_objects, replace=False)))]
        return {"image": image, "masks": masks, "input_hw": resized_hw, "name": sample.name}


def collate_samples(items: list[dict]) -> dict:
    """Batch images (B x 3 x S x S); masks of all objects concatenated (N x S x S) with ``image_index`` (N)
    saying which image each belongs to. Images whose objects all vanished still count for the encoder."""
    masks = [item["masks"] for item in items]
    return {
        "images": torch.stack([item["image"] for item in items]),
        "masks": torch.cat(masks) if masks else torch.zeros(0),
        "image_index": torch.cat([torch.full((len(m),), i, dtype=torch.long) for i, m in enumerate(masks)]),
        "input_hw": [item["input_hw"] for item in items],
        "names": [item["name"] for item in items],
    }
