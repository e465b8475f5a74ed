"""What the SAM and SAM 2 automatic mask generators share: argument checks, the crop loop, the filters
that follow decoding, and the records.

The algorithm (both official generators): for each crop (the whole image, then the crops of each layer),
embed the crop and prompt it with batches of grid points; keep masks by predicted IoU and stability
score, drop those that touch an inner crop edge, NMS within the crop; then NMS across crops preferring
smaller crops; records hold uncompressed RLEs until the output mode is applied. A subclass supplies how
a batch of points is decoded (``_process_batch``), how a crop is embedded / forgotten, and any
post-processing of the whole image's masks (``_postprocess``).
"""

from __future__ import annotations

import numbers
import warnings
from typing import Any, Sequence

import numpy as np
import torch
from torchvision.ops import batched_nms, box_area

from samforge.predict.amg_utils import (
    MaskData,
    area_from_rle,
    batch_iterator,
    batched_mask_to_box,
    box_xyxy_to_xywh,
    build_all_layer_point_grids,
    calculate_stability_score,
    coco_encode_rle,
    generate_crop_boxes,
    is_box_near_crop_edge,
    mask_to_rle,
    remove_small_regions,
    rle_to_mask,
    uncrop_boxes_xyxy,
    uncrop_masks,
    uncrop_points,
)
from samforge.predict.checks import describe

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")


