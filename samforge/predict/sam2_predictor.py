"""SAM2ImagePredictor: embed an image (or a batch) once with SAM 2, then decode masks for any prompts.

A drop-in for ``sam2.sam2_image_predictor.SAM2ImagePredictor``: same names, arguments, defaults, shapes
and dtypes (masks come back as float32 0/1 arrays, as the official predictor returns them). Inputs are
checked and bad ones raise ``TypeError``/``ValueError`` saying what was expected. The keyword-only
``precision`` ("fp32" default and exact, "fp32-fast", "bf16", "int8", "auto") is samforge's addition, as for
``SamPredictor``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL.Image import Image

from samforge.models.checkpoint import load_state_dict_strict, read_state_dict
from samforge.models.sam2 import SAM2Base, build_sam2, guess_sam2_config
from samforge.predict.checks import (
    SAM2_POINT_LABELS,
    ImageNotSetError,
    check_bool,
    check_box,
    check_image,
    check_mask_input,
    check_points,
    describe,
)
from samforge.predict.predictor import predictor_precision, run_cast
from samforge.predict.quantize import int8_encoder
from samforge.predict.sam2_cpu_encoder import fast_sam2_encoder
from samforge.predict.sam2_transforms import SAM2Transforms
from samforge.weights import resolve_checkpoint

# official Hugging Face model ids -> (config, file name) (samforge.weights fetches them: predict/pretrained.py)
HF_MODELS = {
    f"facebook/{version}-hiera-{size}": (f"{version}_hiera_{short}", f"{version}_hiera_{long}.pt")
    for version in ("sam2", "sam2.1")
    for size, short, long in (("tiny", "t", "tiny"), ("small", "s", "small"), ("base-plus", "b+", "base_plus"),
                              ("large", "l", "large"))
}
BUILD_KWARGS = {"config_file", "device", "mode", "hydra_overrides_extra", "apply_postprocessing"}


class SAM2ImagePredictor:
    def __init__(
        self,
        sam_model: SAM2Base,
        mask_threshold: float = 0.0,
        max_hole_area: float = 0.0,
        max_sprinkle_area: float = 0.0,
        *,
        precision: str = "fp32",
        **kwargs: Any,
    ) -> None:
        """``max_hole_area`` / ``max_sprinkle_area``: see ``SAM2Transforms`` (skipped with a warning, as the
        official code does without its CUDA extension). ``precision``: "fp32" (default, exact), "fp32-fast"
        (on a CPU the image encoder's chunked float32 copy, ``samforge.predict.sam2_cpu_encoder``: the same
        arithmetic in a memory-friendlier order, agreeing with "fp32" to float rounding; elsewhere "fp32") or "bf16"
        (the image encoder in bfloat16 end to end, weights cast per image; its features are kept in float32 and
        the prompt decoder runs in float32, so outputs are float32), "int8" (the image encoder's linear layers
        dynamically quantised, on a copy: see ``samforge.predict.quantize``) or "auto" (picked for the device and
        CPU; ``self.precision`` says which runs). Other keyword arguments may only be those
        of ``build_sam2`` (``from_pretrained`` passes them to both), which are ignored here."""
        if not isinstance(sam_model, SAM2Base):
            raise TypeError(f"sam_model must be a samforge SAM2Base (see build_sam2), got {type(sam_model).__name__}")
        unknown = set(kwargs) - BUILD_KWARGS
        if unknown:
            raise TypeError(f"unexpected keyword arguments {sorted(unknown)}")
        self.precision = predictor_precision(precision, sam_model.device, auto_int8=False)  # see precision.py
        self.model = sam_model
        self._transforms = SAM2Transforms(
            resolution=sam_model.image_size,
            mask_threshold=mask_threshold,
            max_hole_area=max_hole_area,
            max_sprinkle_area=max_sprinkle_area,
        )
        self.mask_threshold = mask_threshold
        s = sam_model.image_size
        self._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]  # backbone levels used
        self.reset_predictor()

    @classmethod
    def from_pretrained(cls, model_id: str | Path, **kwargs: Any) -> "SAM2ImagePredictor":
        """A predictor from a checkpoint: a local file, or an official Hugging Face id (``facebook/sam2.1-hiera-tiny``)
        fetched, verified and cached by ``samforge.weights`` (``huggingface_hub`` needed for ids, as officially).
        The configuration is ``config_file`` when given, else the id's, else recognised from the file's shapes.
        Other keyword arguments go to ``build_sam2`` and to the predictor, as in the official method."""
        if str(model_id) in HF_MODELS:
            kwargs.setdefault("config_file", HF_MODELS[str(model_id)][0])
            model_id = resolve_checkpoint(str(model_id), what="SAM 2 checkpoint")
        state_dict = read_state_dict(model_id)
        guess = guess_sam2_config(state_dict)
        config = kwargs.get("config_file") or guess
        if config is None:
            raise ValueError(f"{model_id} does not look like a SAM 2 checkpoint of a known size; pass config_file=...")
        build = {k: v for k, v in kwargs.items() if k in BUILD_KWARGS - {"config_file"}}
        model = build_sam2(config, None, **build)
        hint = f"The file looks like a {guess!r} checkpoint." if guess not in (None, model.config_name) else ""
        load_state_dict_strict(model, state_dict, source=f"checkpoint {model_id} (config {config!r})", hint=hint)
        return cls(model, **{k: v for k, v in kwargs.items() if k not in BUILD_KWARGS}, **build)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @torch.no_grad()
    def set_image(self, image: np.ndarray | Image) -> None:
        """Compute the embeddings of one RGB image: an ``H x W x 3`` uint8 array or a PIL image."""
        image = _as_rgb_array(image, "image")
        self.reset_predictor()
        self._orig_hw = [image.shape[:2]]
        self._features = self._embed(self._transforms(image)[None, ...].to(self.device))
        self._is_image_set = True

    @torch.no_grad()
    def set_image_batch(self, image_list: list[np.ndarray]) -> None:
        """Compute the embeddings of several RGB images (``H x W x 3`` uint8 arrays), for ``predict_batch``."""
        if not isinstance(image_list, list):
            raise TypeError(f"image_list must be a list of HxWx3 uint8 numpy arrays, got {type(image_list).__name__}")
        if not image_list:
            raise ValueError("image_list must hold at least one image, got an empty list")
        images = []
        for i, image in enumerate(image_list):
            if not isinstance(image, np.ndarray):
                raise TypeError(f"image_list[{i}] must be an HxWx3 uint8 numpy array, got {describe(image)}")
            images.append(_as_rgb_array(image, f"image_list[{i}]"))
        self.reset_predictor()
        self._orig_hw = [image.shape[:2] for image in images]
        batch = self._transforms.forward_batch(images).to(self.device)
        self._features = self._embed(batch)
        self._is_image_set = True
        self._is_batch = True

    def _embed(self, img_batch: torch.Tensor) -> dict[str, Any]:
        """Image embedding (stride 16, with the no-memory embedding) and the two high-res levels."""
        backbone_out = self._forward_image(img_batch)
        _, vision_feats, _, _ = self.model._prepare_backbone_features(backbone_out)
        if self.model.directly_add_no_mem_embed:
            vision_feats[-1] = vision_feats[-1] + self.model.no_mem_embed
        b = img_batch.shape[0]
        feats = [
            feat.permute(1, 2, 0).view(b, -1, *size)
            for feat, size in zip(vision_feats[::-1], self._bb_feat_sizes[::-1])
        ][::-1]
        return {"image_embed": feats[-1], "high_res_feats": feats[:-1]}

    def _forward_image(self, img_batch: torch.Tensor) -> dict[str, Any]:
        """``SAM2Base.forward_image`` in this predictor's precision (see :func:`forward_image_in`)."""
        return forward_image_in(self.model, img_batch, self.precision)

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for prompts on the current image.

        ``point_coords`` N x 2 (x, y) or B x N x 2 with ``point_labels`` N or B x N (1 foreground, 0 background;
        the prompt encoder's -1 padding and 2/3 box corners too); ``box`` 4 or B x 4 (XYXY, x0 <= x1, y0 <= y1);
        ``mask_input`` 1 x 256 x 256 (or B x 1 x 256 x 256) low-res logits of a previous call. Coordinates are
        pixels of the original image with ``normalize_coords``, else in [0, 1]; prompts past the border are used
        as given, as the official predictor uses them (a warning when one lies entirely outside).
        Returns masks C x H x W (float32 0/1, or logits with ``return_logits``), IoU predictions C and low-res
        logits C x 256 x 256 (with a leading B when the prompts are batched); C is 3 with
        ``multimask_output`` else 1.
        """
        self._check_image_set("set_image")
        check_bool(multimask_output, "multimask_output")
        check_bool(return_logits, "return_logits")
        if self._is_batch and len(self._orig_hw) > 1:
            raise ValueError(f"{len(self._orig_hw)} images were set with set_image_batch: use predict_batch")
        prompts = self._prep_prompts(point_coords, point_labels, box, mask_input, normalize_coords)
        mask_input_t, coords, labels, boxes = prompts
        masks, iou_predictions, low_res_masks = self._predict(
            coords, labels, boxes, mask_input_t, multimask_output, return_logits=return_logits
        )
        return _to_numpy(masks), _to_numpy(iou_predictions), _to_numpy(low_res_masks)

    def predict_batch(
        self,
        point_coords_batch: Sequence[np.ndarray | None] | None = None,
        point_labels_batch: Sequence[np.ndarray | None] | None = None,
        box_batch: Sequence[np.ndarray | None] | None = None,
        mask_input_batch: Sequence[np.ndarray | None] | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
    ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """``predict`` for each image set with ``set_image_batch``: one list entry (or None) per image in each
        prompt list. Returns lists (one entry per image) of masks, IoU predictions and low-res logits."""
        self._check_image_set("set_image_batch")
        if not self._is_batch:
            raise ValueError("predict_batch needs images set with set_image_batch (set_image was used: call predict)")
        num_images = len(self._orig_hw)
        prompt_lists = {
            "point_coords_batch": point_coords_batch,
            "point_labels_batch": point_labels_batch,
            "box_batch": box_batch,
            "mask_input_batch": mask_input_batch,
        }
        for name, values in prompt_lists.items():
            if values is not None and (not isinstance(values, (list, tuple)) or len(values) != num_images):
                given = f"a list of {len(values)}" if isinstance(values, (list, tuple)) else describe(values)
                raise ValueError(f"{name} must be a list with one entry per image ({num_images}), got {given}")
        all_masks, all_ious, all_low_res = [], [], []
        for i in range(num_images):
            picked = [None if values is None else values[i] for values in prompt_lists.values()]
            mask_input, coords, labels, boxes = self._prep_prompts(*picked, normalize_coords, img_idx=i)
            masks, iou_predictions, low_res_masks = self._predict(
                coords, labels, boxes, mask_input, multimask_output, return_logits=return_logits, img_idx=i
            )
            all_masks.append(_to_numpy(masks))
            all_ious.append(_to_numpy(iou_predictions))
            all_low_res.append(_to_numpy(low_res_masks))
        return all_masks, all_ious, all_low_res

    def _prep_prompts(
        self,
        point_coords: Any,
        point_labels: Any,
        box: Any,
        mask_logits: Any,
        normalize_coords: bool,
        img_idx: int = -1,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Check numpy prompts and bring them to tensors in the model's input frame:
        (mask_input B x 1 x h x w, coords B x N x 2, labels B x N, box corners B x 2 x 2)."""
        orig_hw = self._orig_hw[img_idx]
        frame = orig_hw if normalize_coords else (1, 1)
        coords = labels = boxes = mask_input = None
        batch: dict[str, int] = {}
        if point_coords is None and point_labels is not None:
            raise ValueError("point_labels were given without point_coords")
        if point_coords is not None:
            coords_np, labels_np = check_points(point_coords, point_labels, frame, allowed=SAM2_POINT_LABELS,
                                                batched=True)
            coords = torch.as_tensor(coords_np, dtype=torch.float, device=self.device)
            coords = self._transforms.transform_coords(coords, normalize=normalize_coords, orig_hw=orig_hw)
            labels = torch.as_tensor(labels_np, dtype=torch.int, device=self.device)
            if coords.ndim == 2:
                coords, labels = coords[None, ...], labels[None, ...]
            batch["point_coords"] = coords.shape[0]
        if box is not None:
            box_np = check_box(box, frame, batched=True)
            boxes = torch.as_tensor(box_np, dtype=torch.float, device=self.device)
            boxes = self._transforms.transform_boxes(boxes, normalize=normalize_coords, orig_hw=orig_hw)
            batch["box"] = boxes.shape[0]
        if len(set(batch.values())) > 1:
            raise ValueError(f"points and boxes must have the same batch size B, got {batch}")
        if mask_logits is not None:
            low_res = self.model.sam_prompt_encoder.mask_input_size
            batched = isinstance(mask_logits, (np.ndarray, torch.Tensor)) and mask_logits.ndim == 4
            check_mask_input(mask_logits, low_res, batch=mask_logits.shape[0] if batched else None)
            mask_input = torch.as_tensor(mask_logits, dtype=torch.float, device=self.device)
            if mask_input.ndim == 3:
                mask_input = mask_input[None, :, :, :]
            prompt_batch = next(iter(batch.values()), None)
            if prompt_batch is not None and mask_input.shape[0] not in (1, prompt_batch):
                raise ValueError(
                    f"mask_input holds {mask_input.shape[0]} masks for a batch of {prompt_batch} prompts; "
                    "give one mask or one per prompt"
                )
        return mask_input, coords, labels, boxes

    @torch.no_grad()
    def _predict(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        img_idx: int = -1,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Masks for prompts already in the model's input frame (``_prep_prompts``): boxes become two
        corner points (labels 2, 3) placed before the other points. Returns masks B x C x H x W,
        IoU B x C and low-res logits B x C x h x w (clamped to [-32, 32])."""
        self._check_image_set("set_image")
        concat_points = (point_coords, point_labels) if point_coords is not None else None
        if boxes is not None:
            box_coords = boxes.reshape(-1, 2, 2)
            box_labels = torch.tensor([[2, 3]], dtype=torch.int, device=boxes.device).repeat(boxes.size(0), 1)
            if concat_points is not None:
                concat_points = (
                    torch.cat([box_coords, concat_points[0]], dim=1),
                    torch.cat([box_labels, concat_points[1]], dim=1),
                )
            else:
                concat_points = (box_coords, box_labels)

        sparse_embeddings, dense_embeddings = self.model.sam_prompt_encoder(
            points=concat_points, boxes=None, masks=mask_input
        )
        # one image for several prompt sets (the official rule, plus several masks without points)
        batched_mode = (concat_points is not None and concat_points[0].shape[0] > 1) or (
            concat_points is None and mask_input is not None and mask_input.shape[0] > 1
        )
        high_res_features = [level[img_idx].unsqueeze(0) for level in self._features["high_res_feats"]]
        low_res_masks, iou_predictions, _, _ = self.model.sam_mask_decoder(
            image_embeddings=self._features["image_embed"][img_idx].unsqueeze(0),
            image_pe=self.model.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse_embeddings,
            dense_prompt_embeddings=dense_embeddings,
            multimask_output=multimask_output,
            repeat_image=batched_mode,
            high_res_features=high_res_features,
        )
        masks = self._transforms.postprocess_masks(low_res_masks, self._orig_hw[img_idx])
        low_res_masks = torch.clamp(low_res_masks, -32.0, 32.0)
        if not return_logits:
            masks = masks > self.mask_threshold
        return masks, iou_predictions, low_res_masks

    def get_image_embedding(self) -> torch.Tensor:
        """The embeddings of the current image(s): ``B x C x h x w`` (C=256, h=w=64 at 1024)."""
        self._check_image_set("set_image")
        return self._features["image_embed"]

    def reset_predictor(self) -> None:
        """Forget the current image(s) and their embeddings."""
        self._is_image_set = False
        self._features: dict[str, Any] | None = None
        self._orig_hw: list[tuple[int, int]] | None = None
        self._is_batch = False

    def _check_image_set(self, setter: str) -> None:
        if not self._is_image_set:
            raise ImageNotSetError(f"An image must be set with .{setter}(...) before mask prediction.")


def _to_numpy(x: torch.Tensor) -> np.ndarray:
    """Drop the prompt batch dim when it is 1, as float32 numpy (the official output format)."""
    return x.squeeze(0).float().detach().cpu().numpy()


def _as_rgb_array(image: Any, name: str) -> np.ndarray:
    """A PIL image or an ``H x W x 3`` uint8 array -> a contiguous ``H x W x 3`` uint8 array."""
    if isinstance(image, Image):
        image = np.array(image)
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} must be a numpy array HxWx3 uint8 or a PIL image, got {describe(image)}")
    check_image(image)
    if not (image.flags.c_contiguous and image.flags.writeable):  # torch wants writable, positive strides
        image = np.array(image)
    return image


def forward_image_in(model: SAM2Base, img_batch: torch.Tensor, precision: str) -> dict[str, Any]:
    """``SAM2Base.forward_image`` in a (resolved) ``precision``: "fp32" the model's own; "fp32-fast" the image
    encoder's chunked float32 copy on a CPU (``samforge.predict.sam2_cpu_encoder``), the model's own elsewhere; "int8"
    the image encoder's quantised copy (``samforge.predict.quantize``); "bf16" the image encoder (trunk + neck) on bf16
    weights and input throughout. Outputs are float32, and the rest of ``forward_image`` (the decoder's ``conv_s0``
    / ``conv_s1`` projections of the high-res levels) runs in float32 as usual."""
    if precision == "int8":  # the quantised copy of the encoder, float32 in and out
        out = int8_encoder(model.image_encoder)(img_batch)
    elif precision == "bf16":
        out = run_cast(model.image_encoder, torch.bfloat16, img_batch.to(torch.bfloat16))
    elif precision == "fp32-fast" and img_batch.device.type == "cpu":
        out = fast_sam2_encoder(model.image_encoder)(img_batch)
    elif precision in ("fp32", "fp32-fast"):
        return model.forward_image(img_batch)
    else:
        raise ValueError(f"precision must be one of 'fp32', 'fp32-fast', 'bf16', 'int8' here, got {precision!r}")
    fpn = [level.float() for level in out["backbone_fpn"]]
    backbone_out = {"vision_features": fpn[-1], "vision_pos_enc": [p.float() for p in out["vision_pos_enc"]]}
    if model.use_high_res_features_in_sam:
        fpn[0] = model.sam_mask_decoder.conv_s0(fpn[0])
        fpn[1] = model.sam_mask_decoder.conv_s1(fpn[1])
    backbone_out["backbone_fpn"] = fpn
    return backbone_out
