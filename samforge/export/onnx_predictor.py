"""OnnxSamPredictor: ``SamPredictor``'s interface on the ONNX files of :func:`samforge.export.export_sam_onnx`,
run with onnxruntime.

This module needs only numpy, Pillow and onnxruntime: no PyTorch, and nothing else from samforge. (The
``samforge`` package itself imports PyTorch; on a machine without it, copy this one file and import it as a
module of its own.) Image resizing is Pillow's bilinear resize exactly as ``ResizeLongestSide.apply_image``,
so the encoder sees the same pixels as with ``SamPredictor``.

It also runs official ``segment_anything`` decoder files (``scripts/export_onnx_model.py``) with
``set_image_embedding``: their interface is the same.
"""

from __future__ import annotations

import json
import operator
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

INSTALL_HINT = "OnnxSamPredictor needs onnxruntime: pip install samforge[onnx] (or pip install onnxruntime)"
DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size")
DECODER_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")
# the official SAM's normalisation, used when a file does not record its own
DEFAULT_PIXEL_MEAN = (123.675, 116.28, 103.53)
DEFAULT_PIXEL_STD = (58.395, 57.12, 57.375)


class OnnxDependencyError(ImportError):
    """onnx / onnxruntime is not installed (``pip install samforge[onnx]``)."""


class ImageNotSetError(RuntimeError, ValueError):
    """Prediction was asked for before an image was set."""


def _describe(x: Any) -> str:
    if isinstance(x, np.ndarray):
        return f"numpy array of shape {x.shape} and dtype {x.dtype}"
    shape = getattr(x, "shape", None)
    return f"{type(x).__name__} of shape {tuple(shape)}" if shape is not None else type(x).__name__


def _float_array(x: Any, name: str) -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be a numeric array, got {_describe(x)}") from e
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got NaN or inf in {arr.tolist()}")
    return arr


def _check_inside(coords: np.ndarray, image_hw: tuple[int, int], name: str, boxes: bool = False) -> None:
    """Prompts past the image are used as given, as the PyTorch predictors (and the official code) use them; a
    warning says so only for a point outside the image or a box entirely outside it (the rule of
    ``samforge.predict.checks``, repeated here because this file runs without samforge)."""
    h, w = image_hw
    if boxes:
        rows = coords.reshape(-1, 4)
        away = (rows[:, 2] < 0) | (rows[:, 0] > w) | (rows[:, 3] < 0) | (rows[:, 1] > h)
        what = "a box lies entirely outside the image"
    else:
        rows = coords.reshape(-1, 2)
        away = (rows[:, 0] < 0) | (rows[:, 0] > w) | (rows[:, 1] < 0) | (rows[:, 1] > h)
        what = "a point lies outside the image"
    if np.any(away):
        warnings.warn(f"{name}: {what} (0 <= x <= {w}, 0 <= y <= {h}): {rows[away][:5].tolist()}; it is used as "
                      "given", UserWarning, stacklevel=3)


def _require_onnxruntime():
    try:
        import onnxruntime
    except ImportError as e:
        raise OnnxDependencyError(f"{INSTALL_HINT} ({e})") from e
    return onnxruntime


