"""SAM's training losses: focal + dice on mask logits (20:1), MSE of the IoU head against the true IoU,
and the multimask rule (only the lowest-loss of several masks is back-propagated). Optionally the three terms
are weighted by learned uncertainties (Kendall, Gal & Cipolla, 2018) instead of fixed weights alone."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss per mask, averaged over pixels: ``... x H x W`` -> ``...``."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.flatten(-2).mean(-1)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft dice loss per mask: ``1 - (2|P∩T| + eps) / (|P| + |T| + eps)``, ``... x H x W`` -> ``...``."""
    prob = logits.sigmoid().flatten(-2)
    targets = targets.flatten(-2)
    return 1 - (2 * (prob * targets).sum(-1) + eps) / (prob.sum(-1) + targets.sum(-1) + eps)


def mask_iou(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """IoU of the binarized prediction (logit > 0) with the target, ``... x H x W`` -> ``...`` (1 if both empty)."""
    pred = logits > 0
    targets = targets > 0.5
    inter = (pred & targets).flatten(-2).sum(-1).float()
    union = (pred | targets).flatten(-2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


class UncertaintyWeighting(nn.Module):
    """Learned weighting of ``n`` loss terms: ``sum_i exp(-s_i) * L_i + s_i`` with one learned log-variance
    ``s_i`` per term (all start at 0, i.e. weight 1). The ``+ s_i`` keeps the weights from collapsing to 0."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.log_vars = nn.Parameter(torch.zeros(n))

    def forward(self, terms: torch.Tensor) -> torch.Tensor:
        if terms.shape != self.log_vars.shape:
            raise ValueError(f"expected {self.log_vars.numel()} loss terms, got shape {tuple(terms.shape)}")
        return (torch.exp(-self.log_vars) * terms + self.log_vars).sum()


class SamLoss(nn.Module):
    """Total loss of one decoding round.

    ``logits`` N x M x H x W (M = 1 or 3 candidate masks), ``iou_pred`` N x M, ``targets`` N x H x W (bool, or
    soft in [0, 1], e.g. area-downsampled masks; the true IoU counts target pixels > 0.5).
    Mask loss: ``focal_weight * focal + dice_weight * dice`` of the best candidate (lowest mask loss) per object;
    IoU loss: MSE between every candidate's predicted IoU and its true IoU, times ``iou_weight``.
    ``learned_weighting``: the three weighted terms are combined by :class:`UncertaintyWeighting` (its
    parameters then train with the model); the best candidate is still chosen by the fixed weights.
    """

    def __init__(self, focal_weight: float = 20.0, dice_weight: float = 1.0, iou_weight: float = 1.0,
                 learned_weighting: bool = False) -> None:
        super().__init__()
        self.focal_weight, self.dice_weight, self.iou_weight = focal_weight, dice_weight, iou_weight
        self.weighting = UncertaintyWeighting(3) if learned_weighting else None

    def forward(self, logits: torch.Tensor, iou_pred: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        if logits.ndim != 4 or targets.shape != (logits.shape[0], *logits.shape[2:]):
            raise ValueError(f"expected logits NxMxHxW and targets NxHxW, got {tuple(logits.shape)}, {tuple(targets.shape)}")
        logits = logits.float()
        targets = targets.float()[:, None].expand_as(logits)
        focal = sigmoid_focal_loss(logits, targets)
        dice = dice_loss(logits, targets)
        per_candidate = self.focal_weight * focal + self.dice_weight * dice  # N x M
        best = per_candidate.argmin(dim=1, keepdim=True)
        with torch.no_grad():
            true_iou = mask_iou(logits, targets)
        iou_loss = F.mse_loss(iou_pred.float(), true_iou)
        if self.weighting is None:
            total = per_candidate.gather(1, best).mean() + self.iou_weight * iou_loss
        else:
            terms = torch.stack([self.focal_weight * focal.gather(1, best).mean(),
                                 self.dice_weight * dice.gather(1, best).mean(), self.iou_weight * iou_loss])
            total = self.weighting(terms)
        return {
            "loss": total,
            "focal": focal.gather(1, best).mean().detach(),
            "dice": dice.gather(1, best).mean().detach(),
            "iou_mse": iou_loss.detach(),
            "best": best[:, 0],
            "true_iou": true_iou.gather(1, best)[:, 0],
            "candidate_iou": true_iou,  # N x M: every candidate's true IoU
        }
