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
    """K x H x W bool -> K x size x size bool, resized to ``resized_hw`` (area-weighted, threshold 0.5), padded.
    A float32 soft target (K x H x W in [0, 1]) is resized the same way and kept soft (float32, not thresholded)."""
    m = torch.from_numpy(masks).float()[:, None]
    m = F.interpolate(m, resized_hw, mode="bilinear", align_corners=False, antialias=True)[:, 0]
    m = m.clamp(0.0, 1.0) if masks.dtype == np.float32 else m > 0.5
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
        soft = None if sample.soft_masks is None else prepare_masks(sample.soft_masks, resized_hw, self.image_size)
        keep = masks.flatten(1).any(1)  # objects that vanish when downscaled cannot be prompted
        masks = masks[keep]
        soft = None if soft is None else soft[keep]
        if len(masks) > self.max_objects:
            chosen = torch.from_numpy(np.sort(rng.choice(len(masks), self.max_objects, replace=False)))
            masks = masks[chosen]
            soft = None if soft is None else soft[chosen]
        item = {"image": image, "masks": masks, "input_hw": resized_hw, "name": sample.name}
        if sample.prompts is not None:  # stored prompts of the objects kept, in the input frame's pixels
            kept = [p for p, k in zip(sample.prompts, keep.tolist()) if k]
            kept = kept if len(kept) == len(masks) else [kept[i] for i in chosen.tolist()]
            sx, sy = resized_hw[1] / sample.image.shape[1], resized_hw[0] / sample.image.shape[0]
            item["prompts"] = [None if p is None else p.scaled(sx, sy) for p in kept]
        if soft is not None:  # the loss's target in place of the masks (prompts still come from the masks)
            item["targets"] = soft
        structures = getattr(self.dataset, "structures", None)  # named objects (REFUGE: disc, cup)
        if structures and len(structures) == len(sample.masks):
            named = [s for s, k in zip(structures, keep.tolist()) if k]
            item["structures"] = named if len(named) == len(masks) else [named[i] for i in chosen.tolist()]
        return item


def collate_samples(items: list[dict]) -> dict:
    """Batch images (B x 3 x S x S); masks of all objects concatenated (N x S x S) with ``image_index`` (N)
    saying which image each belongs to. Images whose objects all vanished still count for the encoder.
    When a sample carries soft targets, ``targets`` (N x S x S float32) holds every object's loss target
    (the soft target, or the mask as 0/1 for samples without one). For a dataset of named structures
    (``structures``, e.g. REFUGE's disc and cup) ``structures`` (N) names each object's."""
    masks = [item["masks"] for item in items]
    batch = {
        "images": torch.stack([item["image"] for item in items]),
        "masks": torch.cat(masks) if masks else torch.zeros(0),
        "image_index": torch.cat([torch.full((len(m),), i, dtype=torch.long) for i, m in enumerate(masks)]),
        "input_hw": [item["input_hw"] for item in items],
        "names": [item["name"] for item in items],
    }
    if any("prompts" in item for item in items):  # stored prompts: one (or None) per object
        batch["prompts"] = [p for item in items for p in item.get("prompts", [None] * len(item["masks"]))]
    if any("targets" in item for item in items):
        batch["targets"] = torch.cat([item.get("targets", item["masks"].float()) for item in items])
    if items and all("structures" in item for item in items):  # each object's structure name, for validation
        batch["structures"] = [s for item in items for s in item["structures"]]
    return batch
