"""Input checks shared by the predictors: each failure says what was expected and what was given."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class ImageNotSetError(RuntimeError, ValueError):
    """Prediction was asked for before an image was set (a RuntimeError as in the official code, and a ValueError)."""


def describe(x: Any) -> str:
    """Short description of a value for error messages: type, shape and dtype."""
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return f"{type(x).__name__} of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__


def check_image(image: Any) -> None:
    """An ``H x W x 3`` uint8 numpy image."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array of shape HxWx3 and dtype uint8, got {describe(image)}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image must have shape HxWx3 (H, W > 0), got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must have dtype uint8 (values 0-255), got dtype {image.dtype}")


def to_float_array(x: Any, name: str) -> np.ndarray:
    """A finite float64 numpy array from an array-like, or a TypeError/ValueError naming ``name``."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be a numeric array, got {describe(x)}") from e
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got NaN or inf in {arr.tolist()}")
    return arr


def check_points(point_coords: Any, point_labels: Any, image_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Points ``N x 2`` (x, y) inside an image of ``image_hw`` and labels ``N`` in {-1, 0, 1}."""
    if point_labels is None:
        raise ValueError("point_labels must be given with point_coords (1 = foreground, 0 = background)")
    coords = to_float_array(point_coords, "point_coords")
    labels = to_float_array(point_labels, "point_labels")
    if coords.ndim != 2 or coords.shape[1] != 2 or coords.shape[0] == 0:
        raise ValueError(f"point_coords must have shape Nx2 (x, y per point, N >= 1), got shape {coords.shape}")
    if labels.shape != (coords.shape[0],):
        raise ValueError(f"point_labels must have shape ({coords.shape[0]},) to match point_coords, got {labels.shape}")
    if not np.all(np.isin(labels, (-1, 0, 1))):
        raise ValueError(f"point_labels must be 1 (foreground), 0 (background) or -1 (ignore), got {labels.tolist()}")
    check_inside(coords, image_hw, "point_coords")
    return coords, labels.astype(np.int64)


def check_box(box: Any, image_hw: tuple[int, int]) -> np.ndarray:
    """One XYXY box, shape ``4`` or ``1 x 4``, with x0 <= x1, y0 <= y1, inside the image."""
    arr = to_float_array(box, "box")
    if arr.shape not in ((4,), (1, 4)):
        raise ValueError(f"box must have shape (4,) as [x0, y0, x1, y1], got shape {arr.shape}")
    arr = arr.reshape(4)
    if arr[0] > arr[2] or arr[1] > arr[3]:
        raise ValueError(f"box must be [x0, y0, x1, y1] with x0 <= x1 and y0 <= y1, got {arr.tolist()}")
    check_inside(arr.reshape(2, 2), image_hw, "box")
    return arr


def check_inside(coords: np.ndarray, image_hw: tuple[int, int], name: str, tolerance: float = 0.0) -> None:
    """Every (x, y) in ``coords`` lies within ``[0, W] x [0, H]`` (give or take ``tolerance``)."""
    h, w = image_hw
    xy = coords.reshape(-1, 2)
    outside = (xy[:, 0] < -tolerance) | (xy[:, 0] > w + tolerance) | (xy[:, 1] < -tolerance) | (xy[:, 1] > h + tolerance)
    if np.any(outside):
        raise ValueError(
            f"{name} must lie inside the image (0 <= x <= {w}, 0 <= y <= {h}); "
            f"outside: {xy[outside][:5].tolist()}"
        )


def check_mask_input(mask_input: Any, expected_hw: tuple[int, int], batch: int | None = None) -> None:
    """A low-resolution mask (logits) of shape ``1 x h x w`` (numpy), or ``B x 1 x h x w`` when ``batch`` is set."""
    shape = tuple(getattr(mask_input, "shape", ()))
    h, w = expected_hw
    expected = (1, h, w) if batch is None else (batch, 1, h, w)
    if not isinstance(mask_input, (np.ndarray, torch.Tensor)):
        raise TypeError(f"mask_input must be an array of shape {expected}, got {describe(mask_input)}")
    if shape != expected:
        raise ValueError(
            f"mask_input must have shape {expected} (the low-res logits of a previous prediction), got {shape}"
        )


def check_tensor(x: Any, name: str, expected: str, ndim: int, last: int | None = None, batch: int | None = None) -> torch.Tensor:
    """A torch tensor with ``ndim`` dims and, when given, that size of its last and of its first dim.

    ``expected`` is the shape as the user should read it, e.g. ``"BxNx2"``.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {expected}, got {describe(x)}")
    if x.ndim != ndim or (last is not None and x.shape[-1] != last) or (batch is not None and x.shape[0] != batch):
        raise ValueError(f"{name} must have shape {expected}, got {tuple(x.shape)}")
    return x
