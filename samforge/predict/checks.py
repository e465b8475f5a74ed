"""Input checks shared by the predictors: each failure says what was expected and what was given."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Mapping

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


#: point labels of SAM's prompt encoder (SamPredictor.predict / predict_torch, Sam.forward)
SAM_POINT_LABELS = {1: "foreground", 0: "background", -1: "ignore"}
#: point labels of SAM 2's prompt encoder: SAM's, and the two corners a box becomes (SAM 2 predictors)
SAM2_POINT_LABELS = {**SAM_POINT_LABELS, 2: "box top-left corner", 3: "box bottom-right corner"}
OUTSIDE_MODES = ("warn", "refuse")


def labels_text(allowed: Mapping[int, str]) -> str:
    """``allowed`` in words: "1 (foreground), 0 (background) or -1 (ignore)"."""
    parts = [f"{k} ({v})" for k, v in allowed.items() if k not in (2, 3)]
    if 2 in allowed and 3 in allowed:
        parts.append("2/3 (box corners)")
    return ", ".join(parts[:-1]) + " or " + parts[-1]


def check_labels(labels: np.ndarray, allowed: Mapping[int, str], name: str) -> np.ndarray:
    """``labels`` (float or int array) as int64, each one of ``allowed`` (so 0.7 or 2.9 is refused, not rounded)."""
    if not np.all(np.isin(labels, list(allowed))):
        shown = np.unique(labels)[:10]
        shown = (shown.astype(np.int64) if np.all(shown == np.round(shown)) else shown).tolist()
        raise ValueError(f"{name} must be {labels_text(allowed)}, got {shown}")
    return labels.astype(np.int64)


def check_points(
    point_coords: Any,
    point_labels: Any,
    image_hw: tuple[int, int],
    *,
    allowed: Mapping[int, str] = SAM_POINT_LABELS,
    batched: bool = False,
    outside: str = "warn",
    names: tuple[str, str] = ("point_coords", "point_labels"),
) -> tuple[np.ndarray, np.ndarray]:
    """Points ``N x 2`` (x, y) in an image of ``image_hw`` (``B x N x 2`` too when ``batched``) with labels ``N``
    (``B x N``) in ``allowed``, as float64 / int64 arrays. Points outside the image are handled by ``outside``
    (see :func:`check_outside_points`)."""
    cname, lname = names
    if point_labels is None:
        raise ValueError(f"{lname} must be given with {cname} (1 = foreground, 0 = background)")
    coords = to_float_array(point_coords, cname)
    labels = to_float_array(point_labels, lname)
    ndims = (2, 3) if batched else (2,)
    if coords.ndim not in ndims or coords.shape[-1] != 2 or coords.shape[-2] == 0:
        expected = "Nx2 or BxNx2" if batched else "Nx2"
        raise ValueError(f"{cname} must have shape {expected} (x, y per point, N >= 1), got shape {coords.shape}")
    if labels.shape != coords.shape[:-1]:
        raise ValueError(f"{lname} must have shape {coords.shape[:-1]} to match {cname}, got {labels.shape}")
    labels = check_labels(labels, allowed, lname)
    check_outside_points(coords, labels, image_hw, cname, outside)
    return coords, labels


def check_box(box: Any, image_hw: tuple[int, int], *, batched: bool = False, outside: str = "warn",
              name: str = "box") -> np.ndarray:
    """One XYXY box, shape ``4`` or ``1 x 4`` (returned as ``4``), or with ``batched`` ``4`` or ``B x 4`` (returned
    as given), each with x0 <= x1 and y0 <= y1. A box outside the image is handled by ``outside`` (see
    :func:`check_outside_boxes`)."""
    arr = to_float_array(box, name)
    if batched:
        if arr.ndim not in (1, 2) or arr.shape[-1] != 4 or arr.size == 0:
            raise ValueError(f"{name} must have shape (4,) or Bx4 as [x0, y0, x1, y1], got shape {arr.shape}")
    elif arr.shape not in ((4,), (1, 4)):
        raise ValueError(f"{name} must have shape (4,) as [x0, y0, x1, y1], got shape {arr.shape}")
    rows = arr.reshape(-1, 4)
    check_box_order(rows, name)
    check_outside_boxes(rows, image_hw, name, outside)
    return arr if batched else rows[0]


def check_box_order(rows: np.ndarray, name: str) -> None:
    """Boxes ``B x 4`` as [x0, y0, x1, y1] with x0 <= x1 and y0 <= y1 (an inverted box is refused)."""
    bad = (rows[:, 0] > rows[:, 2]) | (rows[:, 1] > rows[:, 3])
    if np.any(bad):
        raise ValueError(f"{name} must be [x0, y0, x1, y1] with x0 <= x1 and y0 <= y1, got {rows[bad][:5].tolist()}")


def check_outside_points(coords: np.ndarray, labels: np.ndarray, image_hw: tuple[int, int], name: str,
                         outside: str = "warn") -> None:
    """Points outside ``[0, W] x [0, H]``: with ``outside="warn"`` accepted as the official predictors accept them,
    with a warning (ignored points, label -1, are not looked at); with ``"refuse"`` a ``ValueError``."""
    if outside == "refuse":
        check_inside(coords, image_hw, name)
        return
    _check_outside_mode(outside)
    h, w = image_hw
    xy = coords.reshape(-1, 2)
    out = (xy[:, 0] < 0) | (xy[:, 0] > w) | (xy[:, 1] < 0) | (xy[:, 1] > h)
    if np.any(out & (labels.reshape(-1) != -1)):
        warn_outside(f"{name}: a point lies outside the image; it is used as given (as the official code does), "
                     "but it may be a mistake (coordinates of another image size, or x and y swapped?)")


def check_outside_boxes(rows: np.ndarray, image_hw: tuple[int, int], name: str, outside: str = "warn") -> None:
    """Boxes ``B x 4`` past the image: with ``outside="warn"`` accepted as the official predictors accept them (a box
    overshooting the border is everyday detector output), with a warning only for a box entirely outside; with
    ``"refuse"`` any corner outside is a ``ValueError``."""
    if outside == "refuse":
        check_inside(rows.reshape(-1, 2), image_hw, name)
        return
    _check_outside_mode(outside)
    h, w = image_hw
    out = (rows[:, 2] < 0) | (rows[:, 0] > w) | (rows[:, 3] < 0) | (rows[:, 1] > h)
    if np.any(out):
        warn_outside(f"{name}: a box lies entirely outside the image; it is used as given (as the official code "
                     "does), but it may be a mistake (coordinates of another image size?)")


def _check_outside_mode(outside: str) -> None:
    if outside not in OUTSIDE_MODES:
        raise ValueError(f"outside must be one of {OUTSIDE_MODES}, got {outside!r}")


# where a warning is not attributed: samforge itself, torch (its no_grad decorators) and the contextlib module
_INTERNAL_DIRS = (
    str(Path(__file__).parents[1]) + os.sep,  # as the code objects name their files: not resolved
    str(Path(torch.__file__).parent) + os.sep,
    contextlib.__file__,
)


def warn_outside(message: str) -> None:
    """``warnings.warn(message)`` attributed to the first caller outside samforge (and torch's no_grad wrappers),
    so that the default warnings filter shows it once per call site of the user's code."""
    level, frame = 1, sys._getframe(0)
    while frame is not None and frame.f_code.co_filename.startswith(_INTERNAL_DIRS):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=level)


