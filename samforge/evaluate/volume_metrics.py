"""3D evaluation of SAM 2 on volumes (the MedSAM2 protocol): each object is prompted on its largest slice (a box
from its ground truth, or its centre point), propagated both ways through the scan, and scored by its 3D Dice
(and IoU) over all voxels. Clips of ``samforge.data.clip_dataset`` (volumes as clips of slices, or videos)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from samforge.data.prompts import interior_point, mask_to_box
from samforge.utils.atomic import atomic_write_bytes

VOLUME_PROMPTS = ("box", "point")


@dataclass
class VolumeEvalResult:
    prompt: str
    objects: list = field(default_factory=list)  # {"clip", "obj_id", "prompt_slice", "dice_3d", "iou_3d"}

    def to_metrics_dict(self) -> dict[str, Any]:
        dice = [o["dice_3d"] for o in self.objects]
        iou = [o["iou_3d"] for o in self.objects]
        return {
            "dice_3d": float(np.mean(dice)) if dice else float("nan"),
            "iou_3d": float(np.mean(iou)) if iou else float("nan"),
            "num_objects": len(self.objects),
            "num_volumes": len({o["clip"] for o in self.objects}),
            "prompt": self.prompt,
            "per_object": self.objects,
        }

    def write(self, out: str | Path) -> Path:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / "volume_metrics.json"
        atomic_write_bytes(path, json.dumps(self.to_metrics_dict(), indent=1).encode())
        return path


def dice_iou_3d(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """3D Dice and IoU of two bool volumes of one shape (both empty: 1, 1)."""
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt must have one shape, got {pred.shape} and {gt.shape}")
    inter = float(np.logical_and(pred, gt).sum())
    p, g = float(pred.sum()), float(gt.sum())
    if p + g == 0:
        return 1.0, 1.0
    return 2 * inter / (p + g), inter / (p + g - inter)


def evaluate_volumes(predictor: Any, dataset: Sequence, prompt: str = "box", max_volumes: int | None = None,
                     progress: bool = True) -> VolumeEvalResult:
    """Score ``predictor`` (a ``SAM2VideoPredictor``) on the clips of ``dataset`` (``len`` and ``[i]`` -> a clip
    with ``frames``, ``masks`` T x K x H x W, ``obj_ids``, ``name``): one pass per object, from its largest slice
    both ways."""
    if prompt not in VOLUME_PROMPTS:
        raise ValueError(f"prompt: expected one of {VOLUME_PROMPTS}, got {prompt!r}")
    if not hasattr(predictor, "init_state") or not hasattr(predictor, "propagate_in_video"):
        raise TypeError(f"predictor: expected a SAM2VideoPredictor, got {type(predictor).__name__}")
    count = len(dataset) if max_volumes is None else min(len(dataset), max_volumes)
    if count == 0:
        raise ValueError("dataset: no volume to evaluate")
    result = VolumeEvalResult(prompt)
    model = predictor.model
    was_training = model.training
    model.eval()
    try:
        for i in tqdm(range(count), desc="volumes", disable=not progress):
            clip = dataset[i]
            masks = clip.masks  # T x K x H x W
            state = predictor.init_state(clip.frames, release_old_memory=True)
            for k, obj_id in enumerate(clip.obj_ids):
                gt = masks[:, k]
                areas = gt.reshape(len(gt), -1).sum(1)
                if areas.max() == 0:
                    continue
                t0 = int(areas.argmax())
                predictor.reset_state(state)
                if prompt == "box":
                    predictor.add_new_points_or_box(state, t0, obj_id, box=mask_to_box(gt[t0]))
                else:
                    predictor.add_new_points_or_box(state, t0, obj_id, points=[interior_point(gt[t0])], labels=[1])
                pred = np.zeros_like(gt)
                for reverse in (False, True):
                    for t, _, logits in predictor.propagate_in_video(state, start_frame_idx=t0, reverse=reverse):
                        pred[t] = (logits[0, 0] > 0).cpu().numpy()
                dice, iou = dice_iou_3d(pred, gt)
                result.objects.append({"clip": clip.name, "obj_id": int(obj_id), "prompt_slice": t0,
                                       "dice_3d": dice, "iou_3d": iou})
    finally:
        model.train(was_training)
    return result
