"""SamAutomaticMaskGenerator: "segment everything" with a grid of point prompts.

A drop-in for ``segment_anything.SamAutomaticMaskGenerator``: same arguments, defaults, algorithm and
order of steps, and the same records. For each crop (the whole image, then the crops of each layer):
embed the crop, prompt it with batches of grid points (three masks each), keep masks by predicted IoU
and stability score, drop those that touch an inner crop edge, NMS within the crop; then NMS across
crops preferring smaller crops, and optionally fill small holes / drop small islands with one more NMS.
The steps shared with ``SAM2AutomaticMaskGenerator`` live in ``amg_base``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from samforge.models.sam import Sam
from samforge.predict.amg_base import OUTPUT_MODES, AutomaticMaskGeneratorBase
from samforge.predict.amg_utils import MaskData
from samforge.predict.predictor import SamPredictor

__all__ = ["OUTPUT_MODES", "SamAutomaticMaskGenerator"]


class SamAutomaticMaskGenerator(AutomaticMaskGeneratorBase):
    def __init__(
        self,
        model: Sam,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: Sequence[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
    ) -> None:
        """Generate masks for a whole image with ``model`` (a samforge ``Sam``).

        ``points_per_side``: the grid has ``points_per_side**2`` points (or give ``point_grids``: one
        ``N x 2`` array in [0, 1] per crop layer; exactly one of the two). ``points_per_batch``: points run
        together. ``pred_iou_thresh``, ``stability_score_thresh`` in [0, 1]: keep masks whose predicted
        IoU is above / whose stability score (IoU of the mask binarized at threshold +- ``stability_score_offset``)
        is at least the threshold (0 disables). ``box_nms_thresh``, ``crop_nms_thresh``: box IoU for NMS
        within / across crops. ``crop_n_layers``: layer i adds ``2**i x 2**i`` crops overlapping by
        ``crop_overlap_ratio`` of the image's short side (scaled down per layer), with
        ``points_per_side / crop_n_points_downscale_factor**i`` points per side. ``min_mask_region_area``:
        when > 0, holes and islands smaller than this are removed (OpenCV). ``output_mode``:
        "binary_mask" (HxW bool), "uncompressed_rle" or "coco_rle" (pycocotools).
        """
        if not isinstance(model, Sam):
            raise TypeError(f"model must be a samforge Sam model, got {type(model).__name__}")
        self._init_common(
            points_per_side, points_per_batch, pred_iou_thresh, stability_score_thresh, stability_score_offset,
            box_nms_thresh, crop_n_layers, crop_nms_thresh, crop_overlap_ratio, crop_n_points_downscale_factor,
            point_grids, min_mask_region_area, output_mode)
        self.predictor = SamPredictor(model)

    @property
    def mask_threshold(self) -> float:
        return self.predictor.model.mask_threshold

    def _set_image(self, image: np.ndarray) -> None:
        self.predictor.set_image(image)

    def _reset_image(self) -> None:
        self.predictor.reset_image()

    def _postprocess(self, data: MaskData) -> MaskData:
        if self.min_mask_region_area > 0:
            data = self.postprocess_small_regions(
                data, self.min_mask_region_area, max(self.box_nms_thresh, self.crop_nms_thresh))
        return data

    def _process_batch(self, points: np.ndarray, crop_size: tuple[int, int], crop_box: list[int],
                       orig_size: tuple[int, int]) -> MaskData:
        predictor = self.predictor
        coords = torch.as_tensor(predictor.transform.apply_coords(points, crop_size), device=predictor.device)
        labels = torch.ones(coords.shape[0], dtype=torch.int, device=coords.device)
        logits, iou_preds, _ = predictor.predict_torch(
            coords[:, None, :], labels[:, None], multimask_output=True, return_logits=True)
        n_out = logits.shape[1]
        data = MaskData(
            masks=logits.flatten(0, 1),
            iou_preds=iou_preds.flatten(0, 1),
            points=torch.as_tensor(points.repeat(n_out, axis=0)),  # each point once per output mask
        )
        del logits

        if self.pred_iou_thresh > 0.0:
            data.filter(data["iou_preds"] > self.pred_iou_thresh)
        return self._filter_and_encode(data, crop_box, orig_size)
