"""SamPredictor: embed an image once, then decode masks for any number of prompts.

A drop-in for ``segment_anything.SamPredictor``: same names, arguments, defaults, shapes and dtypes.
The keyword-only ``precision`` picks a fast path (see :data:`PRECISIONS`); the default is the exact one.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import torch
from torch import nn

from samforge.models.image_encoder import attention_mode
from samforge.models.sam import Sam
from samforge.predict.checks import (
    ImageNotSetError,
    check_box,
    check_image,
    check_inside,
    check_mask_input,
    check_points,
    check_tensor,
    describe,
)
from samforge.predict.transforms import ResizeLongestSide


PRECISIONS = {
    "fp32": "float32, the official order of operations: results bit-for-bit the official ones (the default)",
    "fp32-fast": "float32 with fused attention (rel-pos terms folded into SDPA) and fewer layout copies; "
    "agrees with fp32 to float rounding",
    "bf16": "the image encoder in bfloat16 end to end (weights cast per image) with fused attention; the "
    "embedding is kept in float32 and the (cheap) prompt decoder runs in float32, so outputs are float32. Fast "
    "on GPUs and on CPUs with AVX512-BF16/AMX, emulated (slower than fp32) on others",
}


def check_precision(precision: Any) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a ``ValueError`` naming them."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    return precision


def run_cast(module: nn.Module, dtype: torch.dtype, *args: Any) -> Any:
    """``module(*args)`` with its floating-point parameters and buffers cast to ``dtype`` for this call only (the
    module itself is left as it is, so later weight changes are always seen)."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    tensors = {
        name: t.to(dtype) if t.is_floating_point() else t for name, t in module.state_dict(keep_vars=True).items()
    }
    return torch.func.functional_call(module, tensors, args, strict=False, tie_weights=True)


