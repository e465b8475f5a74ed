"""Deterministic synthetic medical-like slices: a shifted domain for models trained on the default scenes.

Each scene is a grey (R = G = B) cross-section: a dark outside, a body with a smooth random outline
and a slightly brighter skin rim, and inside it 2-5 smooth organ-like blobs grown from nearby centres,
so that they abut one another. Organs differ from the tissue around them by only 10-40 grey levels,
have faint smooth texture, and a few small unlabelled structures (vessels, bone) add clutter. The image
(not the masks) is blurred (partial volume), then gets multiplicative speckle and Gaussian noise.

The masks are the visible organs: pairwise disjoint, each at least 0.3% of the image; ``shapes`` is
``"organ"`` for each.

    >>> scene = make_medical_scene(0)
    >>> scene.image.shape, bool((scene.image[..., 0] == scene.image[..., 2]).all())
    ((256, 256, 3), True)
"""

from __future__ import annotations

from typing import Tuple, Union

import cv2
import numpy as np
from PIL import Image, ImageDraw

from samforge.data.synthetic import MIN_VISIBLE_FRACTION, SyntheticScene, _check_args, _smooth_noise

__all__ = ["make_medical_scene", "ORGAN_CONTRAST"]

ORGAN_CONTRAST = (10.0, 40.0)  # grey levels an organ differs from the body tissue by (before noise)
_MIN_ORGAN_SEPARATION = 6.0  # grey levels between any two organs' base intensities
_PLACEMENT_TRIES = 30


def _radial_outline(rng: np.random.Generator, n_harmonics: int, strength: float, n: int = 128):
    """Angles and a smooth random radius profile (mean 1) for a blob outline."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    rad = np.ones_like(t)
    for f in range(2, 2 + n_harmonics):
        rad += rng.normal(0, strength / f) * np.cos(f * t + rng.uniform(0, 2 * np.pi))
    return t, np.clip(rad, 0.55, 1.5)


def _body(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """HxW bool: a smooth, roughly elliptical body section filling most of the image."""
    t, rad = _radial_outline(rng, 3, 0.12)
    ax, ay = w * rng.uniform(0.36, 0.46), h * rng.uniform(0.32, 0.44)
    cx, cy = w / 2 + rng.normal(0, 0.02 * w), h / 2 + rng.normal(0, 0.02 * h)
    rad = rad / rad.max()
    pts = np.stack([cx + ax * rad * np.cos(t), cy + ay * rad * np.sin(t)], 1)
    canvas = Image.new("L", (w, h), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in pts], fill=255)
    return np.asarray(canvas) > 0


def _blob_distance(rng: np.random.Generator, h: int, w: int, cx: float, cy: float, r: float) -> np.ndarray:
    """HxW float32 normalised distance to a smooth random blob centred at (cx, cy): < 1 inside it.
    The outline wobbles smoothly (low harmonics + low-frequency noise), like an organ's."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    ang = rng.uniform(0, 2 * np.pi)
    aspect = rng.uniform(0.6, 1.0)  # elongated along a random direction
    u = dx * np.cos(ang) + dy * np.sin(ang)
    v = (-dx * np.sin(ang) + dy * np.cos(ang)) / aspect
    theta = np.arctan2(v, u)
    prof = np.ones_like(theta)
    for f in range(2, 5):
        prof += rng.normal(0, 0.16 / f) * np.cos(f * theta + rng.uniform(0, 2 * np.pi))
    prof = np.clip(prof, 0.55, 1.5)
    wobble = (_smooth_noise(rng, h, w, int(rng.integers(5, 10))) - 0.5) * 0.15
    return np.sqrt(u * u + v * v) / (r * prof) + wobble


