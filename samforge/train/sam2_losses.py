"""SAM 2's training loss, as the official trainer defines it (``MultiStepMultiMasksAndIous``).

For every frame and every prediction step on it (the first prompt, then each correction click), with the
``M`` candidate masks of a step: focal (weight 20) and dice (1) of the candidate with the lowest
``20 * focal + dice``; an IoU-head loss (1), L1 against the true IoU, on all candidates (``supervise_all_iou``)
or the best one; and, with an object-score head, a binary cross-entropy (1) on whether the object is in the
frame. Mask, dice and IoU terms count only where the object is present. Everything is summed over frames and
steps and divided by the number of objects. With ``learned_weighting`` the weighted terms are combined by learned
uncertainties (:class:`~samforge.train.losses.UncertaintyWeighting`, as ``SamLoss`` does) instead of summed.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from samforge.train.losses import UncertaintyWeighting, dice_loss, mask_iou, sigmoid_focal_loss


class MultiStepMultiMaskLoss(nn.Module):
    def __init__(
        self,
        mask_weight: float = 20.0,
        dice_weight: float = 1.0,
        iou_weight: float = 1.0,
        class_weight: float = 1.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        supervise_all_iou: bool = True,
        iou_use_l1_loss: bool = True,
        pred_obj_scores: bool = True,
        focal_alpha_obj_score: float = -1.0,
        focal_gamma_obj_score: float = 0.0,
        *,
        learned_weighting: bool = False,
    ) -> None:
        super().__init__()
        for name, w in (("mask_weight", mask_weight), ("dice_weight", dice_weight), ("iou_weight", iou_weight),
                        ("class_weight", class_weight)):
            if not w >= 0:
                raise ValueError(f"{name} must be >= 0, got {w}")
        self.weights = {"focal": mask_weight, "dice": dice_weight, "iou": iou_weight, "class": class_weight}
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.supervise_all_iou = supervise_all_iou
        self.iou_use_l1_loss = iou_use_l1_loss
        self.pred_obj_scores = pred_obj_scores
        self.focal_alpha_obj_score, self.focal_gamma_obj_score = focal_alpha_obj_score, focal_gamma_obj_score
        # learned weighting: one learned log-variance per term that counts (non-zero weight; the object score only
        # with its head), applied on top of the fixed weights as SamLoss does
        self.learned_terms = tuple(k for k, w in self.weights.items() if w != 0 and (k != "class" or pred_obj_scores))
        if learned_weighting and not self.learned_terms:
            raise ValueError("learned_weighting needs at least one loss term with a non-zero weight, got all zero")
        self.weighting = UncertaintyWeighting(len(self.learned_terms)) if learned_weighting else None

    def forward(self, frame_outputs: Sequence[dict], targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """``frame_outputs[t]`` holds the lists ``multistep_pred_multimasks`` (``N x M x H x W`` logits per step),
        ``multistep_pred_ious`` (``N x M``) and ``multistep_object_score_logits`` (``N x 1``); ``targets`` is
        ``T x N x H x W`` (bool or soft in [0, 1]) at the logits' resolution."""
        if targets.ndim != 4 or len(frame_outputs) != targets.shape[0]:
            raise ValueError(f"expected {len(frame_outputs)} frames of T x N x H x W targets, got {tuple(targets.shape)}")
        num_objects = max(1, targets.shape[1])
        sums = {k: targets.new_zeros((), dtype=torch.float32) for k in self.weights}
        for out, target in zip(frame_outputs, targets):
            steps = zip(out["multistep_pred_multimasks"], out["multistep_pred_ious"],
                        out["multistep_object_score_logits"])
            for logits, ious, obj_logits in steps:
                for k, v in self._step(logits.float(), ious.float(), obj_logits.float(), target.float()).items():
                    sums[k] = sums[k] + v / num_objects
        if self.weighting is None:
            total = sum(self.weights[k] * sums[k] for k in self.weights if self.weights[k] != 0)
        else:
            total = self.weighting(torch.stack([self.weights[k] * sums[k] for k in self.learned_terms]))
        return {"loss": total, **{k: v.detach() for k, v in sums.items()}}

    def _step(self, logits: torch.Tensor, ious: torch.Tensor, obj_logits: torch.Tensor,
              target: torch.Tensor) -> dict[str, torch.Tensor]:
        if logits.shape[0] != target.shape[0] or logits.shape[-2:] != target.shape[-2:]:
            raise ValueError(f"logits {tuple(logits.shape)} do not match targets {tuple(target.shape)}")
        t = target[:, None].expand_as(logits)
        focal = sigmoid_focal_loss(logits, t, self.focal_alpha, self.focal_gamma)  # N x M
        dice = dice_loss(logits, t)
        with torch.no_grad():
            true_iou = mask_iou(logits, t)
        true_iou = torch.where((t > 0.5).flatten(-2).any(-1) | (logits > 0).flatten(-2).any(-1), true_iou,
                               torch.zeros_like(true_iou))  # as official: empty vs empty counts IoU 0
        iou_err = (ious - true_iou).abs() if self.iou_use_l1_loss else (ious - true_iou) ** 2
        present = (target > 0.5).flatten(1).any(1).float()[:, None]  # N x 1
        if logits.shape[1] > 1:
            best = (self.weights["focal"] * focal + self.weights["dice"] * dice).argmin(dim=1, keepdim=True)
            focal, dice = focal.gather(1, best), dice.gather(1, best)
            iou_err = iou_err.mean(1, keepdim=True) if self.supervise_all_iou else iou_err.gather(1, best)
        out = {
            "focal": (focal * present).sum(),
            "dice": (dice * present).sum(),
            "iou": (iou_err * present).sum(),
            "class": logits.new_zeros(()),
        }
        if self.pred_obj_scores:
            out["class"] = sigmoid_focal_loss(obj_logits[..., None], present[..., None],
                                              self.focal_alpha_obj_score, self.focal_gamma_obj_score).sum()
        return out