class NumpyResizeLongestSide:
    """``ResizeLongestSide``'s numpy methods without PyTorch: resize so the longest side is ``target_length``
    (Pillow bilinear, as the official transform) and scale coordinates alike."""

    def __init__(self, target_length: int) -> None:
        if isinstance(target_length, bool) or not isinstance(target_length, (int, np.integer)) or target_length <= 0:
            raise ValueError(f"target_length must be a positive int, got {target_length!r}")
        self.target_length = int(target_length)

    @staticmethod
    def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> tuple[int, int]:
        """(H, W) after resizing so that the longer side is ``long_side_length`` (rounded half up)."""
        scale = long_side_length * 1.0 / max(oldh, oldw)
        return int(oldh * scale + 0.5), int(oldw * scale + 0.5)

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """H x W x 3 uint8 image -> resized uint8 image."""
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3:
            raise TypeError(f"image must be a uint8 numpy array HxWxC, got {_describe(image)}")
        h, w = self.get_preprocess_shape(image.shape[0], image.shape[1], self.target_length)
        return np.array(Image.fromarray(image).resize((w, h), Image.BILINEAR))

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """Coordinates ``... x 2`` (x, y) in an image of ``original_size`` (H, W) -> float64, resized frame."""
        old_h, old_w = original_size
        new_h, new_w = self.get_preprocess_shape(old_h, old_w, self.target_length)
        coords = np.array(coords, dtype=float)
        coords[..., 0] *= new_w / old_w
        coords[..., 1] *= new_h / old_h
        return coords

    def apply_boxes(self, boxes: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """Boxes ``B x 4`` (XYXY) -> resized frame."""
        return self.apply_coords(np.asarray(boxes).reshape(-1, 2, 2), original_size).reshape(-1, 4)


def _check_path(path: Any, name: str) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path to an .onnx file, got {type(path).__name__}")
    if not Path(path).is_file():
        raise FileNotFoundError(f"{name} not found: {path}")
    return str(path)


def _meta(session: Any) -> dict[str, Any]:
    """The file's ``samforge.*`` metadata, JSON-decoded where it is JSON."""
    out = {}
    for key, value in session.get_modelmeta().custom_metadata_map.items():
        if key.startswith("samforge."):
            try:
                out[key[len("samforge."):]] = json.loads(value)
            except json.JSONDecodeError:
                out[key[len("samforge."):]] = value
    return out


def _static(dim: Any) -> int | None:
    return dim if isinstance(dim, int) else None


class OnnxSamPredictor:
    """``SamPredictor`` on ONNX files: ``set_image`` runs the encoder once, ``predict`` the decoder per prompt.

    ``encoder_path`` may be ``None`` for a decoder-only deployment, where embeddings come from elsewhere
    (``set_image_embedding``). ``providers``: onnxruntime execution providers (default CPU); ``num_threads``:
    onnxruntime's intra-op threads (default: its own choice).

    With a decoder exported with ``return_single_mask=True`` only ``multimask_output=False`` is possible, and
    the one mask is the official rule's choice (see ``samforge.export.onnx_sam``), not always ``SamPredictor``'s.
    """

    def __init__(
        self,
        encoder_path: str | os.PathLike | None,
        decoder_path: str | os.PathLike,
        *,
        providers: list[str] | None = None,
        num_threads: int | None = None,
    ) -> None:
        decoder_file = _check_path(decoder_path, "decoder_path")
        encoder_file = None if encoder_path is None else _check_path(encoder_path, "encoder_path")
        if providers is not None and (not isinstance(providers, (list, tuple)) or
                                      not all(isinstance(p, str) for p in providers)):
            raise TypeError(f"providers must be a list of onnxruntime provider names, got {providers!r}")
        if num_threads is not None and (isinstance(num_threads, bool) or not isinstance(num_threads, int)
                                        or num_threads <= 0):
            raise ValueError(f"num_threads must be None or a positive int, got {num_threads!r}")
        ort = _require_onnxruntime()
        options = ort.SessionOptions()
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
        outputs = {o.name: o for o in self.decoder.get_outputs()}
        if set(inputs) != set(DECODER_INPUTS) or not set(DECODER_OUTPUTS) <= set(outputs):
            raise ValueError(f"decoder_path {decoder_file} is not a SAM decoder: expected inputs "
                             f"{list(DECODER_INPUTS)} and outputs {list(DECODER_OUTPUTS)}, "
                             f"got {sorted(inputs)} and {sorted(outputs)}")
        dec_meta = _meta(self.decoder)
        self.embedding_shape = tuple(_static(d) for d in inputs["image_embeddings"].shape)
        self.mask_input_size = tuple(_static(d) for d in inputs["mask_input"].shape[2:])
        if None in self.embedding_shape or None in self.mask_input_size:
            raise ValueError(f"decoder {decoder_file} must have static image_embeddings and mask_input shapes, "
                             f"got {inputs['image_embeddings'].shape} and {inputs['mask_input'].shape}")
        shape = outputs["iou_predictions"].shape
        self.num_mask_outputs = _static(shape[1]) if len(shape) == 2 else None
        if self.num_mask_outputs is None and "num_mask_outputs" in dec_meta:
            self.num_mask_outputs = int(dec_meta["num_mask_outputs"])
        if self.num_mask_outputs is None:  # not recorded: ask the file (a few milliseconds)
            c, h, w = self.embedding_shape[1:]
            feed = {
                "image_embeddings": np.zeros(self.embedding_shape, dtype=np.float32),
                "point_coords": np.zeros((1, 1, 2), dtype=np.float32),
                "point_labels": np.full((1, 1), -1, dtype=np.float32),
                "mask_input": np.zeros((1, 1, *self.mask_input_size), dtype=np.float32),
                "has_mask_input": np.zeros(1, dtype=np.float32),
                "orig_im_size": np.array([8, 8], dtype=np.float32),
            }
            self.num_mask_outputs = int(self.decoder.run(["iou_predictions"], feed)[0].shape[1])

        self.encoder = None
        enc_meta: dict[str, Any] = {}
        if encoder_file is not None:
            self.encoder = session(encoder_file, "encoder_path")
            enc_in, enc_out = self.encoder.get_inputs(), self.encoder.get_outputs()
            if len(enc_in) != 1 or len(enc_out) != 1 or len(enc_in[0].shape) != 4:
                raise ValueError(f"encoder_path {encoder_file} is not a SAM image encoder (one 1x3xSxS input, "
                                 f"one output), got inputs {[i.shape for i in enc_in]}")
            enc_meta = _meta(self.encoder)
            out_shape = tuple(_static(d) for d in enc_out[0].shape)
            if out_shape != self.embedding_shape:
                raise ValueError(f"encoder {encoder_file} and decoder {decoder_file} do not fit: the encoder gives "
                                 f"embeddings {out_shape}, the decoder takes {self.embedding_shape}")
            self._encoder_input = enc_in[0].name
        meta = {**dec_meta, **enc_meta}
        img_size = meta.get("img_size")
        if img_size is None and self.encoder is not None:
            img_size = _static(self.encoder.get_inputs()[0].shape[-1])
        if img_size is None:  # SAM v1: the mask input is 4x the 16x-downsampled embedding grid
            img_size = 4 * self.mask_input_size[0]
        self.img_size = int(img_size)
        self.pixel_mean = np.asarray(meta.get("pixel_mean", DEFAULT_PIXEL_MEAN), dtype=np.float32).reshape(1, 1, 3)
        self.pixel_std = np.asarray(meta.get("pixel_std", DEFAULT_PIXEL_STD), dtype=np.float32).reshape(1, 1, 3)
        self.mask_threshold = float(meta.get("mask_threshold", 0.0))
        self.image_format = str(meta.get("image_format", "RGB"))
        self.transform = NumpyResizeLongestSide(self.img_size)
        self.reset_image()

    # -- image -------------------------------------------------------------------------------------------------

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Compute the embedding of an ``H x W x 3`` uint8 image in ``image_format`` ("RGB" or "BGR")."""
        if not isinstance(image, np.ndarray):
            raise TypeError(f"image must be a numpy array of shape HxWx3 and dtype uint8, got {_describe(image)}")
        if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
            raise ValueError(f"image must have shape HxWx3 (H, W > 0), got shape {image.shape}")
        if image.dtype != np.uint8:
            raise ValueError(f"image must have dtype uint8 (values 0-255), got dtype {image.dtype}")
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        if self.encoder is None:
            raise ValueError("this predictor has no encoder (encoder_path=None): use set_image_embedding")
        if image_format != self.image_format:
            image = image[..., ::-1]
        resized = self.transform.apply_image(np.ascontiguousarray(image))
        x = (resized.astype(np.float32) - self.pixel_mean) / self.pixel_std
        h, w = resized.shape[:2]
        padded = np.zeros((self.img_size, self.img_size, 3), dtype=np.float32)
        padded[:h, :w] = x
        batch = np.ascontiguousarray(padded.transpose(2, 0, 1)[None])
        (features,) = self.encoder.run(None, {self._encoder_input: batch})
        self.reset_image()
        self.features = features
        self.original_size = (int(image.shape[0]), int(image.shape[1]))
        self.input_size = (h, w)
        self.is_image_set = True

    def set_image_embedding(self, embedding: np.ndarray, original_size: tuple[int, int]) -> None:
        """Use an embedding computed elsewhere (``SamPredictor.get_image_embedding()``, as numpy) for an image
        of ``original_size`` (H, W). Not in ``SamPredictor``: for decoder-only deployments."""
        if not isinstance(embedding, np.ndarray):
            raise TypeError(f"embedding must be a numpy array of shape {self.embedding_shape}, "
                            f"got {_describe(embedding)}")
        if tuple(embedding.shape) != self.embedding_shape:
            raise ValueError(f"embedding must have shape {self.embedding_shape}, got {tuple(embedding.shape)}")
        try:
            hw = tuple(operator.index(s) if not isinstance(s, bool) else None for s in original_size)
        except TypeError:
            hw = ()
        if len(hw) != 2 or None in hw or min(hw) <= 0:
            raise ValueError(f"original_size must be (H, W) with H, W > 0 integers, got {original_size!r}")
        self.reset_image()
        self.features = np.ascontiguousarray(embedding, dtype=np.float32)
        self.original_size = (int(hw[0]), int(hw[1]))
        self.input_size = self.transform.get_preprocess_shape(hw[0], hw[1], self.img_size)
        self.is_image_set = True

    def get_image_embedding(self) -> np.ndarray:
        """The current image's embedding, ``1 x C x h x w``."""
        self._check_image_set()
        return self.features

    def reset_image(self) -> None:
        """Forget the current image and its embedding."""
        self.is_image_set = False
        self.features: np.ndarray | None = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None

    def _check_image_set(self) -> None:
        if not self.is_image_set:
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
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for prompts in the original image's pixel coordinates, as ``SamPredictor.predict``.

        ``point_coords`` N x 2 (x, y) with ``point_labels`` N (1 foreground, 0 background), ``box`` 4 (XYXY),
        ``mask_input`` 1 x 256 x 256 low-res logits of a previous call. Returns masks C x H x W (bool, or float32
        logits with ``return_logits``), IoU predictions C, and low-res logits C x 256 x 256; C is 3 with
        ``multimask_output`` else 1.
        """
        self._check_image_set()
        if not isinstance(multimask_output, (bool, np.bool_)):
            raise TypeError(f"multimask_output must be a bool, got {type(multimask_output).__name__}")
        if not isinstance(return_logits, (bool, np.bool_)):
            raise TypeError(f"return_logits must be a bool, got {type(return_logits).__name__}")
        if self.num_mask_outputs == 1 and multimask_output:
            raise ValueError("this decoder was exported with return_single_mask=True and gives one mask: call "
                             "predict(..., multimask_output=False), or export with return_single_mask=False")
        if point_coords is None and point_labels is not None:
            raise ValueError("point_labels were given without point_coords")
        coords_list, labels_list = [], []
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_labels must be given with point_coords (1 = foreground, 0 = background)")
            coords = _float_array(point_coords, "point_coords")
            labels = _float_array(point_labels, "point_labels")
            if coords.ndim != 2 or coords.shape[1] != 2 or coords.shape[0] == 0:
                raise ValueError(f"point_coords must have shape Nx2 (x, y per point, N >= 1), got shape {coords.shape}")
            if labels.shape != (coords.shape[0],):
                raise ValueError(f"point_labels must have shape ({coords.shape[0]},) to match point_coords, "
                                 f"got {labels.shape}")
            if not np.all(np.isin(labels, (-1, 0, 1))):
                raise ValueError(f"point_labels must be 1 (foreground), 0 (background) or -1 (ignore), "
                                 f"got {labels.tolist()}")
            _check_inside(coords, self.original_size, "point_coords")
            coords_list.append(self.transform.apply_coords(coords, self.original_size))
            labels_list.append(labels)
            if box is None:  # a padding point, as the prompt encoder adds when there is no box
                coords_list.append(np.zeros((1, 2)))
                labels_list.append(np.array([-1.0]))
        if box is not None:
            b = _float_array(box, "box")
            if b.shape not in ((4,), (1, 4)):
                raise ValueError(f"box must have shape (4,) as [x0, y0, x1, y1], got shape {b.shape}")
            b = b.reshape(4)
            if b[0] > b[2] or b[1] > b[3]:
                raise ValueError(f"box must be [x0, y0, x1, y1] with x0 <= x1 and y0 <= y1, got {b.tolist()}")
            _check_inside(b, self.original_size, "box", boxes=True)
            coords_list.append(self.transform.apply_boxes(b, self.original_size).reshape(2, 2))
            labels_list.append(np.array([2.0, 3.0]))
        if mask_input is not None:
            expected = (1, *self.mask_input_size)
            if not isinstance(mask_input, np.ndarray):
                raise TypeError(f"mask_input must be a numpy array of shape {expected}, got {_describe(mask_input)}")
            if tuple(mask_input.shape) != expected:
                raise ValueError(f"mask_input must have shape {expected} (the low-res logits of a previous "
                                 f"prediction), got {tuple(mask_input.shape)}")
            mask = _float_array(mask_input, "mask_input").astype(np.float32)[None]
            has_mask = np.ones(1, dtype=np.float32)
        else:
            mask = np.zeros((1, 1, *self.mask_input_size), dtype=np.float32)
            has_mask = np.zeros(1, dtype=np.float32)
        coords_all = np.concatenate(coords_list, axis=0) if coords_list else np.zeros((0, 2))
        labels_all = np.concatenate(labels_list, axis=0) if labels_list else np.zeros((0,))
        masks, iou, low_res = self.decoder.run(
            list(DECODER_OUTPUTS),
            {
                "image_embeddings": self.features,
                "point_coords": coords_all.astype(np.float32)[None],
                "point_labels": labels_all.astype(np.float32)[None],
                "mask_input": mask,
                "has_mask_input": has_mask,
                "orig_im_size": np.array(self.original_size, dtype=np.float32),
            },
        )
        if self.num_mask_outputs == 1:
            chosen = slice(0, 1)
        else:
            chosen = slice(1, None) if multimask_output else slice(0, 1)
        masks, iou, low_res = masks[0, chosen], iou[0, chosen], low_res[0, chosen]
        if not return_logits:
            masks = masks > self.mask_threshold
        return masks, iou, low_res
