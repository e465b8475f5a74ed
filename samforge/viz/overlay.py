"""Draw masks, point prompts and boxes over an image (numpy + Pillow only)."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["PALETTE", "draw_overlay", "label_image", "colorize_labels"]

# Well-separated colours (after Sasha Trubetskoy's "20 distinct colours"), cycled.
PALETTE = np.array([
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
    (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
], dtype=np.uint8)
POSITIVE_COLOR = (0, 220, 0)
NEGATIVE_COLOR = (230, 0, 0)
BOX_COLOR = (0, 255, 0)

MaskInput = Union[np.ndarray, Sequence[np.ndarray]]


def _as_masks(masks: MaskInput, hw: Optional[tuple] = None) -> np.ndarray:
    """Masks (HxW, KxHxW or a list of HxW; bool or 0/1 integers) as KxHxW bool."""
    if isinstance(masks, (list, tuple)):
        if not masks:
            return np.zeros((0, *(hw or (0, 0))), dtype=bool)
        masks = np.stack([np.asarray(m) for m in masks])
    masks = np.asarray(masks)
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3:
        raise ValueError(f"masks: expected HxW or KxHxW, got shape {masks.shape}")
    if masks.dtype != bool:
        if not np.issubdtype(masks.dtype, np.integer) or not np.isin(masks, (0, 1)).all():
            raise ValueError(f"masks: expected bool (or 0/1 integers), got dtype {masks.dtype}")
        masks = masks.astype(bool)
    if hw is not None and masks.shape[1:] != tuple(hw):
        raise ValueError(f"masks: expected spatial size {tuple(hw)} (the image's), got {masks.shape[1:]}")
    return masks


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image: expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image: expected HxWx3 uint8, got shape {image.shape} dtype {image.dtype}")


def _boundary(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels of ``mask`` within ``width`` px (4-neighbourhood) of its outside."""
    inner = mask.copy()
    for _ in range(width):
        p = np.pad(inner, 1, constant_values=False)
        inner = inner & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return mask & ~inner


def draw_overlay(image: np.ndarray, masks: Optional[MaskInput] = None,
                 points: Optional[np.ndarray] = None, point_labels: Optional[np.ndarray] = None,
                 boxes: Optional[np.ndarray] = None, alpha: float = 0.5,
                 colors: Optional[Sequence[Sequence[int]]] = None) -> np.ndarray:
    """Return a copy of ``image`` (HxWx3 uint8) with masks, points and boxes drawn on it.

    Masks are blended with ``alpha`` in distinct colours (``colors`` or PALETTE, cycled)
    and outlined in a brighter tone. Points are (x, y) pixels: label 1 is a green dot, 0 a
    red dot, both ringed in white. Boxes are XYXY pixels (shape 4 or Nx4).
    """
    _check_image(image)
    h, w = image.shape[:2]
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha: expected a value in [0, 1], got {alpha}")
    palette = PALETTE if colors is None else np.asarray(colors, dtype=np.float64)
    if palette.ndim != 2 or palette.shape[1] != 3 or len(palette) == 0 or palette.min() < 0 or palette.max() > 255:
        raise ValueError(f"colors: expected a non-empty list of RGB triples in [0, 255], got shape {palette.shape}")
    out = image.astype(np.float32)
    if masks is not None:
        s = min(h, w)
        for i, m in enumerate(_as_masks(masks, (h, w))):
            color = palette[i % len(palette)].astype(np.float32)
            out[m] = out[m] * (1 - alpha) + color * alpha
            out[_boundary(m, 1 if s < 512 else 2)] = color + (255 - color) * 0.5
    pil = Image.fromarray(out.round().clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    line = max(2, round(min(h, w) / 200))
    if boxes is not None:
        b = np.asarray(boxes, dtype=np.float64)
        b = b[None] if b.ndim == 1 else b
        if b.ndim != 2 or b.shape[1] != 4 or not np.isfinite(b).all() or (b[:, 2:] < b[:, :2]).any():
            raise ValueError(f"boxes: expected 4 or Nx4 finite XYXY with x1 >= x0, y1 >= y0, got shape {np.shape(boxes)}")
        for x0, y0, x1, y1 in b:
            draw.rectangle([x0, y0, x1, y1], outline=BOX_COLOR, width=line)
    if points is not None:
        p = np.asarray(points, dtype=np.float64)
        p = p[None] if p.ndim == 1 else p
        if p.ndim != 2 or p.shape[1] != 2 or not np.isfinite(p).all():
            raise ValueError(f"points: expected Nx2 finite (x, y), got shape {np.shape(points)}")
        labels = np.ones(len(p), int) if point_labels is None else np.asarray(point_labels).reshape(-1)
        if labels.shape != (len(p),) or not np.isin(labels, (0, 1)).all():
            raise ValueError(f"point_labels: expected {len(p)} labels in {{0, 1}}, got {np.asarray(point_labels).tolist()}")
        r = max(3.0, min(h, w) * 0.015)
        for (x, y), lab in zip(p, labels):
            fill = POSITIVE_COLOR if lab == 1 else NEGATIVE_COLOR
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill, outline=(255, 255, 255),
                         width=max(1, round(r / 4)))
    return np.asarray(pil).copy()


def label_image(masks: MaskInput) -> np.ndarray:
    """HxW uint16 label map: 1 + index of the last mask covering a pixel, 0 elsewhere."""
    m = _as_masks(masks)
    if len(m) > np.iinfo(np.uint16).max:
        raise ValueError(f"masks: expected at most 65535 masks, got {len(m)}")
    out = np.zeros(m.shape[1:], dtype=np.uint16)
    for i, mask in enumerate(m):
        out[mask] = i + 1
    return out


def colorize_labels(label_img: np.ndarray) -> np.ndarray:
    """Colour a HxW integer label map: 0 is black, label k is PALETTE[(k - 1) % len]."""
    lab = np.asarray(label_img)
    if lab.ndim != 2 or not np.issubdtype(lab.dtype, np.integer) or (lab.size and lab.min() < 0):
        raise ValueError(f"label_img: expected HxW non-negative integers, got shape {lab.shape} dtype {lab.dtype}")
    table = np.concatenate([np.zeros((1, 3), np.uint8), PALETTE])
    idx = np.where(lab > 0, (lab.astype(np.int64) - 1) % len(PALETTE) + 1, 0)
    return table[idx]
