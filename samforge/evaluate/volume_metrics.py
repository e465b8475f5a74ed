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
from samforge.evaluate.report import per_image_csv
from samforge.evaluate.video_metrics import overlay_tile, video_overlay_png
from samforge.utils.atomic import atomic_write_bytes
from samforge.viz.overlay import PALETTE

VOLUME_PROMPTS = ("box", "point")
VOLUME_METRICS_JSON = "volume_metrics.json"
PER_OBJECT_CSV = "per_object.csv"
OVERLAY_PNG = "overlay.png"
OVERLAY_SLICES = 4  # slices shown per object: the prompt slice and others spread over the object's extent


@dataclass
class VolumeEvalResult:
    prompt: str
    objects: list = field(default_factory=list)  # {"clip", "obj_id", "prompt_slice", "dice_3d", "iou_3d"}
    overlay_rows: list = field(default_factory=list)  # [("clip/obj", [(slice, RGB tile)])] for overlay.png

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

    def write(self, out: str | Path) -> dict[str, Path]:
        """Write ``volume_metrics.json``, ``per_object.csv`` and ``overlay.png`` (a few slices of the first
        objects: prediction filled, ground truth outlined) into ``out``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        paths = {n: out / n for n in (VOLUME_METRICS_JSON, PER_OBJECT_CSV, OVERLAY_PNG)}
        atomic_write_bytes(paths[VOLUME_METRICS_JSON], (json.dumps(self.to_metrics_dict(), indent=1) + "\n").encode())
        if self.objects:
            atomic_write_bytes(paths[PER_OBJECT_CSV], per_image_csv(self.objects).encode())
        atomic_write_bytes(paths[OVERLAY_PNG], self.overlay_png())
        return paths

    def overlay_png(self, rows: Sequence | None = None) -> bytes:
        return video_overlay_png(self.overlay_rows if rows is None else rows, self.prompt, frame_word="slice",
                                 title=f"{self.prompt} prompt on each object's largest slice, propagated both ways: "
                                 "prediction filled, ground truth outlined in yellow")


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
                     progress: bool = True, overlay_objects: int = 4) -> VolumeEvalResult:
    """Score ``predictor`` (a ``SAM2VideoPredictor``) on the clips of ``dataset`` (``len`` and ``[i]`` -> a clip
    with ``frames``, ``masks`` T x K x H x W, ``obj_ids``, ``name``): one pass per object, from its largest slice
    both ways. The first ``overlay_objects`` objects keep a few slices for ``overlay.png``."""
    if overlay_objects < 0:
        raise ValueError(f"overlay_objects must be >= 0, got {overlay_objects}")
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
                if len(result.overlay_rows) < overlay_objects:
                    result.overlay_rows.append((f"{clip.name}/{obj_id}", _overlay_slices(clip, k, pred, t0)))
    finally:
        model.train(was_training)
    return result


def _overlay_slices(clip: Any, k: int, pred: np.ndarray, prompt_slice: int) -> list[tuple[int, np.ndarray]]:
    """The prompt slice and ``OVERLAY_SLICES - 1`` others spread over the object's extent, as RGB tiles."""
    gt = clip.masks[:, k]
    present = np.flatnonzero(gt.reshape(len(gt), -1).any(1))
    spread = np.linspace(present[0], present[-1], OVERLAY_SLICES - 1).round().astype(int)
    chosen = sorted({prompt_slice, *(int(t) for t in spread)})
    color = {1: PALETTE[k % len(PALETTE)]}
    tiles = []
    for t in chosen:
        image = clip.frames[t]
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        tiles.append((t, overlay_tile(np.ascontiguousarray(image), {1: pred[t]}, {1: gt[t]}, color)))
    return tiles
