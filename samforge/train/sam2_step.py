"""One SAM 2 training step's forward pass over a batch of clips, as the official trainer (``SAM2Train``) runs it.

Every frame is encoded once. Prompts go on one or more *initial conditioning* frames (the first frame, plus random
later ones): the ground-truth mask itself, or (with ``prob_point``) a point or a box sampled from it. The frames
are then tracked in order through the memory bank, and on the frames chosen for correction, ``num_correction_points``
clicks are added one at a time on the prediction's errors (or, with ``prob_sample_from_gt``, anywhere in the
object). Every prediction step of every frame is supervised (:class:`MultiStepMultiMaskLoss`). A one-frame clip
is SAM 2 training on an image: always point/box prompts, corrected on that frame.

The batch is ``{"frames": T x B x 3 x S x S, "masks": T x N x S x S, "obj_to_clip": N}`` (see
``samforge.train.clip_batches``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from samforge.models.sam2 import SAM2Base
from samforge.train.sam2_losses import MultiStepMultiMaskLoss


@dataclass
class Sam2PromptConfig:
    """The official trainer's prompt sampling (``sam2.1_hiera_b+_MOSE_finetune.yaml`` values as defaults)."""

    prob_point: float = 0.5  # a point/box prompt on the conditioning frames, else the ground-truth mask
    prob_box: float = 0.5  # of the point prompts, a (noisy) box instead of one point
    prob_sample_from_gt: float = 0.1  # a correction click drawn from the object instead of the errors
    num_correction_points: int = 7  # clicks added one by one on a corrected frame
    num_frames_to_correct: int = 2  # frames that get correction clicks (the conditioning frames first)
    rand_frames_to_correct: bool = True  # a random number between the conditioning frames and the above
    num_init_cond_frames: int = 2  # prompted frames (the first, then random others)
    rand_init_cond_frames: bool = True  # a random number between 1 and the above
    add_all_frames_to_correct_as_cond: bool = True  # corrected frames also become conditioning frames
    box_noise: float = 0.1  # box corners move by up to this fraction of the box size ...
    box_max_noise: float = 20.0  # ... and at most this many pixels

    def __post_init__(self) -> None:
        for name in ("prob_point", "prob_box", "prob_sample_from_gt", "box_noise"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        for name in ("num_correction_points",):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("num_frames_to_correct", "num_init_cond_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_frames_to_correct < self.num_init_cond_frames:
            raise ValueError(f"num_frames_to_correct ({self.num_frames_to_correct}) must be >= num_init_cond_frames "
                             f"({self.num_init_cond_frames}): the conditioning frames are always corrected")


def _seeded(rng: np.random.Generator, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int(rng.integers(0, 2**62)))


def sample_error_points(gt: torch.Tensor, pred: torch.Tensor | None, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One click per object (``N x H x W`` bool masks): a uniformly random pixel of the errors, labelled 1 in a
    missed part (false negative) and 0 in a false positive; where the prediction is exact, a background point.
    ``pred=None`` is an empty prediction (the first click: a point inside the object). -> (N x 1 x 2, N x 1)."""
    if pred is None:
        pred = torch.zeros_like(gt)
    n, h, w = gt.shape
    fn = gt & ~pred
    fp = pred & ~gt
    exact = ~(fn | fp).flatten(1).any(1)[:, None, None]
    noise = torch.rand(n, h, w, 2, device=gt.device, generator=gen)
    noise[..., 0] *= fp | (exact & ~gt)
    noise[..., 1] *= fn
    idx = noise.flatten(1).argmax(dim=1)
    labels = (idx % 2).to(torch.int32)
    pix = idx // 2
    points = torch.stack([pix % w, pix // w], dim=-1).float()
    return points[:, None], labels[:, None]


def sample_box_points(gt: torch.Tensor, gen: torch.Generator, noise: float, max_noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A noisy box per object as SAM 2 takes it: two corner points labelled 2 and 3. Each coordinate moves by a
    uniform amount up to ``noise`` x the box side, capped at ``max_noise`` pixels. -> (N x 2 x 2, N x 2)."""
    n, h, w = gt.shape
    ys = torch.arange(h, device=gt.device)[None, :, None]
    xs = torch.arange(w, device=gt.device)[None, None, :]
    big = max(h, w)
    x0 = torch.where(gt, xs, big).flatten(1).amin(1)
    x1 = torch.where(gt, xs, -1).flatten(1).amax(1)
    y0 = torch.where(gt, ys, big).flatten(1).amin(1)
    y1 = torch.where(gt, ys, -1).flatten(1).amax(1)
    box = torch.stack([x0, y0, x1, y1], dim=1).float()
    empty = ~gt.flatten(1).any(1)
    box[empty] = torch.tensor([0.0, 0.0, w - 1.0, h - 1.0], device=gt.device)  # an absent object: the whole frame
    if noise > 0:
        bw, bh = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
        cap = torch.tensor(max_noise, device=gt.device)
        scale = torch.stack([torch.minimum(bw * noise, cap), torch.minimum(bh * noise, cap)] * 2, dim=1)
        box = box + (2 * torch.rand(n, 4, device=gt.device, generator=gen) - 1) * scale
        bound = torch.tensor([w - 1.0, h - 1.0] * 2, device=gt.device)
        box = torch.minimum(box.clamp(min=0), bound)
    labels = torch.tensor([[2, 3]], dtype=torch.int32, device=gt.device).expand(n, 2)
    return box.reshape(n, 2, 2), labels


class Sam2TrainingForward(nn.Module):
    """The training forward of a ``SAM2Base`` on clips: returns ``{"loss", "focal", "dice", "iou", "class",
    "miou_last_round"}`` (all but ``loss`` detached), like the SAM v1 ``TrainingForward``."""

    def __init__(self, model: SAM2Base, loss_fn: MultiStepMultiMaskLoss, prompts: Sam2PromptConfig | None = None) -> None:
        super().__init__()
        if not isinstance(model, SAM2Base):
            raise TypeError(f"model must be a SAM2Base, got {type(model).__name__}")
        self.sam = model
        self.loss_fn = loss_fn
        self.prompts = prompts or Sam2PromptConfig()

    def forward(self, batch: dict, rng: np.random.Generator, loss_resolution: str = "input") -> dict[str, torch.Tensor]:
        if loss_resolution not in ("input", "low_res"):
            raise ValueError(f"loss_resolution must be 'input' or 'low_res', got {loss_resolution!r}")
        model = self.sam
        device = model.device
        frames = batch["frames"].to(device, non_blocking=True)
        gts = batch["masks"].to(device)
        obj_to_clip = batch["obj_to_clip"].to(device)
        if frames.ndim != 5 or gts.ndim != 4 or gts.shape[0] != frames.shape[0] or gts.shape[1] != len(obj_to_clip):
            raise ValueError(f"expected frames T x B x 3 x S x S, masks T x N x S x S and obj_to_clip N; got "
                             f"{tuple(frames.shape)}, {tuple(gts.shape)}, {tuple(obj_to_clip.shape)}")
        if gts.shape[1] == 0:
            raise ValueError(f"no object to train on in this batch ({batch.get('names')})")
        num_frames, num_clips = frames.shape[:2]
        gen = _seeded(rng, device)

        # every frame of every clip through the image encoder at once; objects pick their clip's columns
        backbone_out = model.forward_image(frames.flatten(0, 1))
        _, vision_feats, vision_pos, feat_sizes = model._prepare_backbone_features(backbone_out)
        init_frames, correct_frames, use_points = self._plan(num_frames, rng)
        point_inputs, mask_inputs = {}, {}
        for t in init_frames:
            gt = gts[t]
            if not use_points:
                mask_inputs[t] = gt[:, None].float()
            elif rng.random() < self.prompts.prob_box:
                coords, labels = sample_box_points(gt, gen, self.prompts.box_noise, self.prompts.box_max_noise)
                point_inputs[t] = {"point_coords": coords, "point_labels": labels}
            else:
                coords, labels = sample_error_points(gt, None, gen)
                point_inputs[t] = {"point_coords": coords, "point_labels": labels}

        output_dict: dict[str, dict[int, dict]] = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
        outputs: dict[int, dict] = {}
        order = init_frames + [t for t in range(num_frames) if t not in init_frames]
        for t in order:
            columns = t * num_clips + obj_to_clip
            feats = [x[:, columns] for x in vision_feats]
            pos = [x[:, columns] for x in vision_pos]
            out = self._frame(t, t in init_frames, feats, pos, feat_sizes, point_inputs.get(t), mask_inputs.get(t),
                              gts[t], t in correct_frames, output_dict, num_frames, gen, rng)
            as_cond = t in init_frames or (self.prompts.add_all_frames_to_correct_as_cond and t in correct_frames)
            output_dict["cond_frame_outputs" if as_cond else "non_cond_frame_outputs"][t] = out
            outputs[t] = out

        frame_outputs = [outputs[t] for t in range(num_frames)]
        targets = gts.float()
        key = "multistep_pred_multimasks_high_res"
        if loss_resolution == "low_res":  # the decoder's own resolution, against area-downsampled masks
            key = "multistep_pred_multimasks"
            targets = F.interpolate(targets, frame_outputs[0][key][0].shape[-2:], mode="area")
        losses = self.loss_fn([{**o, "multistep_pred_multimasks": o[key]} for o in frame_outputs], targets)
        if torch.is_grad_enabled() and not losses["loss"].requires_grad:
            # every frame was prompted with its mask, which SAM 2.1 outputs as is: nothing to learn from the
            # masks, but the object pointers were decoded; keep the graph (DDP expects every step to backprop)
            pointers = [o["obj_ptr"] for o in frame_outputs if o["obj_ptr"].requires_grad]
            if pointers:
                losses["loss"] = losses["loss"] + 0.0 * sum(p.sum() for p in pointers)
        with torch.no_grad():
            pred = torch.stack([o["pred_masks_high_res"][:, 0] for o in frame_outputs]) > 0
            inter = (pred & gts).flatten(2).sum(-1).float()
            union = (pred | gts).flatten(2).sum(-1).float()
            miou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)).mean()
        return {**losses, "miou_last_round": miou}

    def _plan(self, num_frames: int, rng: np.random.Generator) -> tuple[list[int], set[int], bool]:
        """(initial conditioning frames, frames to correct, whether prompts are points/boxes) for a clip."""
        p = self.prompts
        if num_frames == 1:  # an image: clicks, corrected
            return [0], {0}, True
        use_points = bool(rng.random() < p.prob_point)
        n_init = min(p.num_init_cond_frames, num_frames)
        if p.rand_init_cond_frames and n_init > 1:
            n_init = int(rng.integers(1, n_init, endpoint=True))
        n_correct = min(max(p.num_frames_to_correct, n_init), num_frames)
        if use_points and p.rand_frames_to_correct and n_correct > n_init:
            n_correct = int(rng.integers(n_init, n_correct, endpoint=True))
        init = [0] + sorted(int(t) for t in rng.choice(np.arange(1, num_frames), n_init - 1, replace=False))
        if not use_points:
            return init, set(), False
        rest = [t for t in range(num_frames) if t not in init]
        extra = rng.choice(rest, n_correct - n_init, replace=False).tolist() if n_correct > n_init else []
        return init, set(init) | {int(t) for t in extra}, True

    def _frame(self, t, is_init, feats, pos, feat_sizes, point_inputs, mask_inputs, gt, correct, output_dict,
               num_frames, gen, rng) -> dict:
        """Track one frame (with correction clicks when chosen) and encode its memory."""
        model = self.sam
        current_out, sam_outputs, high_res_features, pix_feat = model._track_step(
            t, is_init, feats, pos, feat_sizes, point_inputs, mask_inputs, output_dict, num_frames, False, None
        )
        low_multi, high_multi, ious, low_res, high_res, obj_ptr, obj_score = sam_outputs
        steps = {"multistep_pred_multimasks": [low_multi], "multistep_pred_multimasks_high_res": [high_multi],
                 "multistep_pred_ious": [ious], "multistep_object_score_logits": [obj_score]}
        if correct and self.prompts.num_correction_points > 0:
            for _ in range(self.prompts.num_correction_points):
                from_gt = rng.random() < self.prompts.prob_sample_from_gt
                coords, labels = sample_error_points(gt, None if from_gt else (high_res[:, 0] > 0), gen)
                if point_inputs is None:
                    point_inputs = {"point_coords": coords, "point_labels": labels}
                else:
                    point_inputs = {"point_coords": torch.cat([point_inputs["point_coords"], coords], dim=1),
                                    "point_labels": torch.cat([point_inputs["point_labels"], labels], dim=1)}
                low_multi, high_multi, ious, low_res, high_res, obj_ptr, obj_score = model._forward_sam_heads(
                    backbone_features=pix_feat,
                    point_inputs=point_inputs,
                    mask_inputs=low_res,
                    high_res_features=high_res_features,
                    multimask_output=model._use_multimask(is_init, point_inputs),
                )
                steps["multistep_pred_multimasks"].append(low_multi)
                steps["multistep_pred_multimasks_high_res"].append(high_multi)
                steps["multistep_pred_ious"].append(ious)
                steps["multistep_object_score_logits"].append(obj_score)
        current_out.update(steps)
        current_out["pred_masks"] = low_res
        current_out["pred_masks_high_res"] = high_res
        current_out["obj_ptr"] = obj_ptr
        model._encode_memory_in_output(feats, feat_sizes, point_inputs, True, high_res, obj_score, current_out)
        return current_out
