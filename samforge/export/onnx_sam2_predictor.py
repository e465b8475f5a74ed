"""OnnxSAM2ImagePredictor: ``SAM2ImagePredictor``'s interface on the ONNX files of
:func:`samforge.export.export_sam2_onnx`, run with onnxruntime.

This module needs only numpy, Pillow and onnxruntime: no PyTorch. It reuses the helpers of
``onnx_predictor.py`` (SAM v1's runtime predictor); on a machine without PyTorch, copy both files into one
folder and import this one as a module of its own (it then imports ``onnx_predictor`` from beside itself).

The image is resized as ``SAM2Transforms`` does (pixel values / 255, then an antialiased bilinear resize to the
model's square input, then ImageNet normalisation): Pillow's float ("F" mode) bilinear resize gives the same
values as torchvision's antialiased one to ~1e-6.

Masks follow ``SAM2ImagePredictor.predict``: with ``multimask_output`` the three multimask outputs; without it
one mask, chosen by SAM 2's dynamic rule (the single-mask output when it is stable, else the multimask output
with the highest predicted IoU), whose parameters the decoder file records.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from PIL import Image

try:  # inside the samforge package
    from .onnx_predictor import (
        ImageNotSetError,
        OnnxDependencyError,
        _check_inside,
        _check_path,
        _describe,
        _float_array,
        _meta,
        _require_onnxruntime,
        _static,
    )
except ImportError:  # copied beside onnx_predictor.py, without samforge (and PyTorch)
    from onnx_predictor import (  # type: ignore[no-redef]
        ImageNotSetError,
        OnnxDependencyError,
        _check_inside,
        _check_path,
        _describe,
        _float_array,
        _meta,
        _require_onnxruntime,
        _static,
    )

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageNotSetError",
    "OnnxDependencyError",
    "OnnxSAM2ImagePredictor",
    "SAM2_DECODER_INPUTS",
    "SAM2_DECODER_OUTPUTS",
    "SAM2_ENCODER_INPUTS",
    "SAM2_ENCODER_OUTPUTS",
    "sam2_preprocess",
]

SAM2_ENCODER_INPUTS = ("image",)
SAM2_ENCODER_OUTPUTS = ("image_embed", "high_res_feats_0", "high_res_feats_1")
SAM2_DECODER_INPUTS = (
    "image_embed",
    "high_res_feats_0",
    "high_res_feats_1",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
    "orig_im_size",
)
SAM2_DECODER_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")
# SAM2Transforms' normalisation of pixel values / 255, used when a file does not record its own
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
POINT_LABELS = (-1, 0, 1, 2, 3)  # padding, background, foreground, box top-left, box bottom-right
# what the official build_sam2 sets for image models (apply_postprocessing=True), when a file does not say
DEFAULT_STABILITY = {"dynamic_multimask_via_stability": True, "stability_delta": 0.05, "stability_thresh": 0.98}


def sam2_preprocess(image: np.ndarray, size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """``H x W x 3`` uint8 RGB image -> the encoder's ``1 x 3 x size x size`` float32 input, as ``SAM2Transforms``
    (``to_tensor``, antialiased bilinear resize to a square, normalisation)."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise TypeError(f"image must be a uint8 numpy array HxWx3, got {_describe(image)}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0:
        raise ValueError(f"size must be a positive int, got {size!r}")
    x = image.astype(np.float32) / np.float32(255.0)
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(x[..., c])).resize((int(size), int(size)), Image.BILINEAR))
        for c in range(3)
    ]
    resized = np.stack(channels, axis=0)
    mean_arr = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    std_arr = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    return np.ascontiguousarray(((resized - mean_arr) / std_arr)[None], dtype=np.float32)


def stability_choice(low_res: np.ndarray, iou: np.ndarray, delta: float, thresh: float) -> int:
    """Index (into the four outputs) of SAM 2's single mask: 0 when the single-mask output is stable (IoU of its
    masks thresholded at +delta and -delta >= thresh, 1 when both are empty), else the multimask output with the
    highest predicted IoU. ``low_res``: ``4 x h x w`` logits, ``iou``: ``4``."""
    single = low_res[0]
    area_i = np.float32(np.count_nonzero(single > delta))
    area_u = np.float32(np.count_nonzero(single > -delta))
    stability = area_i / area_u if area_u > 0 else np.float32(1.0)
    if stability >= np.float32(thresh):
        return 0
    return 1 + int(np.argmax(iou[1:]))


