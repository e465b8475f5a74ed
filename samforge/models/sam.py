"""Sam: image encoder + prompt encoder + mask decoder, with the official batched ``forward``."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from samforge.models.image_encoder import ImageEncoderViT
from samforge.models.mask_decoder import MaskDecoder
from samforge.models.prompt_encoder import PromptEncoder

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class Sam(nn.Module):
    mask_threshold: float = 0.0
    image_format: str = "RGB"

    def __init__(
        self,
        image_encoder: ImageEncoderViT,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        pixel_mean: tuple[float, float, float] = PIXEL_MEAN,
        pixel_std: tuple[float, float, float] = PIXEL_STD,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @torch.no_grad()
    def forward(self, batched_input: list[dict[str, Any]], multimask_output: bool) -> list[dict[str, torch.Tensor]]:
        """Predict masks for a batch of images, each with its own prompts.

        Each record holds ``image`` (3 x H x W, already resized so the long side is ``img_size``),
        ``original_size`` (H, W) and optionally ``point_coords`` (B x N x 2) with ``point_labels`` (B x N),
        ``boxes`` (B x 4), ``mask_inputs`` (B x 1 x 256 x 256), in the resized frame.
        Returns per image ``masks`` (B x M x H x W bool), ``iou_predictions`` (B x M),
        ``low_res_logits`` (B x M x 256 x 256). Runs without autograd, as the official ``Sam.forward`` does (no
        graph is kept, outputs do not require grad): training calls the encoders and the decoder itself
        (``samforge.train.step``).
        """
        if not isinstance(batched_input, (list, tuple)) or not batched_input:
            raise TypeError(f"batched_input must be a non-empty list of dicts, got {type(batched_input).__name__}")
        for i, record in enumerate(batched_input):
            if not isinstance(record, dict) or "image" not in record or "original_size" not in record:
                raise ValueError(f"batched_input[{i}] must be a dict with 'image' and 'original_size'")
            if ("point_coords" in record) != ("point_labels" in record):
                raise ValueError(f"batched_input[{i}] has point_coords without point_labels or the reverse")
        input_images = torch.stack([self.preprocess(record["image"]) for record in batched_input], dim=0)
        image_embeddings = self.image_encoder(input_images)

        outputs = []
        for record, embedding in zip(batched_input, image_embeddings):
            points = (record["point_coords"], record["point_labels"]) if "point_coords" in record else None
            sparse, dense = self.prompt_encoder(points=points, boxes=record.get("boxes"), masks=record.get("mask_inputs"))
            low_res_masks, iou_predictions = self.mask_decoder(
                image_embeddings=embedding.unsqueeze(0),
                image_pe=self.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask_output,
            )
            masks = self.postprocess_masks(low_res_masks, record["image"].shape[-2:], record["original_size"])
            outputs.append(
                {
                    "masks": masks > self.mask_threshold,
                    "iou_predictions": iou_predictions,
                    "low_res_logits": low_res_masks,
                }
            )
        return outputs

    def postprocess_masks(
        self, masks: torch.Tensor, input_size: tuple[int, ...], original_size: tuple[int, ...]
    ) -> torch.Tensor:
        """Upscale low-res logits to the padded input, drop the padding, resize to the original image."""
        size = self.image_encoder.img_size
        masks = F.interpolate(masks, (size, size), mode="bilinear", align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        return F.interpolate(masks, tuple(int(s) for s in original_size), mode="bilinear", align_corners=False)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize pixel values and pad the bottom/right to a square ``img_size`` input."""
        x = (x - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        size = self.image_encoder.img_size
        return F.pad(x, (0, size - w, 0, size - h))
