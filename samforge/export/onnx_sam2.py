"""ONNX export of SAM 2 image models: the image encoder and the prompt-encoder + mask-decoder, as two files.

``encoder.onnx`` takes ``image``: 1 x 3 x S x S float32, the image as ``SAM2Transforms`` gives it (pixel values
/ 255 resized to the model's square size S, antialiased bilinear, ImageNet-normalised; the mean / std are in the
file's metadata), and outputs what ``SAM2ImagePredictor.set_image`` caches:

=================  ==========================  =============================================================
output             shape (S = 1024)            meaning
=================  ==========================  =============================================================
image_embed        1 x 256 x 64 x 64           the stride-16 level, with ``no_mem_embed`` added (image mode)
high_res_feats_0   1 x 32 x 256 x 256          the stride-4 level, already projected by the decoder's conv_s0
high_res_feats_1   1 x 64 x 128 x 128          the stride-8 level, already projected by conv_s1
=================  ==========================  =============================================================

``decoder.onnx`` takes those three plus the prompts (input names as in the widely used community SAM 2 decoders):

=================  =========================  ===========================================================
input              shape / dtype              meaning
=================  =========================  ===========================================================
point_coords       1 x N x 2      float32     (x, y) in the model's S x S input frame; N is dynamic (0 allowed);
                                              box corners are two points labelled 2 and 3, put first
point_labels       1 x N          float32     1 foreground, 0 background, 2 / 3 box corners, -1 padding; SAM 2
                                              always appends one padding point (0, 0) / -1 after the points
mask_input         1 x 1 x 4h x 4w float32    low-res logits of a previous prediction (zeros when unused)
has_mask_input     1              float32     1 when ``mask_input`` is used, else 0
orig_im_size       2              float32     (H, W) of the original image
=================  =========================  ===========================================================

Outputs: ``masks`` (1 x M x H x W logits at ``orig_im_size``), ``iou_predictions`` (1 x M) and ``low_res_masks``
(1 x M x 4h x 4w, clamped to [-32, 32] as ``SAM2ImagePredictor`` returns them). With ``return_single_mask=False``
(the default) M = 4: the single-mask token first, then the three multimask tokens; ``SAM2ImagePredictor``'s
``multimask_output=True`` is ``[1:]``, and its one mask is chosen from the four by SAM 2's dynamic rule
(``dynamic_multimask_via_stability``, parameters in the metadata; :class:`OnnxSAM2ImagePredictor` applies it).
With ``return_single_mask=True`` M = 1, chosen by that rule inside the graph. The object score and the object
pointer (used by video tracking only) are not exported.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from samforge.export.onnx_sam import DEFAULT_OPSET, FILE_NAMES, PARTS, _finish, _torch_export, write_onnx_parts
from samforge.export.onnx_sam2_predictor import (
    SAM2_DECODER_INPUTS,
    SAM2_DECODER_OUTPUTS,
    SAM2_ENCODER_INPUTS,
    SAM2_ENCODER_OUTPUTS,
)
from samforge.models.sam2 import SAM2Base
from samforge.predict.sam2_transforms import IMAGENET_MEAN, IMAGENET_STD

LOW_RES_CLAMP = 32.0  # SAM2ImagePredictor clamps the low-res logits it returns to [-32, 32]


def _check_sam2(model: object) -> SAM2Base:
    if not isinstance(model, SAM2Base):
        kind = type(model).__name__
        extra = " (for SAM v1 use export_sam_onnx)" if kind == "Sam" else ""
        raise TypeError(f"model must be a samforge SAM 2 model (SAM2Base, see build_sam2), got {kind}{extra}")
    if not model.use_high_res_features_in_sam:
        raise ValueError("ONNX export of SAM 2 needs a model with use_high_res_features_in_sam=True (every official "
                         "SAM 2 / 2.1 configuration); this model decodes from the stride-16 level only")
    return model


def _grid(model: SAM2Base) -> int:
    return int(model.sam_image_embedding_size)


class SAM2OnnxEncoder(nn.Module):
    """``image`` 1 x 3 x S x S (``SAM2Transforms``' output) -> (image_embed, high_res_feats_0, high_res_feats_1),
    computed as ``SAM2ImagePredictor.set_image`` does."""

    def __init__(self, model: SAM2Base) -> None:
        super().__init__()
        self.model = _check_sam2(model)
        g = _grid(model)
        self.feat_sizes = [(4 * g, 4 * g), (2 * g, 2 * g), (g, g)]

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        backbone_out = self.model.forward_image(image)
        _, vision_feats, _, _ = self.model._prepare_backbone_features(backbone_out)
        if self.model.directly_add_no_mem_embed:
            vision_feats[-1] = vision_feats[-1] + self.model.no_mem_embed
        feats = [feat.permute(1, 2, 0).reshape(1, -1, *size) for feat, size in zip(vision_feats, self.feat_sizes)]
        return feats[2], feats[0], feats[1]


class SAM2OnnxDecoder(nn.Module):
    """SAM 2's prompt encoder + mask decoder + mask post-processing with the interface of the module docstring.
    Works on batch 1."""

    def __init__(self, model: SAM2Base, return_single_mask: bool = False) -> None:
        super().__init__()
        model = _check_sam2(model)
        if not isinstance(return_single_mask, bool):
            raise TypeError(f"return_single_mask must be a bool, got {type(return_single_mask).__name__}")
        self.prompt_encoder = model.sam_prompt_encoder
        self.mask_decoder = model.sam_mask_decoder
        self.image_size = int(model.image_size)
        self.return_single_mask = return_single_mask
        with torch.no_grad():
            self.register_buffer("dense_pe", self.prompt_encoder.get_dense_pe().detach().clone(), persistent=False)

    def _embed_points(self, point_coords: torch.Tensor, point_labels: torch.Tensor) -> torch.Tensor:
        """As ``PromptEncoder._embed_points`` (the padding point is the caller's), without control flow."""
        pe = self.prompt_encoder
        coords = (point_coords + 0.5) / self.image_size
        embedding = pe.pe_layer._pe_encoding(coords)
        labels = point_labels.unsqueeze(-1)
        embedding = torch.where(labels == -1, pe.not_a_point_embed.weight, embedding)
        for i in range(pe.num_point_embeddings):  # 0 background, 1 foreground, 2 / 3 box corners
            embedding = embedding + pe.point_embeddings[i].weight * (labels == i)
        return embedding

    def _embed_masks(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        pe = self.prompt_encoder
        embedding = has_mask_input * pe.mask_downscaling(mask_input)
        return embedding + (1 - has_mask_input) * pe.no_mask_embed.weight.reshape(1, -1, 1, 1)

    def _select_single(self, masks: torch.Tensor, iou: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The one mask ``SAM2ImagePredictor`` returns with ``multimask_output=False``."""
        if self.mask_decoder.dynamic_multimask_via_stability:
            return self.mask_decoder._dynamic_multimask_via_stability(masks, iou)
        return masks[:, 0:1], iou[:, 0:1]

    def forward(
        self,
        image_embed: torch.Tensor,
        high_res_feats_0: torch.Tensor,
        high_res_feats_1: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        orig_im_size: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sparse = self._embed_points(point_coords, point_labels)
        dense = self._embed_masks(mask_input, has_mask_input)
        masks, iou, _, _ = self.mask_decoder.predict_masks(
            image_embeddings=image_embed,
            image_pe=self.dense_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            repeat_image=False,
            high_res_features=[high_res_feats_0, high_res_feats_1],
        )
        if self.return_single_mask:
            masks, iou = self._select_single(masks, iou)
        hw = orig_im_size.to(torch.int64)
        upscaled = F.interpolate(masks.float(), size=(hw[0], hw[1]), mode="bilinear", align_corners=False)
        return upscaled, iou, torch.clamp(masks, -LOW_RES_CLAMP, LOW_RES_CLAMP)

    def dummy_inputs(self, num_points: int = 5) -> tuple[torch.Tensor, ...]:
        """Example inputs of the right shapes."""
        c = self.prompt_encoder.embed_dim
        h, w = self.prompt_encoder.image_embedding_size
        g = torch.Generator().manual_seed(0)
        return (
            torch.randn(1, c, h, w, generator=g),
            torch.randn(1, c // 8, 4 * h, 4 * w, generator=g),
            torch.randn(1, c // 4, 2 * h, 2 * w, generator=g),
            torch.randint(0, self.image_size, (1, num_points, 2), generator=g).float(),
            torch.randint(-1, 4, (1, num_points), generator=g).float(),
            torch.randn(1, 1, 4 * h, 4 * w, generator=g),
            torch.tensor([1.0]),
            torch.tensor([1500.0, 2250.0]),
        )


def _metadata(model: SAM2Base, part: str, opset: int, **extra: object) -> dict[str, str]:
    from samforge import __version__

    g = _grid(model)
    c = int(model.sam_prompt_embed_dim)
    decoder = model.sam_mask_decoder
    meta = {
        "samforge.version": __version__,
        "samforge.family": "sam2",
        "samforge.part": part,
        "samforge.opset": opset,
        "samforge.model": getattr(model, "config_name", "custom"),
        "samforge.image_size": int(model.image_size),
        "samforge.embedding_size": [g, g],
        "samforge.embed_dim": c,
        "samforge.high_res_shapes": [[c // 8, 4 * g, 4 * g], [c // 4, 2 * g, 2 * g]],
        "samforge.mask_input_size": [4 * g, 4 * g],
        "samforge.image_mean": list(IMAGENET_MEAN),  # of pixel values / 255, as SAM2Transforms
        "samforge.image_std": list(IMAGENET_STD),
        "samforge.dynamic_multimask_via_stability": bool(decoder.dynamic_multimask_via_stability),
        "samforge.stability_delta": float(decoder.dynamic_multimask_stability_delta),
        "samforge.stability_thresh": float(decoder.dynamic_multimask_stability_thresh),
    }
    meta.update({f"samforge.{k}": v for k, v in extra.items()})
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


def _export_encoder(model: SAM2Base, directory: Path, opset: int, external_data: bool | None) -> list[Path]:
    """``encoder.onnx`` (and ``encoder.onnx.data`` when external) in ``directory``, which holds nothing else."""
    s = int(model.image_size)
    example = torch.randn(1, 3, s, s, generator=torch.Generator().manual_seed(0))
    path = directory / FILE_NAMES["encoder"]
    _torch_export(SAM2OnnxEncoder(model), (example,), path, opset, SAM2_ENCODER_INPUTS, SAM2_ENCODER_OUTPUTS, {})
    _finish(path, _metadata(model, "encoder", opset), external_data)
    return sorted(directory.iterdir(), key=lambda p: p == path)  # weights first, the model file last


def _export_decoder(model: SAM2Base, directory: Path, opset: int, return_single_mask: bool) -> Path:
    """``decoder.onnx`` in ``directory``, which holds nothing else."""
    decoder = SAM2OnnxDecoder(model, return_single_mask=return_single_mask)
    dynamic_axes = {
        "point_coords": {1: "num_points"},
        "point_labels": {1: "num_points"},
        "masks": {2: "height", 3: "width"},
    }
    path = directory / FILE_NAMES["decoder"]
    _torch_export(decoder, decoder.dummy_inputs(), path, opset, SAM2_DECODER_INPUTS, SAM2_DECODER_OUTPUTS,
                  dynamic_axes)
    m = 1 if return_single_mask else int(model.sam_mask_decoder.num_mask_tokens)
    g = 4 * _grid(model)
    shapes = {"masks": [1, m, "height", "width"], "iou_predictions": [1, m], "low_res_masks": [1, m, g, g]}
    meta = _metadata(model, "decoder", opset, return_single_mask=return_single_mask, num_mask_outputs=m)
    _finish(path, meta, external_data=False, output_shapes=shapes)
    return path


def export_sam2_onnx(
    model: SAM2Base,
    out_dir: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
    quantize: str | None = None,
    *,
    return_single_mask: bool = False,
    parts: Iterable[str] = PARTS,
    external_data: bool | None = None,
) -> dict[str, Path]:
    """Export a SAM 2 image model to ONNX files in ``out_dir`` (created if needed) and return them by part.

    Writes ``encoder.onnx`` (key ``"encoder"``) and ``decoder.onnx`` (``"decoder"``); with ``quantize="int8"``
    also ``decoder.int8.onnx`` (``"decoder_int8"``, dynamically quantized weights; the float32 decoder is kept
    beside it). ``parts`` picks ``"encoder"`` and/or ``"decoder"``. ``return_single_mask``: the decoder outputs
    the one mask of ``multimask_output=False`` instead of all four. ``external_data``: store the encoder's
    weights in ``encoder.onnx.data`` beside it; by default only past protobuf's 2 GB limit. A model carrying
    LoRA adapters is exported merged (on a copy).

    Every file is produced in a private work directory first and moved into place (atomically, each) only
    when all of them are complete: a failure leaves no new file behind. Existing files are replaced.
    """
    return write_onnx_parts(_check_sam2(model), out_dir, opset, quantize, return_single_mask, parts, external_data,
                            _export_encoder, _export_decoder)