class OnnxSAM2ImagePredictor:
    """``SAM2ImagePredictor`` on ONNX files: ``set_image`` runs the encoder once, ``predict`` the decoder per
    prompt set (a batch of B prompt sets runs the decoder B times).

    ``encoder_path`` may be ``None`` for a decoder-only deployment, where the features come from elsewhere
    (``set_image_embedding``). ``mask_threshold``: as ``SAM2ImagePredictor``'s. ``providers``: onnxruntime
    execution providers (default CPU); ``num_threads``: onnxruntime's intra-op threads (default: its own choice).

    A decoder exported with ``return_single_mask=True`` gives only ``multimask_output=False``; its one mask is
    chosen inside the graph by the same rule.
    """

    def __init__(
        self,
        encoder_path: str | os.PathLike | None,
        decoder_path: str | os.PathLike,
        mask_threshold: float = 0.0,
        *,
        providers: list[str] | None = None,
        num_threads: int | None = None,
    ) -> None:
        decoder_file = _check_path(decoder_path, "decoder_path")
        encoder_file = None if encoder_path is None else _check_path(encoder_path, "encoder_path")
        if isinstance(mask_threshold, bool) or not isinstance(mask_threshold, (int, float, np.floating)):
            raise TypeError(f"mask_threshold must be a number, got {type(mask_threshold).__name__}")
        if providers is not None and (not isinstance(providers, (list, tuple)) or
                                      not all(isinstance(p, str) for p in providers)):
            raise TypeError(f"providers must be a list of onnxruntime provider names, got {providers!r}")
        if num_threads is not None and (isinstance(num_threads, bool) or not isinstance(num_threads, int)
                                        or num_threads <= 0):
            raise ValueError(f"num_threads must be None or a positive int, got {num_threads!r}")
        ort = _require_onnxruntime()
        options = ort.SessionOptions()
        # errors only: the traced Hiera encoder makes onnxruntime warn about a shape it then merges leniently
        options.log_severity_level = 3
        if num_threads is not None:
            options.intra_op_num_threads = num_threads
            options.inter_op_num_threads = 1
        providers = list(providers) if providers is not None else ["CPUExecutionProvider"]

        def session(path: str, name: str):
            try:
                return ort.InferenceSession(path, sess_options=options, providers=providers)
            except Exception as e:  # onnxruntime raises its own exception types
                raise ValueError(f"{name} {path} could not be loaded by onnxruntime: {e}") from e

        self.decoder = session(decoder_file, "decoder_path")
        inputs = {i.name: i for i in self.decoder.get_inputs()}
        outputs = {o.name for o in self.decoder.get_outputs()}
        if set(inputs) != set(SAM2_DECODER_INPUTS) or not set(SAM2_DECODER_OUTPUTS) <= outputs:
            raise ValueError(f"decoder_path {decoder_file} is not a SAM 2 decoder: expected inputs "
                             f"{list(SAM2_DECODER_INPUTS)} and outputs {list(SAM2_DECODER_OUTPUTS)}, "
                             f"got {sorted(inputs)} and {sorted(outputs)}")
        self.feature_shapes = {
            name: tuple(_static(d) for d in inputs[name].shape) for name in SAM2_ENCODER_OUTPUTS
        }
        self.mask_input_size = tuple(_static(d) for d in inputs["mask_input"].shape[2:])
        if any(None in s for s in self.feature_shapes.values()) or None in self.mask_input_size:
            raise ValueError(f"decoder {decoder_file} must have static feature and mask_input shapes, got "
                             f"{ {k: inputs[k].shape for k in (*SAM2_ENCODER_OUTPUTS, 'mask_input')} }")
        meta = _meta(self.decoder)
        if meta.get("family", "sam2") != "sam2":
            raise ValueError(f"decoder_path {decoder_file} was exported from a {meta['family']!r} model, not SAM 2")
        iou_shape = next(o.shape for o in self.decoder.get_outputs() if o.name == "iou_predictions")
        self.num_mask_outputs = _static(iou_shape[1]) if len(iou_shape) == 2 else None
        if self.num_mask_outputs is None:
            self.num_mask_outputs = int(meta.get("num_mask_outputs", 4))
        self.dynamic_multimask_via_stability = bool(
            meta.get("dynamic_multimask_via_stability", DEFAULT_STABILITY["dynamic_multimask_via_stability"]))
        self.stability_delta = float(meta.get("stability_delta", DEFAULT_STABILITY["stability_delta"]))
        self.stability_thresh = float(meta.get("stability_thresh", DEFAULT_STABILITY["stability_thresh"]))

        self.encoder = None
        enc_meta: dict[str, Any] = {}
        if encoder_file is not None:
            self.encoder = session(encoder_file, "encoder_path")
            enc_in = self.encoder.get_inputs()
            enc_out = {o.name: tuple(_static(d) for d in o.shape) for o in self.encoder.get_outputs()}
            if len(enc_in) != 1 or len(enc_in[0].shape) != 4 or set(enc_out) != set(SAM2_ENCODER_OUTPUTS):
                raise ValueError(f"encoder_path {encoder_file} is not a SAM 2 image encoder (one 1x3xSxS input; "
                                 f"outputs {list(SAM2_ENCODER_OUTPUTS)}), got inputs "
                                 f"{[(i.name, i.shape) for i in enc_in]} and outputs {sorted(enc_out)}")
            if enc_out != self.feature_shapes:
                raise ValueError(f"encoder {encoder_file} and decoder {decoder_file} do not fit: the encoder gives "
                                 f"{enc_out}, the decoder takes {self.feature_shapes}")
            enc_meta = _meta(self.encoder)
            self._encoder_input = enc_in[0].name
        meta = {**meta, **enc_meta}
        image_size = meta.get("image_size")
        if image_size is None and self.encoder is not None:
            image_size = _static(self.encoder.get_inputs()[0].shape[-1])
        if image_size is None:  # the image embedding is the input downsampled 16 times
            image_size = 16 * self.feature_shapes["image_embed"][-1]
        self.image_size = int(image_size)
        self.image_mean = tuple(float(v) for v in meta.get("image_mean", IMAGENET_MEAN))
        self.image_std = tuple(float(v) for v in meta.get("image_std", IMAGENET_STD))
        self.mask_threshold = float(mask_threshold)
        self.reset_predictor()

    # -- image -------------------------------------------------------------------------------------------------

    def set_image(self, image: np.ndarray | Image.Image) -> None:
        """Compute the features of one RGB image: an ``H x W x 3`` uint8 array or a PIL image."""
        if isinstance(image, Image.Image):
            image = np.array(image)
        if not isinstance(image, np.ndarray):
            raise TypeError(f"image must be a numpy array of shape HxWx3 and dtype uint8, or a PIL image, "
                            f"got {_describe(image)}")
        if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
            raise ValueError(f"image must have shape HxWx3 (H, W > 0), got shape {image.shape}")
        if image.dtype != np.uint8:
            raise ValueError(f"image must have dtype uint8 (values 0-255), got dtype {image.dtype}")
        if self.encoder is None:
            raise ValueError("this predictor has no encoder (encoder_path=None): use set_image_embedding")
        batch = sam2_preprocess(image, self.image_size, self.image_mean, self.image_std)
        outputs = self.encoder.run(list(SAM2_ENCODER_OUTPUTS), {self._encoder_input: batch})
        self.reset_predictor()
        self._features = {"image_embed": outputs[0], "high_res_feats": [outputs[1], outputs[2]]}
        self._orig_hw = [(int(image.shape[0]), int(image.shape[1]))]
        self._is_image_set = True

    def set_image_embedding(self, image_embed: np.ndarray, high_res_feats: list[np.ndarray],
                            orig_hw: tuple[int, int]) -> None:
        """Use features computed elsewhere (``SAM2ImagePredictor._features`` as numpy: ``image_embed`` and the two
        ``high_res_feats``) for an image of ``orig_hw`` (H, W). Not in ``SAM2ImagePredictor``: for decoder-only
        deployments."""
        if not isinstance(high_res_feats, (list, tuple)) or len(high_res_feats) != 2:
            raise ValueError(f"high_res_feats must be a list of two arrays (stride 4 and stride 8), "
                             f"got {_describe(high_res_feats)}")
        given = dict(zip(SAM2_ENCODER_OUTPUTS, (image_embed, *high_res_feats)))
        for name, value in given.items():
            expected = self.feature_shapes[name]
            if not isinstance(value, np.ndarray):
                raise TypeError(f"{name} must be a numpy array of shape {expected}, got {_describe(value)}")
            if tuple(value.shape) != expected:
                raise ValueError(f"{name} must have shape {expected}, got {tuple(value.shape)}")
        hw = tuple(orig_hw) if isinstance(orig_hw, (tuple, list)) else ()
        if len(hw) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0
                                   for v in hw):
            raise ValueError(f"orig_hw must be (H, W) with H, W > 0 integers, got {orig_hw!r}")
        arrays = [np.ascontiguousarray(v, dtype=np.float32) for v in given.values()]
        self.reset_predictor()
        self._features = {"image_embed": arrays[0], "high_res_feats": arrays[1:]}
        self._orig_hw = [(int(hw[0]), int(hw[1]))]
        self._is_image_set = True

    def get_image_embedding(self) -> np.ndarray:
        """The current image's embedding, ``1 x C x h x w``."""
        self._check_image_set()
        return self._features["image_embed"]

    def reset_predictor(self) -> None:
        """Forget the current image and its features."""
        self._is_image_set = False
        self._features: dict[str, Any] | None = None
        self._orig_hw: list[tuple[int, int]] | None = None

    def _check_image_set(self) -> None:
        if not self._is_image_set:
            raise ImageNotSetError("An image must be set with .set_image(...) before mask prediction.")

    # -- prompts -----------------------------------------------------------------------------------------------

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
        """Masks for prompts on the current image, as ``SAM2ImagePredictor.predict``.

        ``point_coords`` N x 2 (x, y) or B x N x 2 with ``point_labels`` N or B x N (1 foreground, 0 background);
        ``box`` 4 or B x 4 (XYXY); ``mask_input`` 1 x 256 x 256 (or B x 1 x 256 x 256) low-res logits of a
        previous call. Coordinates are pixels of the original image with ``normalize_coords``, else in [0, 1].
        Returns masks C x H x W (float32 0/1, or logits with ``return_logits``), IoU predictions C and low-res
        logits C x 256 x 256 (with a leading B when B > 1); C is 3 with ``multimask_output`` else 1.
        """
        self._check_image_set()
        for name, flag in (("multimask_output", multimask_output), ("return_logits", return_logits),
                           ("normalize_coords", normalize_coords)):
            if not isinstance(flag, (bool, np.bool_)):
                raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
        if self.num_mask_outputs == 1 and multimask_output:
            raise ValueError("this decoder was exported with return_single_mask=True and gives one mask: call "
                             "predict(..., multimask_output=False), or export with return_single_mask=False")
        orig_hw = self._orig_hw[0]
        frame = orig_hw if normalize_coords else (1, 1)
        sets = self._prompt_sets(point_coords, point_labels, box, mask_input, frame, orig_hw, normalize_coords)
        results = [self._decode(coords, labels, mask, multimask_output, return_logits) for coords, labels, mask in sets]
        masks, iou, low_res = (np.stack([r[i] for r in results]) for i in range(3))
        if masks.shape[0] == 1:  # drop the prompt batch dim when it is 1, as SAM2ImagePredictor
            masks, iou, low_res = masks[0], iou[0], low_res[0]
        return masks, iou, low_res

    def _prompt_sets(self, point_coords: Any, point_labels: Any, box: Any, mask_input: Any,
                     frame: tuple[int, int], orig_hw: tuple[int, int], normalize: bool,
                     ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        """Check the prompts and bring them to the model's input frame: one (coords N x 2, labels N, mask
        1 x h x w or None) per prompt set, box corners (labels 2, 3) before the points, as SAM2ImagePredictor."""
        if point_coords is None and point_labels is not None:
            raise ValueError("point_labels were given without point_coords")
        coords = labels = boxes = masks = None
        batch: dict[str, int] = {}
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_labels must be supplied with point_coords (1 = foreground, 0 = background)")
            coords = _float_array(point_coords, "point_coords")
            labels = _float_array(point_labels, "point_labels")
            if coords.ndim not in (2, 3) or coords.shape[-1] != 2 or coords.shape[-2] == 0:
                raise ValueError(f"point_coords must have shape Nx2 or BxNx2 (x, y per point, N >= 1), "
                                 f"got {coords.shape}")
            if labels.shape != coords.shape[:-1]:
                raise ValueError(f"point_labels must have shape {coords.shape[:-1]} to match point_coords, "
                                 f"got {labels.shape}")
            if not np.all(np.isin(labels, POINT_LABELS)):
                raise ValueError(f"point_labels must be 1 (foreground), 0 (background), -1 (ignore) or 2/3 (box "
                                 f"corners), got {np.unique(labels).tolist()}")
            _check_inside(coords, frame, "point_coords")
            coords = self._to_input_frame(coords, orig_hw, normalize)
            if coords.ndim == 2:
                coords, labels = coords[None], labels[None]
            batch["point_coords"] = coords.shape[0]
        if box is not None:
            arr = _float_array(box, "box")
            if arr.ndim not in (1, 2) or arr.shape[-1] != 4 or arr.size == 0:
                raise ValueError(f"box must have shape (4,) or Bx4 as [x0, y0, x1, y1], got shape {arr.shape}")
            rows = arr.reshape(-1, 4)
            bad = (rows[:, 0] > rows[:, 2]) | (rows[:, 1] > rows[:, 3])
            if np.any(bad):
                raise ValueError(f"box must be [x0, y0, x1, y1] with x0 <= x1 and y0 <= y1, got {rows[bad].tolist()}")
            _check_inside(rows, frame, "box", boxes=True)
            boxes = self._to_input_frame(rows.reshape(-1, 2, 2), orig_hw, normalize)
            batch["box"] = boxes.shape[0]
        if len(set(batch.values())) > 1:
            raise ValueError(f"points and boxes must have the same batch size B, got {batch}")
        if mask_input is not None:
            expected = (1, *self.mask_input_size)
            if not isinstance(mask_input, np.ndarray):
                raise TypeError(f"mask_input must be a numpy array of shape {expected} or Bx{expected}, "
                                f"got {_describe(mask_input)}")
            if mask_input.ndim == 3:
                mask_input = mask_input[None]
            if mask_input.ndim != 4 or tuple(mask_input.shape[1:]) != expected or mask_input.shape[0] == 0:
                raise ValueError(f"mask_input must have shape {expected} or Bx{expected} (the low-res logits of a "
                                 f"previous prediction), got {tuple(mask_input.shape)}")
            masks = _float_array(mask_input, "mask_input").astype(np.float32)
            prompt_batch = next(iter(batch.values()), None)
            if prompt_batch is not None and masks.shape[0] not in (1, prompt_batch):
                raise ValueError(f"mask_input holds {masks.shape[0]} masks for a batch of {prompt_batch} prompts; "
                                 "give one mask or one per prompt")
        b = next(iter(batch.values()), None) or (masks.shape[0] if masks is not None else 1)
        sets = []
        for i in range(b):
            parts_c, parts_l = [], []
            if boxes is not None:
                parts_c.append(boxes[i])
                parts_l.append(np.array([2.0, 3.0]))
            if coords is not None:
                parts_c.append(coords[i])
                parts_l.append(labels[i])
            if parts_c:  # the prompt encoder's padding point (SAM 2 feeds boxes as points, so always padded)
                parts_c.append(np.zeros((1, 2), dtype=np.float32))
                parts_l.append(np.array([-1.0]))
                c = np.concatenate(parts_c, axis=0).astype(np.float32)
                lab = np.concatenate(parts_l, axis=0).astype(np.float32)
            else:  # no point and no box: no sparse prompt at all
                c, lab = np.zeros((0, 2), dtype=np.float32), np.zeros((0,), dtype=np.float32)
            mask = None if masks is None else masks[i if masks.shape[0] > 1 else 0]
            sets.append((c, lab, mask))
        return sets

    def _to_input_frame(self, coords: np.ndarray, orig_hw: tuple[int, int], normalize: bool) -> np.ndarray:
        """``SAM2Transforms.transform_coords`` in float32: pixels of ``orig_hw`` (or [0, 1]) -> the input frame."""
        out = coords.astype(np.float32)
        if normalize:
            h, w = orig_hw
            out[..., 0] = out[..., 0] / np.float32(w)
            out[..., 1] = out[..., 1] / np.float32(h)
        return out * np.float32(self.image_size)

    def _decode(self, coords: np.ndarray, labels: np.ndarray, mask: np.ndarray | None, multimask_output: bool,
                return_logits: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if mask is None:
            mask_in = np.zeros((1, 1, *self.mask_input_size), dtype=np.float32)
            has_mask = np.zeros(1, dtype=np.float32)
        else:
            mask_in, has_mask = mask[None], np.ones(1, dtype=np.float32)
        feed = {
            "image_embed": self._features["image_embed"],
            "high_res_feats_0": self._features["high_res_feats"][0],
            "high_res_feats_1": self._features["high_res_feats"][1],
            "point_coords": coords[None],
            "point_labels": labels[None],
            "mask_input": mask_in,
            "has_mask_input": has_mask,
            "orig_im_size": np.array(self._orig_hw[0], dtype=np.float32),
        }
        masks, iou, low_res = self.decoder.run(list(SAM2_DECODER_OUTPUTS), feed)
        masks, iou, low_res = masks[0], iou[0], low_res[0]
        if self.num_mask_outputs > 1:
            if multimask_output:
                chosen = slice(1, None)
            elif self.dynamic_multimask_via_stability:
                best = stability_choice(low_res, iou, self.stability_delta, self.stability_thresh)
                chosen = slice(best, best + 1)
            else:
                chosen = slice(0, 1)
            masks, iou, low_res = masks[chosen], iou[chosen], low_res[chosen]
        if not return_logits:
            masks = (masks > self.mask_threshold).astype(np.float32)
        return masks, iou, low_res