def make_medical_scene(seed: int, image_size: Tuple[int, int] = (256, 256),
                       num_objects: Union[int, Tuple[int, int]] = (2, 5)) -> SyntheticScene:
    """Generate one deterministic medical-like slice.

    Args:
        seed: non-negative int; the same seed always gives the same scene.
        image_size: (H, W), each >= 32.
        num_objects: how many organs to try to place, an int or an inclusive (min, max). An organ
            whose centre cannot be placed inside the body, or whose visible part is smaller than 0.3%
            of the image, is left out, so K can occasionally be smaller than min, but is always >= 1.

    Returns:
        SyntheticScene with a grey image HxWx3 uint8 (R = G = B), masks KxHxW bool (pairwise
        disjoint, each >= 0.3% of the image) and shapes (``"organ"`` K times).
    """
    h, w, lo, hi = _check_args(seed, image_size, num_objects)
    rng = np.random.default_rng(seed)
    body = _body(rng, h, w)
    n = int(rng.integers(lo, hi + 1))
    s = min(np.sqrt(h * w), 1.5 * min(h, w))  # object scale; bounded on elongated images
    min_area = max(1, int(np.ceil(MIN_VISIBLE_FRACTION * h * w)))
    r_min = 1.5 * np.sqrt(min_area / np.pi)
    by, bx = np.nonzero(body)
    # Organs are grown from nearby centres: each new centre sits about one touching distance from an
    # earlier one, so the blobs overlap and the overlap is split between them (nearest in scaled
    # distance), which leaves them abutting along a smooth shared boundary.
    dist = np.full((h, w), np.inf, dtype=np.float32)
    labels = np.zeros((h, w), dtype=np.int32)
    centres: list = []
    radii: list = []
    for i in range(n):
        r = max(s * rng.uniform(0.09, 0.17), r_min)
        for _ in range(_PLACEMENT_TRIES):
            if centres:
                j = int(rng.integers(len(centres)))
                a = rng.uniform(0, 2 * np.pi)
                d = (r + radii[j]) * rng.uniform(0.6, 0.95)
                cx, cy = centres[j][0] + d * np.cos(a), centres[j][1] + d * np.sin(a)
            else:
                k = int(rng.integers(len(bx)))
                cx = 0.5 * (bx[k] + w / 2)  # pulled toward the middle of the body
                cy = 0.5 * (by[k] + h / 2)
            iy, ix = int(round(cy)), int(round(cx))
            if 0 <= iy < h and 0 <= ix < w and body[iy, ix]:
                break
        else:
            continue
        d_i = _blob_distance(rng, h, w, cx, cy, r)
        win = (d_i < 1) & (d_i < dist)
        labels[win] = i + 1
        dist = np.minimum(dist, np.where(d_i < 1, d_i, np.inf)).astype(np.float32)
        centres.append((cx, cy))
        radii.append(r)
    inner = cv2.erode(body.astype(np.uint8), np.ones((3, 3), np.uint8),
                      iterations=max(1, round(0.04 * min(h, w)))) > 0
    labels[~inner] = 0  # organs keep a layer of body wall between them and the outside
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    kept = [k + 1 for k in range(n) if areas[k] >= min_area]
    if not kept:  # unreachable in practice; a guaranteed organ at the body's centre instead
        cy, cx = by.mean(), bx.mean()
        labels = np.where(body & (_blob_distance(rng, h, w, cx, cy, max(0.2 * s, 2 * r_min)) < 1), 1, 0)
        kept = [1] if (labels == 1).sum() >= min_area else []
        if not kept:
            raise RuntimeError(f"make_medical_scene could not place any organ (seed={seed}, size={(h, w)})")
    masks = labels[None] == np.asarray(kept)[:, None, None]

    # Intensities: dark outside, body tissue with faint smooth variation, a brighter skin rim.
    tissue = rng.uniform(80, 130)
    image = np.full((h, w), rng.uniform(5, 20), dtype=np.float32)
    image[body] = tissue
    image += (_smooth_noise(rng, h, w, int(rng.integers(3, 7))) - 0.5) * 16 * body
    eroded = cv2.erode(body.astype(np.uint8), np.ones((3, 3), np.uint8),
                       iterations=max(1, round(0.012 * min(h, w))))
    image[body & (eroded == 0)] += rng.uniform(12, 25)
    # Unlabelled clutter (vessels, bone): small bright discs in the tissue, never over an organ.
    clutter = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(clutter)
    for _ in range(int(rng.integers(1, 4))):
        k = int(rng.integers(len(bx)))
        rr = s * rng.uniform(0.015, 0.04)
        draw.ellipse([bx[k] - rr, by[k] - rr, bx[k] + rr, by[k] + rr], fill=int(rng.integers(15, 60)))
    image += np.asarray(clutter, dtype=np.float32) * (body & (labels == 0))
    # Organs: low contrast against the tissue, distinct (a little) from each other, faint texture.
    levels: list = []
    for m in masks:
        for _ in range(50):
            level = tissue + rng.choice([-1.0, 1.0]) * rng.uniform(*ORGAN_CONTRAST)
            if all(abs(level - o) >= _MIN_ORGAN_SEPARATION for o in levels):
                break
        levels.append(level)
        tex = (_smooth_noise(rng, h, w, int(rng.integers(6, 14))) - 0.5) * rng.uniform(4, 10)
        image[m] = level + tex[m]
    # Partial-volume blur of the image only, then speckle and sensor noise.
    sigma = rng.uniform(0.8, 1.6) * min(h, w) / 256
    image = cv2.GaussianBlur(image, (0, 0), sigmaX=max(sigma, 0.5))
    image *= 1 + rng.normal(0, rng.uniform(0.03, 0.07), image.shape).astype(np.float32)
    image += rng.normal(0, rng.uniform(2.0, 5.0), image.shape).astype(np.float32)
    gray = np.clip(image, 0, 255).round().astype(np.uint8)
    return SyntheticScene(np.repeat(gray[..., None], 3, axis=-1), masks, ["organ"] * len(kept))