# ----------------------------------------------------------------------------------------------- checks
def int_param(value: Any, name: str, minimum: int) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def real_param(value: Any, name: str, lo: float | None, hi: float | None = None) -> float:
    """A finite real in [lo, hi] (``lo`` None: any finite real)."""
    expected = (f"a number in [{lo}, {hi}]" if hi is not None else
                f"a finite number >= {lo}" if lo is not None else "a finite number")
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__} {value!r}")
    value = float(value)
    if not np.isfinite(value) or (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return value


def bool_param(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def check_point_grids(point_grids: Any, n_layers: int) -> list[np.ndarray]:
    if not isinstance(point_grids, (list, tuple)):
        raise TypeError(f"point_grids must be a list of Nx2 arrays (one per crop layer), got {describe(point_grids)}")
    if len(point_grids) < n_layers + 1:
        raise ValueError(f"point_grids must hold one grid per crop layer, crop_n_layers + 1 = {n_layers + 1}, "
                         f"got {len(point_grids)}")
    grids = []
    for i, grid in enumerate(point_grids):
        try:
            arr = np.asarray(grid, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise TypeError(f"point_grids[{i}] must be a numeric Nx2 array, got {describe(grid)}") from e
        if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] == 0:
            raise ValueError(f"point_grids[{i}] must have shape Nx2 with N >= 1 (x, y in [0, 1]), got {arr.shape}")
        if not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1:
            raise ValueError(f"point_grids[{i}] must hold (x, y) normalized to [0, 1], got values in "
                             f"[{arr.min()}, {arr.max()}]")
        grids.append(arr)
    return grids


def as_rgb(image: Any) -> np.ndarray:
    """An ``H x W x 3`` uint8 image; a grayscale (``H x W`` or ``H x W x 1``) or RGBA image is converted
    with a warning."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array of shape HxWx3 and dtype uint8 (RGB), got {describe(image)}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must have dtype uint8 (values 0-255), got dtype {image.dtype}")
    if image.ndim not in (2, 3) or image.shape[0] == 0 or image.shape[1] == 0 or (
            image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        raise ValueError(f"image must have shape HxWx3 (RGB; HxW, HxWx1 grayscale or HxWx4 RGBA are "
                         f"converted), H, W > 0, got shape {image.shape}")
    if image.ndim == 2 or image.shape[2] == 1:
        warnings.warn(f"image of shape {image.shape} is grayscale: converted to RGB by repeating the channel",
                      stacklevel=4)
        return np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=2)
    if image.shape[2] == 4:
        warnings.warn(f"image of shape {image.shape} is RGBA: converted to RGB by dropping the alpha channel",
                      stacklevel=4)
        return np.ascontiguousarray(image[..., :3])
    return image


# ------------------------------------------------------------------------------------------ the base
class AutomaticMaskGeneratorBase:
    """The shared pipeline; see the module docstring. Subclasses call ``_init_common`` and set
    ``self.predictor`` and ``self.mask_threshold`` (the logit threshold of stability and binarization)."""

    predictor: Any
    mask_threshold: float
    #: whether the numeric columns become float32 before the records are made (SAM 2's official ``MaskData.to_numpy``
    #: does this, so its records' ``bbox`` and ``crop_box`` are floats; SAM's keeps the integer boxes)
    float_columns: bool = False

    def _init_common(
        self,
        points_per_side: int | None,
        points_per_batch: int,
        pred_iou_thresh: float,
        stability_score_thresh: float,
        stability_score_offset: float,
        box_nms_thresh: float,
        crop_n_layers: int,
        crop_nms_thresh: float,
        crop_overlap_ratio: float,
        crop_n_points_downscale_factor: int,
        point_grids: Sequence[np.ndarray] | None,
        min_mask_region_area: float,
        output_mode: str,
    ) -> None:
        self.crop_n_layers = int_param(crop_n_layers, "crop_n_layers", 0)
        self.crop_n_points_downscale_factor = int_param(
            crop_n_points_downscale_factor, "crop_n_points_downscale_factor", 1)
        if (points_per_side is None) == (point_grids is None):
            raise ValueError(
                "exactly one of points_per_side or point_grids must be given, got "
                + ("neither (both None)" if points_per_side is None else
                   f"both (points_per_side={points_per_side!r} and point_grids)")
            )
        if points_per_side is not None:
            points_per_side = int_param(points_per_side, "points_per_side", 1)
            self.point_grids = build_all_layer_point_grids(
                points_per_side, self.crop_n_layers, self.crop_n_points_downscale_factor)
        else:
            self.point_grids = check_point_grids(point_grids, self.crop_n_layers)
        self.points_per_batch = int_param(points_per_batch, "points_per_batch", 1)
        self.pred_iou_thresh = real_param(pred_iou_thresh, "pred_iou_thresh", 0.0, 1.0)
        self.stability_score_thresh = real_param(stability_score_thresh, "stability_score_thresh", 0.0, 1.0)
        self.stability_score_offset = real_param(stability_score_offset, "stability_score_offset", 0.0)
        self.box_nms_thresh = real_param(box_nms_thresh, "box_nms_thresh", 0.0, 1.0)
        self.crop_nms_thresh = real_param(crop_nms_thresh, "crop_nms_thresh", 0.0, 1.0)
        self.crop_overlap_ratio = real_param(crop_overlap_ratio, "crop_overlap_ratio", 0.0, 1.0)
        area = real_param(min_mask_region_area, "min_mask_region_area", 0.0)  # pixels
        self.min_mask_region_area = int(area) if isinstance(min_mask_region_area, numbers.Integral) else area
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {list(OUTPUT_MODES)}, got {output_mode!r}")
        if output_mode == "coco_rle":
            try:
                from pycocotools import mask as _mask_utils  # noqa: F401
            except ImportError as e:
                raise ImportError("output_mode='coco_rle' needs pycocotools: pip install pycocotools "
                                  "(or use output_mode='uncompressed_rle')") from e
        self.output_mode = output_mode

    # ------------------------------------------------------------------------------ subclass hooks
    def _set_image(self, image: np.ndarray) -> None:
        raise NotImplementedError

    def _reset_image(self) -> None:
        raise NotImplementedError

    def _process_batch(self, points: np.ndarray, crop_size: tuple[int, int], crop_box: list[int],
                       orig_size: tuple[int, int]) -> MaskData:
        """Masks of a batch of points (pixels of the crop): columns ``rles`` (whole image), ``boxes``
        (XYXY in the crop), ``iou_preds``, ``points`` (in the crop), ``stability_score``."""
        raise NotImplementedError

    def _postprocess(self, data: MaskData) -> MaskData:
        """Post-processing of the whole image's masks (numpy columns) before the records are made."""
        return data

    # -------------------------------------------------------------------------------------- pipeline
    @torch.no_grad()
    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """Masks for an ``H x W x 3`` uint8 RGB image, one record per mask:

        ``segmentation`` (HxW bool array, or an RLE dict per ``output_mode``), ``area`` (pixels),
        ``bbox`` (XYWH, inclusive pixel extent), ``predicted_iou``, ``point_coords`` ([[x, y]], the prompt),
        ``stability_score``, ``crop_box`` (XYWH of the crop that produced it).
        A grayscale (HxW) or RGBA (HxWx4) image is converted to RGB with a warning.
        """
        image = as_rgb(image)
        data = self._postprocess(self._generate_masks(image))

        rles = data["rles"]
        if self.output_mode == "coco_rle":
            segmentations = [coco_encode_rle(rle) for rle in rles]
        elif self.output_mode == "binary_mask":
            segmentations = [rle_to_mask(rle) for rle in rles]
        else:
            segmentations = rles
        bboxes = box_xyxy_to_xywh(np.asarray(data["boxes"])).tolist()
        crop_boxes = box_xyxy_to_xywh(np.asarray(data["crop_boxes"])).tolist()
        return [
            {
                "segmentation": segmentations[i],
                "area": area_from_rle(rles[i]),
                "bbox": bboxes[i],
                "predicted_iou": data["iou_preds"][i].item(),
                "point_coords": [data["points"][i].tolist()],
                "stability_score": data["stability_score"][i].item(),
                "crop_box": crop_boxes[i],
            }
            for i in range(len(rles))
        ]

    def _generate_masks(self, image: np.ndarray) -> MaskData:
        orig_size = image.shape[:2]
        crop_boxes, layer_idxs = generate_crop_boxes(orig_size, self.crop_n_layers, self.crop_overlap_ratio)
        data = MaskData()
        for crop_box, layer_idx in zip(crop_boxes, layer_idxs):
            data.cat(self._process_crop(image, crop_box, layer_idx, orig_size))

        if len(crop_boxes) > 1 and len(data["rles"]) > 0:
            # duplicates across crops: the mask from the smaller crop wins
            scores = (1 / box_area(data["crop_boxes"])).to(data["boxes"].device)
            keep = batched_nms(data["boxes"].float(), scores, torch.zeros_like(scores),
                               iou_threshold=self.crop_nms_thresh)
            data.filter(keep)
        data.to_numpy()
        if self.float_columns:
            for k, v in data.items():
                if isinstance(v, np.ndarray):
                    data[k] = v.astype(np.float32)
        return data

    def _process_crop(self, image: np.ndarray, crop_box: list[int], layer_idx: int,
                      orig_size: tuple[int, int]) -> MaskData:
        x0, y0, x1, y1 = crop_box
        crop = image[y0:y1, x0:x1, :]
        crop_size = crop.shape[:2]
        self._set_image(crop)
        # grid points (x, y) in [0, 1] -> pixels of the crop
        points = self.point_grids[layer_idx] * np.array(crop_size)[None, ::-1]

        data = MaskData()
        for (batch,) in batch_iterator(self.points_per_batch, points):
            data.cat(self._process_batch(batch, crop_size, crop_box, orig_size))
        self._reset_image()

        keep = batched_nms(data["boxes"].float(), data["iou_preds"],
                           torch.zeros_like(data["iou_preds"]), iou_threshold=self.box_nms_thresh)
        data.filter(keep)
        data["boxes"] = uncrop_boxes_xyxy(data["boxes"], crop_box)
        data["points"] = uncrop_points(data["points"], crop_box)
        # int64, or float32 when the crop has no masks, as the official torch.tensor([]) is: concatenated with the
        # other crops' it turns the column, and so the records' crop_box, to floats (the official types)
        n = len(data["rles"])
        data["crop_boxes"] = torch.tensor([crop_box] * n, dtype=torch.long if n else torch.float).reshape(-1, 4)
        return data

    def _encode_in_chunks(self, data: MaskData, crop_size: tuple[int, int], crop_box: list[int],
                          orig_size: tuple[int, int], chunk: int) -> MaskData:
        """The masks of one batch of points that passed the IoU filter (``data``: ``low_res`` logits, ``iou_preds``,
        ``points``), upsampled (``self._upsample``) and filtered / encoded (``_filter_and_encode``) ``chunk`` at a
        time. The ``boxes`` column has the official one's dtype: int64, or float32 when no mask of the batch
        passed the stability filter (the official ``batched_mask_to_box`` of no masks is float zeros, and
        concatenating them turns the image's whole column, and so the records' ``bbox``, to floats)."""
        out, stable = MaskData(), 0
        for start in range(0, max(len(data["iou_preds"]), 1), chunk):
            part = MaskData(**{k: v[start:start + chunk] for k, v in data.items()})
            part["masks"] = self._upsample(part["low_res"], crop_size)
            del part["low_res"]
            part, n = self._filter_and_encode(part, crop_box, orig_size)
            stable += n
            out.cat(part)
        if stable == 0:
            out["boxes"] = out["boxes"].float()
        return out

    def _upsample(self, low_res: torch.Tensor, crop_size: tuple[int, int]) -> torch.Tensor:
        """Low-res logits ``M x h x w`` -> logits ``M x H x W`` of the crop."""
        raise NotImplementedError

    def _filter_and_encode(self, data: MaskData, crop_box: list[int],
                           orig_size: tuple[int, int]) -> tuple[MaskData, int]:
        """From mask logits (``data["masks"]``, the crop's size) of masks that passed the IoU filter:
        stability score and its filter, binarization, boxes, the crop-edge filter, and RLEs of the masks
        pasted into the whole image (``masks`` is replaced by ``rles``); and how many masks passed the stability
        filter."""
        orig_h, orig_w = orig_size
        data["stability_score"] = calculate_stability_score(
            data["masks"], self.mask_threshold, self.stability_score_offset)
        if self.stability_score_thresh > 0.0:
            data.filter(data["stability_score"] >= self.stability_score_thresh)
        stable = len(data["stability_score"])

        data["masks"] = data["masks"] > self.mask_threshold
        data["boxes"] = batched_mask_to_box(data["masks"])
        keep = ~is_box_near_crop_edge(data["boxes"], crop_box, [0, 0, orig_w, orig_h])
        if not torch.all(keep):
            data.filter(keep)

        data["rles"] = mask_to_rle(uncrop_masks(data["masks"], crop_box, orig_h, orig_w))
        del data["masks"]
        return data, stable

    @staticmethod
    def postprocess_small_regions(mask_data: MaskData, min_area: float, nms_thresh: float) -> MaskData:
        """Fill holes and drop islands smaller than ``min_area`` pixels in every mask, then NMS the new
        boxes preferring masks that did not change. Edits ``mask_data`` (numpy columns) in place."""
        if not isinstance(mask_data, MaskData):
            raise TypeError(f"mask_data must be a MaskData, got {type(mask_data).__name__}")
        min_area = real_param(min_area, "min_area", 0.0)
        nms_thresh = real_param(nms_thresh, "nms_thresh", 0.0, 1.0)
        rles = mask_data["rles"]
        if len(rles) == 0:
            return mask_data

        boxes, scores, new_rles = [], [], []
        for rle in rles:
            mask, filled = remove_small_regions(rle_to_mask(rle), min_area, mode="holes")
            mask, pruned = remove_small_regions(mask, min_area, mode="islands")
            changed = filled or pruned
            mask_torch = torch.from_numpy(mask)
            boxes.append(batched_mask_to_box(mask_torch))
            scores.append(0.0 if changed else 1.0)  # NMS prefers masks that needed no change
            new_rles.append(mask_to_rle(mask_torch[None])[0] if changed else None)
        boxes_t = torch.stack(boxes)
        scores_t = torch.tensor(scores, dtype=torch.float)
        keep = batched_nms(boxes_t.float(), scores_t, torch.zeros_like(scores_t), iou_threshold=nms_thresh)

        for i in keep.tolist():
            if new_rles[i] is not None:
                mask_data["rles"][i] = new_rles[i]
                mask_data["boxes"][i] = boxes_t[i].numpy() if isinstance(mask_data["boxes"], np.ndarray) \
                    else boxes_t[i].to(mask_data["boxes"].device)
        mask_data.filter(keep)
        return mask_data