def check_inside(coords: np.ndarray, image_hw: tuple[int, int], name: str, tolerance: float = 0.0) -> None:
    """Every (x, y) in ``coords`` lies within ``[0, W] x [0, H]`` (give or take ``tolerance``), else a
    ``ValueError`` (the command line's rule; the Python API accepts such prompts, see :func:`check_points`)."""
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
    check_finite(mask_input, "mask_input")


def check_finite(x: np.ndarray | torch.Tensor, name: str) -> None:
    """No NaN or inf in the (numeric) array or tensor ``x``."""
    if isinstance(x, torch.Tensor):
        bad = int((~torch.isfinite(x.detach())).sum()) if x.is_floating_point() else 0
    else:
        arr = np.asarray(x)
        bad = int((~np.isfinite(arr)).sum()) if np.issubdtype(arr.dtype, np.number) else 0
    if bad:
        raise ValueError(f"{name} must be finite, got {bad} NaN or inf value(s) of {np.prod(tuple(x.shape))}")


def check_tensor(x: Any, name: str, expected: str, ndim: int, last: int | None = None, batch: int | None = None) -> torch.Tensor:
    """A torch tensor with ``ndim`` dims and, when given, that size of its last and of its first dim.

    ``expected`` is the shape as the user should read it, e.g. ``"BxNx2"``.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {expected}, got {describe(x)}")
    if x.ndim != ndim or (last is not None and x.shape[-1] != last) or (batch is not None and x.shape[0] != batch):
        raise ValueError(f"{name} must have shape {expected}, got {tuple(x.shape)}")
    return x


def check_bool(value: Any, name: str) -> bool:
    """A flag that must be a real bool (``"no"`` or ``0`` are refused, not read as true or false); ``TypeError``."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return bool(value)
