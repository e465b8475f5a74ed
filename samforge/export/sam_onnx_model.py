"""SamOnnxModel: the official ``segment_anything.utils.onnx.SamOnnxModel``, for the official export script.

``scripts/export_onnx_model.py`` and the ONNX notebook of ``segment_anything`` run on samforge with only the
import changed (``from samforge.utils.onnx import SamOnnxModel``). It is :class:`SamOnnxDecoder` (one
implementation) with the official constructor (``return_single_mask`` required), the official attribute
``model`` and the official helper names. Its outputs are the official ones: ``(masks, iou_predictions,
low_res_masks)``, or five with ``return_extra_metrics``. Its full-resolution masks follow PyTorch
(``Sam.postprocess_masks``) more closely than the official module: the pre-padding size is computed in float64
as ``ResizeLongestSide`` computes it, where the official one rounds in float32 and can crop one row or column
differently (see README, "ONNX").
"""

from __future__ import annotations

import torch

from samforge.export.onnx_sam import SamOnnxDecoder
from samforge.models.sam import Sam


class SamOnnxModel(SamOnnxDecoder):
    """Prompt encoder + mask decoder + mask post-processing of ``model`` for ONNX export, with the official
    signature: ``SamOnnxModel(model, return_single_mask, use_stability_score=False,
    return_extra_metrics=False)``."""

    def __init__(
        self,
        model: Sam,
        return_single_mask: bool,
        use_stability_score: bool = False,
        return_extra_metrics: bool = False,
    ) -> None:
        super().__init__(model, return_single_mask, use_stability_score, return_extra_metrics)
        self.model = model  # as official: export scripts reach model.prompt_encoder, model.mask_threshold, ...

    @staticmethod
    def resize_longest_image_size(input_image_size: torch.Tensor, longest_side: int) -> torch.Tensor:
        """(h, w) of an image of size ``input_image_size`` resized so its long side is ``longest_side``
        (int64), rounded as ``ResizeLongestSide`` rounds it (float64)."""
        if not isinstance(input_image_size, torch.Tensor) or input_image_size.shape != (2,):
            raise ValueError(f"input_image_size must be a tensor (h, w), got {input_image_size!r}")
        size = input_image_size.to(torch.float64)
        return torch.floor(size * (longest_side / torch.max(size)) + 0.5).to(torch.int64)

    def mask_postprocessing(self, masks: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
        """Low-res mask logits ``1 x M x h x w`` -> logits at ``orig_im_size`` (H, W)."""
        return self._postprocess(masks, orig_im_size)

    def select_masks(
        self, masks: torch.Tensor, iou_preds: torch.Tensor, num_points: int | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The official choice of one mask among the decoder's outputs: the single-mask token with
        ``num_points`` >= 3 (padding included), else the multimask token of highest predicted IoU."""
        labels = torch.zeros(iou_preds.shape[0], int(num_points), device=iou_preds.device)
        return self._select_single(masks, iou_preds, labels)
