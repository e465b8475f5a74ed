"""Quick validation of a SAM 2 model during training, on batches of clips: the training loss (fixed prompt draw),
and how well each object is tracked from a box, or from its centre point, on the first frame: mIoU and Dice over
all frames and objects. Also the overlay picture of a few validation clips."""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
import torch

from samforge.data.prompts import interior_point
from samforge.models.sam2 import SAM2Base
from samforge.predict.sam2_transforms import IMAGENET_MEAN, IMAGENET_STD
from samforge.train.sam2_step import Sam2TrainingForward, sample_box_points
from samforge.utils.atomic import save_png
from samforge.viz.overlay import draw_overlay



@torch.no_grad()
def track_batch(model: SAM2Base, batch: dict, first_prompt: str = "box") -> torch.Tensor:
    """Prompt every object on frame 0 (its tight box, or its centre point) and track it through its clip with
    the memory (eval mode): ``T x N x S x S`` logits at the input resolution."""
    if first_prompt not in ("box", "point"):
        raise ValueError(f"first_prompt must be 'box' or 'point', got {first_prompt!r}")
    device = model.device
    frames = batch["frames"].to(device)
    gts = batch["masks"].to(device)
    obj_to_clip = batch["obj_to_clip"].to(device)
    num_frames, num_clips = frames.shape[:2]
    backbone_out = model.forward_image(frames.flatten(0, 1))
    _, feats, pos, sizes = model._prepare_backbone_features(backbone_out)
    if first_prompt == "box":
        coords, labels = sample_box_points(gts[0], torch.Generator(device=device), noise=0.0, max_noise=0.0)
    else:
        centres = np.stack([interior_point(g) for g in gts[0].cpu().numpy()])[:, None]
        coords = torch.as_tensor(centres, dtype=torch.float32, device=device)
        labels = torch.ones(coords.shape[:2], dtype=torch.int32, device=device)
    prompt = {"point_coords": coords, "point_labels": labels}
    output_dict: dict[str, dict[int, dict]] = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    logits = []
    for t in range(num_frames):
        columns = t * num_clips + obj_to_clip
        out = model.track_step(
            frame_idx=t,
            is_init_cond_frame=t == 0,
            current_vision_feats=[x[:, columns] for x in feats],
            current_vision_pos_embeds=[x[:, columns] for x in pos],
            feat_sizes=sizes,
            point_inputs=prompt if t == 0 else None,
            mask_inputs=None,
            output_dict=output_dict,
            num_frames=num_frames,
        )
        output_dict["cond_frame_outputs" if t == 0 else "non_cond_frame_outputs"][t] = out
        logits.append(out["pred_masks_high_res"][:, 0].float())
    return torch.stack(logits)


def _iou_dice(pred: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    inter = (pred & gt).flatten(-2).sum(-1).float()
    p, g = pred.flatten(-2).sum(-1).float(), gt.flatten(-2).sum(-1).float()
    union = p + g - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    dice = torch.where(p + g > 0, 2 * inter / (p + g).clamp(min=1), torch.ones_like(union))
    return iou, dice


@torch.no_grad()
def validate_sam2(forward: Sam2TrainingForward, batches: list[dict], autocast: AbstractContextManager) -> dict[str, float]:
    """Mean over objects x frames of ``box_miou``, ``box_dice``, ``point_miou``, ``point_dice``, and ``loss`` (the
    training loss with a fixed prompt draw per batch); for batches of named structures (``batch["structures"]``,
    REFUGE's disc and cup) also each structure's ``box_dice_<name>`` and ``point_dice_<name>``, as the SAM (v1)
    validation logs them."""
    model = forward.sam
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    count = 0
    per_structure: dict[str, int] = {}  # object x frame pairs of each named structure
    try:
        for i, batch in enumerate(batches):
            gts = batch["masks"].to(model.device)
            if gts.shape[1] == 0:
                continue
            n = gts.shape[0] * gts.shape[1]
            structures = batch.get("structures") or []
            if structures and len(structures) != gts.shape[1]:
                raise ValueError(f"batch structures: expected one name per object ({gts.shape[1]}), got "
                                 f"{len(structures)}")
            with autocast:
                loss = forward(batch, np.random.default_rng([12345, i]))["loss"]
                for prompt in ("box", "point"):
                    iou, dice = _iou_dice(track_batch(model, batch, prompt) > 0, gts)
                    sums[f"{prompt}_miou"] = sums.get(f"{prompt}_miou", 0.0) + float(iou.sum())
                    sums[f"{prompt}_dice"] = sums.get(f"{prompt}_dice", 0.0) + float(dice.sum())
                    for k, name in enumerate(structures):  # dice: T x N, object k over all its frames
                        key = f"{prompt}_dice_{name}"
                        sums[key] = sums.get(key, 0.0) + float(dice[:, k].sum())
            for name in structures:
                per_structure[name] = per_structure.get(name, 0) + gts.shape[0]
            sums["loss"] = sums.get("loss", 0.0) + float(loss) * n
            count += n
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("validation data has no object")
    return {k: v / (per_structure[k.split("_dice_", 1)[1]] if "_dice_" in k else count) for k, v in sums.items()}


def frame_to_rgb(frame: torch.Tensor) -> np.ndarray:
    """A normalised ``3 x S x S`` SAM 2 input frame back to ``S x S x 3`` uint8."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    x = frame.detach().float().cpu() * std + mean
    return (x.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


@torch.no_grad()
def save_sam2_val_overlays(model: SAM2Base, batch: dict, out_path: Path, max_clips: int = 3) -> None:
    """For up to ``max_clips`` clips: the first, middle and last frames with the box-tracked masks (top) and the
    ground truth (bottom)."""
    was_training = model.training
    model.eval()
    try:
        pred = (track_batch(model, batch, "box") > 0).cpu()
    finally:
        model.train(was_training)
    gts = batch["masks"].cpu()
    frames = batch["frames"]
    num_frames = frames.shape[0]
    picks = sorted({0, num_frames // 2, num_frames - 1})
    columns = []
    for clip in range(min(max_clips, frames.shape[1])):
        objects = (batch["obj_to_clip"] == clip).nonzero()[:, 0]
        for t in picks:
            rgb = frame_to_rgb(frames[t, clip])
            top = draw_overlay(rgb, pred[t, objects].numpy()) if len(objects) else rgb
            bottom = draw_overlay(rgb, gts[t, objects].numpy()) if len(objects) else rgb
            columns.append(np.concatenate([top, np.full((4, *top.shape[1:]), 255, np.uint8), bottom]))
    grid = np.concatenate([np.pad(c, ((0, 0), (0, 4), (0, 0)), constant_values=255) for c in columns], axis=1)
    save_png(grid, out_path)
