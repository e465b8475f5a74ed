"""Deterministic synthetic scenes: the embedded default dataset.

Each scene shows several overlapping objects of varied shape (ellipse, rectangle,
polygon, star, blob, ring, and thin vessel-like curves), each with its own colour and texture (flat, gradient,
stripes, noise, checker), painted in z-order on a textured, cluttered background.
The instance masks are the *visible* parts after occlusion, so they never overlap.

    >>> scene = make_scene(0)
    >>> scene.image.shape, scene.masks.shape[1:]
    ((256, 256, 3), (256, 256))
"""

from __future__ import annotations

import colorsys
import numbers
from dataclasses import dataclass
from typing import Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["SyntheticScene", "make_scene", "make_scenes", "SHAPE_KINDS", "TEXTURE_KINDS"]

SHAPE_KINDS = ("ellipse", "rectangle", "polygon", "star", "blob", "ring", "thin")
TEXTURE_KINDS = ("flat", "gradient", "stripes", "noise", "checker")
Box = Tuple[int, int, int, int]  # y0, y1, x0, x1 (end-exclusive)
MIN_VISIBLE_FRACTION = 0.003  # of the image area
MIN_KEPT_FRACTION = 0.25  # of an object's own area that must stay visible under later ones
_PLACEMENT_TRIES = 12


@dataclass
class SyntheticScene:
    """A synthetic image with its visible instance masks (in z-order, back to front)."""

    image: np.ndarray  # HxWx3 uint8
    masks: np.ndarray  # KxHxW bool, pairwise disjoint, each non-empty
    shapes: list  # K shape kinds: one of SHAPE_KINDS each ("organ" for make_medical_scene)