class SamPredictor:
    #: attention mode of the fast precisions ("folded" or "sdpa_bias", see ``samforge.models.image_encoder``)
    fast_attention_mode = "folded"

    def __init__(self, sam_model: Sam, *, precision: str = "fp32") -> None:
        """``precision``: "fp32" (default, exact), "fp32-fast" or "bf16"; see :data:`PRECISIONS`."""
        if not isinstance(sam_model, Sam):
            raise TypeError(f"sam_model must be a samforge Sam model, got {type(sam_model).__name__}")
        self.precision = check_precision(precision)
        self.model = sam_model
        self.transform = ResizeLongestSide(sam_model.image_encoder.img_size)
        self.reset_image()

    @property
    def device(self) -> torch.device:
        return self.model.device

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Compute the embedding of an ``H x W x 3`` uint8 image in ``image_format`` ("RGB" or "BGR")."""
        check_image(image)
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        if image_format != self.model.image_format:
            image = image[..., ::-1]
        input_image = self.transform.apply_image(np.ascontiguousarray(image))
        input_image_torch = torch.as_tensor(input_image, device=self.device).permute(2, 0, 1).contiguous()[None]
        self.set_torch_image(input_image_torch, image.shape[:2])

    @torch.no_grad()
    def set_torch_image(self, transformed_image: torch.Tensor, original_image_size: tuple[int, ...]) -> None:
        """Compute the embedding of a ``1 x 3 x H x W`` image already resized so its long side is ``img_size``."""
        size = self.model.image_encoder.img_size
        if not isinstance(transformed_image, torch.Tensor):
            raise TypeError(f"transformed_image must be a torch.Tensor 1x3xHxW, got {describe(transformed_image)}")
        shape = tuple(transformed_image.shape)
        if len(shape) != 4 or shape[0] != 1 or shape[1] != 3 or max(shape[2:]) != size:
            raise ValueError(
                f"transformed_image must have shape 1x3xHxW with the longest side {size} "
                f"(use predictor.transform.apply_image), got {shape}"
            )
        try:  # two integers (python, numpy or 0-d integer tensors), not bools, strings or floats
            hw = tuple(operator.index(s) if not isinstance(s, bool) else None for s in original_image_size)
        except TypeError:
            hw = ()
        if len(hw) != 2 or None in hw or min(hw) <= 0:
            raise ValueError(f"original_image_size must be (H, W) with H, W > 0 integers, got {original_image_size!r}")
        self.reset_image()
        self.original_size = hw
        self.input_size = tuple(shape[-2:])
        input_image = self.model.preprocess(transformed_image.to(self.device))
        encoder = self.model.image_encoder
        if self.precision == "fp32":
            self.features = encoder(input_image)
        else:
            with attention_mode(encoder, self.fast_attention_mode):
                if self.precision == "bf16":
                    self.features = run_cast(encoder, torch.bfloat16, input_image.to(torch.bfloat16)).float()
                else:
                    self.features = encoder(input_image)
        self.is_image_set = True

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for prompts in the original image's pixel coordinates.

        ``point_coords`` N x 2 (x, y) with ``point_labels`` N (1 foreground, 0 background), ``box`` 4 (XYXY),
        ``mask_input`` 1 x 256 x 256 low-res logits of a previous call. Returns masks C x H x W (bool, or float
        logits with ``return_logits``), IoU predictions C, and low-res logits C x 256 x 256; C is 3 with
        ``multimask_output`` else 1.
        """
        self._check_image_set()
        coords_torch = labels_torch = box_torch = mask_input_torch = None
        if point_coords is None and point_labels is not None:
            raise ValueError("point_labels were given without point_coords")
        if point_coords is not None:
            coords, labels = check_points(point_coords, point_labels, self.original_size)
            coords = self.transform.apply_coords(coords, self.original_size)
            coords_torch = torch.as_tensor(coords, dtype=torch.float, device=self.device)[None, :, :]
            labels_torch = torch.as_tensor(labels, dtype=torch.int, device=self.device)[None, :]
        if box is not None:
            box = self.transform.apply_boxes(check_box(box, self.original_size), self.original_size)
            box_torch = torch.as_tensor(box, dtype=torch.float, device=self.device)[None, :]
        if mask_input is not None:
            check_mask_input(mask_input, self.model.prompt_encoder.mask_input_size)
            mask_input_torch = torch.as_tensor(mask_input, dtype=torch.float, device=self.device)[None, :, :, :]

        masks, iou_predictions, low_res_masks = self.predict_torch(
            coords_torch, labels_torch, box_torch, mask_input_torch, multimask_output, return_logits=return_logits
        )
        return (
            masks[0].detach().cpu().numpy(),
            iou_predictions[0].detach().cpu().numpy(),
            low_res_masks[0].detach().cpu().numpy(),
        )

    @torch.no_grad()
    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Masks for a batch of B prompt sets on the current image, coordinates in the resized input frame
        (``predictor.transform.apply_coords_torch`` / ``apply_boxes_torch``).

        ``point_coords`` B x N x 2 with ``point_labels`` B x N, ``boxes`` B x 4, ``mask_input`` B x 1 x 256 x 256.
        Returns masks B x C x H x W, IoU predictions B x C, low-res logits B x C x 256 x 256.
        """
        self._check_image_set()
        self._check_prompt_batch(point_coords, point_labels, boxes, mask_input)
        device = self.device
        points = None
        if point_coords is not None:
            points = (point_coords.to(device), point_labels.to(device))
        sparse, dense = self.model.prompt_encoder(
            points=points,
            boxes=None if boxes is None else boxes.to(device),
            masks=None if mask_input is None else mask_input.to(device),
        )
        low_res_masks, iou_predictions = self.model.mask_decoder(
            image_embeddings=self.features,
            image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )
        masks = self.model.postprocess_masks(low_res_masks, self.input_size, self.original_size)
        if not return_logits:
            masks = masks > self.model.mask_threshold
        return masks, iou_predictions, low_res_masks

    def get_image_embedding(self) -> torch.Tensor:
        """The current image's embedding, ``1 x C x h x w``."""
        self._check_image_set()
        return self.features

    def reset_image(self) -> None:
        """Forget the current image and its embedding."""
        self.is_image_set = False
        self.features: torch.Tensor | None = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None

    def _check_image_set(self) -> None:
        if not self.is_image_set:
            raise ImageNotSetError("An image must be set with .set_image(...) before mask prediction.")

    def _check_prompt_batch(self, point_coords: Any, point_labels: Any, boxes: Any, mask_input: Any) -> None:
        batch_sizes = {}
        if (point_coords is None) != (point_labels is None):
            raise ValueError("point_coords and point_labels must be given together")
        if point_coords is not None:
            check_tensor(point_coords, "point_coords", "BxNx2", ndim=3, last=2)
            check_tensor(point_labels, "point_labels", f"{point_coords.shape[0]}x{point_coords.shape[1]}", ndim=2)
            if tuple(point_labels.shape) != tuple(point_coords.shape[:2]):
                raise ValueError(
                    f"point_labels must have shape {tuple(point_coords.shape[:2])} to match point_coords, "
                    f"got {tuple(point_labels.shape)}"
                )
            check_inside(point_coords.detach().cpu().numpy(), self.input_size, "point_coords (resized frame)", 1.0)
            batch_sizes["point_coords"] = point_coords.shape[0]
        if boxes is not None:
            if isinstance(boxes, torch.Tensor) and boxes.ndim == 3:
                check_tensor(boxes, "boxes", "Bx1x4", ndim=3, last=4)
                if boxes.shape[1] != 1:
                    raise ValueError(f"boxes must have shape Bx4 (or Bx1x4), got {tuple(boxes.shape)}")
            else:
                check_tensor(boxes, "boxes", "Bx4", ndim=2, last=4)
            check_inside(boxes.detach().cpu().numpy(), self.input_size, "boxes (resized frame)", 1.0)
            batch_sizes["boxes"] = boxes.shape[0]
        if mask_input is not None:
            check_tensor(mask_input, "mask_input", "Bx1xHxW", ndim=4)
            check_mask_input(mask_input, self.model.prompt_encoder.mask_input_size, batch=mask_input.shape[0])
            batch_sizes["mask_input"] = mask_input.shape[0]
        if len(set(batch_sizes.values())) > 1:
            raise ValueError(f"prompts must have the same batch size B, got {batch_sizes}")
