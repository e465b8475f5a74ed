"""Mask IoU and Dice, for one pair of numpy masks and batched on torch.

Conventions (the same in every function here):

* IoU  = |P & G| / |P | G|,   Dice = 2 |P & G| / (|P| + |G|).
* Both masks empty: IoU = Dice = 1.0 (the prediction agrees exactly with an empty target).
* Exactly one mask empty: IoU = Dice = 0.0 (no overlap, non-empty union).
"""

from __future__ import annotations

import numpy as np
import torch


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> None:
    for name, m in (("pred", pred), ("gt", gt)):
        if not isinstance(m, np.ndarray) or m.dtype != bool or m.ndim != 2:
            raise ValueError(
                f"{name} must be an HxW bool numpy array, got {type(m).__name__} "
                f"{getattr(m, 'shape', '')} {getattr(m, 'dtype', '')}".rstrip()
            )
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt must have the same shape, got {pred.shape} and {gt.shape}")


def iou_dice(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """(IoU, Dice) of two HxW bool masks; both empty -> (1.0, 1.0)."""
    _check_pair(pred, gt)
    inter = int(np.count_nonzero(pred & gt))
    p, g = int(np.count_nonzero(pred)), int(np.count_nonzero(gt))
    if p + g == 0:
        return 1.0, 1.0
    return inter / (p + g - inter), 2.0 * inter / (p + g)


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union of two HxW bool masks; both empty -> 1.0."""
    return iou_dice(pred, gt)[0]


def mask_dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice coefficient (F1) of two HxW bool masks; both empty -> 1.0."""
    return iou_dice(pred, gt)[1]


def iou_dice_torch(pred: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched (IoU, Dice), each a float32 tensor of shape B, for bool tensors ``B x H x W``
    (on any device, no gradient). Same empty-mask conventions as :func:`iou_dice`."""
    for name, m in (("pred", pred), ("gt", gt)):
        if not isinstance(m, torch.Tensor) or m.dtype != torch.bool or m.ndim != 3:
            raise ValueError(
                f"{name} must be a BxHxW bool torch.Tensor, got {type(m).__name__} "
                f"{tuple(getattr(m, 'shape', ()))} {getattr(m, 'dtype', '')}".rstrip()
            )
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt must have the same shape, got {tuple(pred.shape)} and {tuple(gt.shape)}")
    inter = (pred & gt).flatten(1).sum(1).float()
    total = pred.flatten(1).sum(1).float() + gt.flatten(1).sum(1).float()
    union = total - inter
    both_empty = total == 0
    iou = torch.where(both_empty, torch.ones_like(inter), inter / union.clamp_min(1))
    dice = torch.where(both_empty, torch.ones_like(inter), 2 * inter / total.clamp_min(1))
    return iou, dice