def _is_int(x: object) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """HxW float32 noise in about [0, 1], smooth over ~1/cells of the image."""
    gh, gw = max(2, round(cells * h / max(h, w))), max(2, round(cells * w / max(h, w)))
    grid = Image.fromarray(rng.random((gh, gw), dtype=np.float32))  # mode "F"
    return np.asarray(grid.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255.0


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Gradient + smooth colour noise + faint lines and shapes, HxWx3 float32."""
    hue = rng.random()
    c0 = _hsv(hue, rng.uniform(0.1, 0.5), rng.uniform(0.3, 0.8))
    c1 = _hsv(hue + rng.uniform(-0.25, 0.25), rng.uniform(0.1, 0.5), rng.uniform(0.3, 0.9))
    t = _ramp(rng, (0, h, 0, w))
    img = c0 + (c1 - c0) * t[..., None]
    for _ in range(2):  # two scales of per-channel smooth noise
        cells = int(rng.integers(3, 10))
        img += np.stack([_smooth_noise(rng, h, w, cells) - 0.5 for _ in range(3)], -1) * 50
    overlay = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    s = min(h, w)
    for _ in range(int(rng.integers(8, 25))):
        col = tuple(int(c) for c in rng.integers(0, 256, 3)) + (int(rng.integers(15, 45)),)
        x0, y0 = rng.uniform(-0.1, 1.1) * w, rng.uniform(-0.1, 1.1) * h
        if rng.random() < 0.6:
            ang, ln = rng.uniform(0, np.pi), rng.uniform(0.2, 0.8) * s
            xy = [x0, y0, x0 + ln * np.cos(ang), y0 + ln * np.sin(ang)]
            draw.line(xy, fill=col, width=max(1, round(s * rng.uniform(0.003, 0.012))))
        else:
            r = rng.uniform(0.02, 0.08) * s
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(
                [x0 - r, y0 - r, x0 + r, y0 + r], fill=col)
    clutter = np.asarray(overlay, dtype=np.float32)
    a = clutter[..., 3:] / 255.0
    return img * (1 - a) + clutter[..., :3] * a


def _grid(box: Box) -> Tuple[np.ndarray, np.ndarray]:
    y0, y1, x0, x1 = box
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    return yy, xx


def _ramp(rng: np.random.Generator, box: Box, cx: float = 0.0, cy: float = 0.0,
          extent: float = 0.0) -> np.ndarray:
    """Linear ramp in [0, 1] over ``box`` along a random direction (across the box, or
    across a disc of radius ``extent`` around (cx, cy) when extent > 0)."""
    ang = rng.uniform(0, 2 * np.pi)
    yy, xx = _grid(box)
    proj = (xx - cx) * np.cos(ang) + (yy - cy) * np.sin(ang)
    if extent <= 0:
        lo, hi = proj.min(), proj.max()
    else:
        lo, hi = -extent, extent
    return np.clip((proj - lo) / max(hi - lo, 1e-6), 0, 1)


def _outline(rng: np.random.Generator, kind: str, cx: float, cy: float, r: float,
             n: int = 96) -> np.ndarray:
    """Polygon vertices (Nx2, x/y) of a shape centred at (cx, cy) with size ~r."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    if kind in ("ellipse", "ring"):
        rad = np.ones_like(t)
        aspect = rng.uniform(0.55, 1.0)
        pts = np.stack([np.cos(t), aspect * np.sin(t)], 1)
    elif kind == "rectangle":
        a = rng.uniform(0.45, 1.0)
        pts = np.array([[-1, -a], [1, -a], [1, a], [-1, a]], dtype=np.float64)
    elif kind == "polygon":
        k = int(rng.integers(3, 8))
        ang = (np.arange(k) + rng.uniform(-0.3, 0.3, k)) * 2 * np.pi / k  # no slivers
        rad = rng.uniform(0.7, 1.0, k)
        pts = np.stack([rad * np.cos(ang), rad * np.sin(ang)], 1)
    elif kind == "star":
        k = int(rng.integers(4, 9))
        ang = np.arange(2 * k) * np.pi / k
        rad = np.where(np.arange(2 * k) % 2 == 0, 1.0, rng.uniform(0.35, 0.6))
        pts = np.stack([rad * np.cos(ang), rad * np.sin(ang)], 1)
    elif kind == "blob":
        rad = np.ones_like(t)
        for f in range(1, 6):
            rad += rng.normal(0, 0.28 / f) * np.cos(f * t + rng.uniform(0, 2 * np.pi))
        rad = np.clip(rad, 0.35, 1.6) / max(np.clip(rad, 0.35, 1.6).max(), 1e-6)
        pts = np.stack([rad * np.cos(t), rad * np.sin(t)], 1)
    else:  # pragma: no cover - kinds come from SHAPE_KINDS
        raise AssertionError(kind)
    rot = rng.uniform(0, 2 * np.pi)
    c, s = np.cos(rot), np.sin(rot)
    pts = pts @ np.array([[c, s], [-s, c]]) * r
    return pts + np.array([cx, cy])


def _thin_curve(rng: np.random.Generator, cx: float, cy: float, r: float, n: int = 48) -> np.ndarray:
    """Centre line (Nx2, x/y) of a smooth, gently winding curve through (cx, cy), ~2-3 r long."""
    t = np.linspace(-1.0, 1.0, n)
    half = r * rng.uniform(1.0, 1.5)
    bend = np.zeros_like(t)
    for f in (1, 2, 3):  # a few low-frequency wiggles across the curve
        bend += rng.normal(0, 0.35 / f) * np.sin(np.pi * f * t / 2 + rng.uniform(0, 2 * np.pi))
    ang = rng.uniform(0, 2 * np.pi)
    u, v = np.array([np.cos(ang), np.sin(ang)]), np.array([-np.sin(ang), np.cos(ang)])
    return np.array([cx, cy]) + (t * half)[:, None] * u + (bend * r)[:, None] * v


def _shape_mask(rng: np.random.Generator, kind: str, h: int, w: int, cx: float, cy: float,
                r: float) -> np.ndarray:
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    if kind == "thin":  # a vessel / wire: a few px wide (scales with the object size)
        width = max(2, round(r * rng.uniform(0.05, 0.1)))
        draw.line([tuple(p) for p in _thin_curve(rng, cx, cy, r)], fill=255, width=width, joint="curve")
        return np.asarray(canvas) > 0
    pts = _outline(rng, kind, cx, cy, r)
    draw.polygon([tuple(p) for p in pts], fill=255)
    if kind == "ring":  # punch a concentric hole of the same orientation
        inner = rng.uniform(0.4, 0.65)
        hole = (pts - np.array([cx, cy])) * inner + np.array([cx, cy])
        draw.polygon([tuple(p) for p in hole], fill=0)
    return np.asarray(canvas) > 0


def _texture(rng: np.random.Generator, kind: str, color: np.ndarray, box: Box,
             cx: float, cy: float, r: float) -> np.ndarray:
    """Texture for one object over its bounding ``box``, (y1-y0)x(x1-x0)x3 float32."""
    h, w = box[1] - box[0], box[3] - box[2]
    mix = rng.choice([0.0, 255.0])  # second tone: toward white or black
    other = color + (mix - color) * rng.uniform(0.35, 0.6)
    if kind == "flat":
        return np.broadcast_to(color, (h, w, 3)).astype(np.float32)
    if kind == "gradient":
        t = _ramp(rng, box, cx, cy, r)
        return color + (other - color) * t[..., None]
    if kind == "noise":
        n = _smooth_noise(rng, h, w, int(rng.integers(3, 9)))
        return color + (other - color) * n[..., None]
    period = max(3.0, r * rng.uniform(0.25, 0.55))
    yy, xx = _grid(box)
    ang = rng.uniform(0, np.pi)
    u = ((xx - cx) * np.cos(ang) + (yy - cy) * np.sin(ang)) // (period / 2)
    if kind == "stripes":
        sel = u % 2 == 1
    else:  # checker
        v = ((yy - cy) * np.cos(ang) - (xx - cx) * np.sin(ang)) // (period / 2)
        sel = (u + v) % 2 == 1
    return np.where(sel[..., None], other, color).astype(np.float32)


def _check_args(seed: object, image_size: object, num_objects: object) -> Tuple[int, int, int, int]:
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
    if (not isinstance(image_size, Sequence) or len(image_size) != 2
            or not all(_is_int(v) and v >= 32 for v in image_size)):
        raise ValueError(f"image_size: expected (H, W) ints, each >= 32, got {image_size!r}")
    if _is_int(num_objects):
        num_objects = (num_objects, num_objects)
    if (not isinstance(num_objects, Sequence) or len(num_objects) != 2
            or not all(_is_int(v) for v in num_objects)
            or not 1 <= num_objects[0] <= num_objects[1] <= 64):
        raise ValueError(
            f"num_objects: expected an int or (min, max) with 1 <= min <= max <= 64, "
            f"got {num_objects!r}")
    return int(image_size[0]), int(image_size[1]), int(num_objects[0]), int(num_objects[1])


def make_scene(seed: int, image_size: Tuple[int, int] = (256, 256),
               num_objects: Union[int, Tuple[int, int]] = (3, 6)) -> SyntheticScene:
    """Generate one deterministic scene.

    Args:
        seed: non-negative int; the same seed always gives the same scene.
        image_size: (H, W), each >= 32.
        num_objects: how many objects to try to place, an int or an inclusive (min, max).
            An object that cannot be placed visibly (>= 0.3% of the image, without hiding
            more than 75% of an earlier object) after a few tries is left out, so K can
            occasionally be smaller than min, but is always >= 1.

    Returns:
        SyntheticScene with image HxWx3 uint8, masks KxHxW bool (visible parts, pairwise
        disjoint, each non-empty) and shapes (K kinds), back to front.
    """
    h, w, lo, hi = _check_args(seed, image_size, num_objects)
    rng = np.random.default_rng(seed)
    image = _background(rng, h, w)
    n = int(rng.integers(lo, hi + 1))
    hues = (rng.random() + np.arange(n) / n + rng.uniform(-0.2, 0.2, n) / n) % 1.0
    rng.shuffle(hues)
    s = min(np.sqrt(h * w), 1.5 * min(h, w))  # object scale; bounded on elongated images
    min_area = max(1, int(np.ceil(MIN_VISIBLE_FRACTION * h * w)))
    labels = np.zeros((h, w), dtype=np.int32)  # 0 = background, k + 1 = object k
    full_areas: list = []  # pixels each object covered when painted
    visible: list = []  # pixels of each object still visible now
    centres: list = []
    shapes: list = []
    r_min = 1.5 * np.sqrt(min_area / np.pi)  # keeps objects visible on elongated images
    for i in range(n):
        # The first object has no one to hide: keep trying, so that K >= 1.
        for _ in range(_PLACEMENT_TRIES if shapes else 1000):
            kind = SHAPE_KINDS[int(rng.integers(len(SHAPE_KINDS)))]
            r = max(s * rng.uniform(0.12, 0.3), r_min)
            if shapes and rng.random() < 0.6:  # overlap a previous object on purpose
                px, py = centres[int(rng.integers(len(centres)))]
                cx, cy = px + rng.normal(0, r), py + rng.normal(0, r)
            else:
                cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
            mask = _shape_mask(rng, kind, h, w, cx, cy, r)
            area = int(mask.sum())
            if area < min_area:
                continue
            lost = np.bincount(labels[mask], minlength=len(shapes) + 1)[1:]
            kept = np.asarray(visible, dtype=np.int64) - lost
            if all(k >= max(min_area, MIN_KEPT_FRACTION * a) for k, a in zip(kept, full_areas)):
                break
        else:
            continue  # could not place this object visibly
        color = _hsv(hues[i], rng.uniform(0.5, 0.95), rng.uniform(0.5, 1.0))
        tex_kind = TEXTURE_KINDS[int(rng.integers(len(TEXTURE_KINDS)))]
        rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
        box = (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)
        crop = mask[box[0]:box[1], box[2]:box[3]]
        tex = _texture(rng, tex_kind, color, box, cx, cy, r)
        image[box[0]:box[1], box[2]:box[3]][crop] = tex[crop]
        labels[mask] = len(shapes) + 1
        visible = list(kept) + [area]
        full_areas.append(area)
        centres.append((cx, cy))
        shapes.append(kind)
    if not shapes:  # unreachable in practice: r >= r_min and the centre is inside
        raise RuntimeError(f"make_scene could not place any object (seed={seed}, size={(h, w)})")
    image += rng.normal(0, 3.0, image.shape)  # mild sensor noise
    masks = labels[None] == np.arange(1, len(shapes) + 1)[:, None, None]
    return SyntheticScene(np.clip(image, 0, 255).round().astype(np.uint8), masks, shapes)


def make_scenes(n: int, seed: int = 0, **kw) -> list:
    """``n`` scenes with seeds ``seed, seed + 1, ...``; ``kw`` goes to :func:`make_scene`."""
    if not _is_int(n) or n < 0:
        raise ValueError(f"n: expected a non-negative int, got {n!r}")
    return [make_scene(seed + i, **kw) for i in range(n)]
