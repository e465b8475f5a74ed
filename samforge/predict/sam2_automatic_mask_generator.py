"""SAM2AutomaticMaskGenerator: "segment everything" with SAM 2 and a grid of point prompts.

A drop-in for ``sam2.automatic_mask_generator.SAM2AutomaticMaskGenerator``: same arguments, defaults and
records, and the same masks (the crop loop, filters and NMS are ``amg_base``'s, shared with
``SamAutomaticMaskGenerator``). SAM 2's own steps:

* ``multimask_output``: three masks per point (else one);
* ``use_m2m``: every mask is decoded once more from its point and its own low-res logits as mask input
  (one mask out), and that refined mask and its IoU replace it before the filters;
* ``mask_threshold``: the logit threshold of the stability score and of binarization;
* ``min_mask_region_area``: like the official generator, which hands it to its predictor as
  ``max_hole_area`` and ``max_sprinkle_area``, holes (connected background regions, 8-connectivity) and
  sprinkles (foreground regions) of at most that many *low-res* pixels are flipped in the low-res logits
  before upsampling (to the predictor's threshold +- 10). The official code does this with a CUDA
  extension and, without it (on CPU), warns and skips the step; samforge does it on any device (OpenCV),
  so on CPU its masks are those the official code gives where its extension is built.

For speed, and without changing any result: masks are filtered on predicted IoU while still at low
resolution, and only the survivors are post-processed and upsampled, a chunk at a time (the official
code upsamples every mask of a batch at once).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from samforge.models.sam2 import SAM2Base
from samforge.predict.amg_base import AutomaticMaskGeneratorBase, bool_param, real_param
from samforge.predict.amg_utils import MaskData, batch_iterator
from samforge.predict.checks import describe
from samforge.predict.fill_holes import small_components
from samforge.predict.sam2_predictor import BUILD_KWARGS, SAM2ImagePredictor

__all__ = ["SAM2AutomaticMaskGenerator", "fill_holes_and_sprinkles"]

UPSAMPLE_CHUNK = 32  # masks upsampled to the crop's size at once
HOLE_LOGIT = 10.0  # filled holes become threshold + 10, removed sprinkles threshold - 10 (the official values)


def fill_holes_and_sprinkles(logits: torch.Tensor, mask_threshold: float, max_hole_area: float,
                             max_sprinkle_area: float) -> torch.Tensor:
    """Mask logits ``N x H x W`` with small holes filled and small sprinkles removed (a new tensor).

    A hole is a connected region (8-connectivity) of pixels ``<= mask_threshold`` with at most
    ``max_hole_area`` pixels: its logits become ``mask_threshold + 10``. A sprinkle is such a region of
    pixels ``> mask_threshold`` (of the input logits) with at most ``max_sprinkle_area`` pixels: its logits
    become ``mask_threshold - 10``. An area of 0 disables that step. What the official SAM 2 transforms do
    with their CUDA connected-components kernel, here with OpenCV.
    """
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor of shape NxHxW, got {describe(logits)}")
    if logits.ndim != 3 or not logits.dtype.is_floating_point:
        raise ValueError(f"logits must be a float tensor of shape NxHxW, got {describe(logits)}")
    thr = real_param(mask_threshold, "mask_threshold", None)
    max_hole_area = real_param(max_hole_area, "max_hole_area", 0.0)
    max_sprinkle_area = real_param(max_sprinkle_area, "max_sprinkle_area", 0.0)
    out = logits.clone()
    if (max_hole_area <= 0 and max_sprinkle_area <= 0) or logits.numel() == 0:
        return out
    values = logits.detach().float().cpu().numpy()
    for i, v in enumerate(values):
        hole = small_components(v <= thr, max_hole_area) if max_hole_area > 0 else None
        sprinkle = small_components(v > thr, max_sprinkle_area) if max_sprinkle_area > 0 else None
        if hole is not None and hole.any():
            out[i][torch.from_numpy(hole).to(out.device)] = thr + HOLE_LOGIT
        if sprinkle is not None and sprinkle.any():
            out[i][torch.from_numpy(sprinkle).to(out.device)] = thr - HOLE_LOGIT
    return out


class SAM2AutomaticMaskGenerator(AutomaticMaskGeneratorBase):
    float_columns = True  # records' bbox and crop_box are floats, as the official generator's

    def __init__(
        self,
        model: SAM2Base,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.8,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        mask_threshold: float = 0.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: Sequence[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        use_m2m: bool = False,
        multimask_output: bool = True,
        *,
        precision: str = "fp32",
        **kwargs: Any,
    ) -> None:
        """Generate masks for a whole image with ``model`` (a samforge ``SAM2Base``, see ``build_sam2``).

        Arguments as ``SamAutomaticMaskGenerator``'s (``points_per_side`` or ``point_grids``,
        ``points_per_batch``, the IoU / stability thresholds in [0, 1], ``stability_score_offset``, the NMS
        thresholds, crop layers, ``output_mode`` "binary_mask", "uncompressed_rle" or "coco_rle"), with SAM
        2's defaults (``pred_iou_thresh`` 0.8), and: ``mask_threshold`` (logit threshold of binarization and
        of the stability score), ``min_mask_region_area`` (holes and sprinkles of at most that many pixels of
        the low-res masks are removed before upsampling; see the module docstring), ``use_m2m`` (refine each
        mask once with its own low-res logits as mask input), ``multimask_output`` (three masks per point),
        ``precision`` (keyword-only: "fp32", the default and exact; "fp32-fast", "bf16", "int8" or "auto", as for
        ``SAM2ImagePredictor``).
        Other keyword arguments may only be ``build_sam2``'s (``from_pretrained`` passes them to both, as the
        official code does); they are ignored here.
        """
        if not isinstance(model, SAM2Base):
            raise TypeError(f"model must be a samforge SAM2Base (see build_sam2), got {type(model).__name__}")
        unknown = set(kwargs) - BUILD_KWARGS
        if unknown:
            raise TypeError(f"unexpected keyword arguments {sorted(unknown)} (the generator's arguments, or "
                            f"build_sam2's {sorted(BUILD_KWARGS)}, were expected)")
        self._init_common(
            points_per_side, points_per_batch, pred_iou_thresh, stability_score_thresh, stability_score_offset,
            box_nms_thresh, crop_n_layers, crop_nms_thresh, crop_overlap_ratio, crop_n_points_downscale_factor,
            point_grids, min_mask_region_area, output_mode)
        self.mask_threshold = real_param(mask_threshold, "mask_threshold", None)
        self.use_m2m = bool_param(use_m2m, "use_m2m")
        self.multimask_output = bool_param(multimask_output, "multimask_output")
        # the post-processing of min_mask_region_area is done here, on the survivors (see _upsample)
        self.predictor = SAM2ImagePredictor(model, precision=precision)

    @classmethod
    def from_pretrained(cls, model_id: str | Path, **kwargs: Any) -> "SAM2AutomaticMaskGenerator":
        """A generator on a local SAM 2 checkpoint (see ``SAM2ImagePredictor.from_pretrained``; nothing is
        downloaded). Keyword arguments of ``build_sam2`` go to the model, the others to the generator."""
        build = {k: v for k, v in kwargs.items() if k in BUILD_KWARGS}
        model = SAM2ImagePredictor.from_pretrained(model_id, **build).model
        return cls(model, **{k: v for k, v in kwargs.items() if k not in BUILD_KWARGS})

    # ----------------------------------------------------------------------------------------- hooks
    def _set_image(self, image: np.ndarray) -> None:
        self.predictor.set_image(image)

    def _reset_image(self) -> None:
        self.predictor.reset_predictor()

    def _decode(self, coords: torch.Tensor, labels: torch.Tensor, mask_input: torch.Tensor | None,
                multimask_output: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-res mask logits ``B x C x h x w`` (not clamped) and IoU predictions ``B x C`` for point
        prompts ``B x N x 2`` in the model's input frame, on the current crop: the predictor's decoding
        without the upsampling."""
        model = self.predictor.model
        features = self.predictor._features
        sparse, dense = model.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=mask_input)
        low_res, iou_preds, _, _ = model.sam_mask_decoder(
            image_embeddings=features["image_embed"][-1].unsqueeze(0),
            image_pe=model.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
            repeat_image=coords.shape[0] > 1,
            high_res_features=[level[-1].unsqueeze(0) for level in features["high_res_feats"]],
        )
        return low_res, iou_preds

    def _process_batch(self, points: np.ndarray, crop_size: tuple[int, int], crop_box: list[int],
                       orig_size: tuple[int, int]) -> MaskData:
        transforms = self.predictor._transforms
        pts = torch.as_tensor(points, dtype=torch.float32, device=self.predictor.device)
        in_points = transforms.transform_coords(pts, normalize=True, orig_hw=crop_size)
        labels = torch.ones(in_points.shape[0], dtype=torch.int, device=in_points.device)
        low_res, iou_preds = self._decode(in_points[:, None, :], labels[:, None], None, self.multimask_output)
        n_out = low_res.shape[1]
        data = MaskData(
            low_res=low_res.flatten(0, 1),
            iou_preds=iou_preds.flatten(0, 1),
            points=pts.repeat_interleave(n_out, dim=0),  # each point once per output mask
        )
        del low_res

        if self.use_m2m:
            data["low_res"], data["iou_preds"] = self._refine_with_m2m(
                transforms.transform_coords(data["points"], normalize=True, orig_hw=crop_size),
                data["low_res"])
        if self.pred_iou_thresh > 0.0:
            data.filter(data["iou_preds"] > self.pred_iou_thresh)

        # only the masks that passed the IoU filter are upsampled, a chunk at a time
        return self._encode_in_chunks(data, crop_size, crop_box, orig_size, UPSAMPLE_CHUNK)

    def _refine_with_m2m(self, in_points: torch.Tensor, low_res: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each mask decoded again (one output) from its point (``M x 2``, model frame) and its own low-res
        logits (``M x h x w``, clamped to [-32, 32] as the predictor returns them) as mask input."""
        labels = torch.ones(in_points.shape[0], dtype=torch.int, device=in_points.device)
        return self._decode_m2m(in_points, labels, low_res.clamp(-32.0, 32.0), self.points_per_batch)

    def _decode_m2m(self, points: torch.Tensor, point_labels: torch.Tensor, low_res_masks: torch.Tensor,
                    points_per_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-res logits ``M x h x w`` and IoU ``M`` of one-output decodes of ``points`` (``M x 2``, model frame)
        with ``low_res_masks`` (``M x h x w``) as mask input, ``points_per_batch`` at a time."""
        new_low_res, new_iou = [], []
        for pts, lab, mask in batch_iterator(points_per_batch, points, point_labels, low_res_masks):
            lr, iou = self._decode(pts[:, None, :], lab[:, None], mask[:, None, :, :], multimask_output=False)
            new_low_res.append(lr[:, 0])
            new_iou.append(iou[:, 0])
        return torch.cat(new_low_res), torch.cat(new_iou)

    def refine_with_m2m(self, points: torch.Tensor, point_labels: torch.Tensor, low_res_masks: torch.Tensor,
                        points_per_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The official method: each mask decoded again from its point (``M x 2`` in the model's input frame,
        labels ``M``) and its low-res logits (``M x h x w``) as mask input. Returns the mask logits at the size
        of the current image (or crop), ``M x 1 x H x W``, and the IoU predictions ``M x 1``."""
        if not self.predictor._is_image_set:
            raise RuntimeError("refine_with_m2m needs an image: call predictor.set_image (or generate) first")
        for name, t, ndim in (("points", points, 2), ("point_labels", point_labels, 1), ("low_res_masks", low_res_masks, 3)):
            if not isinstance(t, torch.Tensor) or t.ndim != ndim:
                raise ValueError(f"{name} must be a {ndim}-D torch.Tensor, got {getattr(t, 'shape', type(t).__name__)}")
        if not len(points) == len(point_labels) == len(low_res_masks):
            raise ValueError(f"points, point_labels and low_res_masks must have one row per mask, got "
                             f"{len(points)}, {len(point_labels)}, {len(low_res_masks)}")
        if isinstance(points_per_batch, bool) or not isinstance(points_per_batch, int) or points_per_batch < 1:
            raise ValueError(f"points_per_batch must be an int >= 1, got {points_per_batch!r}")
        low_res, iou = self._decode_m2m(points, point_labels, low_res_masks, points_per_batch)
        return self._upsample(low_res, self.predictor._orig_hw[-1])[:, None], iou[:, None]

    def _upsample(self, low_res: torch.Tensor, crop_size: tuple[int, int]) -> torch.Tensor:
        """Low-res logits ``M x h x w`` -> logits ``M x H x W`` of the crop, after the small-region
        post-processing of ``min_mask_region_area`` (at the predictor's threshold, as the official code)."""
        if self.min_mask_region_area > 0 and low_res.shape[0] > 0:
            low_res = fill_holes_and_sprinkles(low_res, self.predictor.mask_threshold,
                                               self.min_mask_region_area, self.min_mask_region_area)
        return self.predictor._transforms.postprocess_masks(low_res[:, None], crop_size)[:, 0]
