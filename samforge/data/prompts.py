"""Prompt simulation as in the SAM paper and fine-tuning practice: boxes (jittered), points inside and
outside an object, the object's centre, and correction clicks from the error region.

Coordinates are pixels, (x, y); boxes are XYXY with x1/y1 the last covered pixel.
"""

from __future__ import annotations

import math

import cv2
import numpy as np


def _check_mask(mask: np.ndarray, name: str = "mask") -> None:
    if not isinstance(mask, np.ndarray) or mask.ndim != 2 or mask.dtype != bool:
        raise ValueError(f"{name} must be an HxW bool array, got {getattr(mask, 'shape', type(mask).__name__)} "
                         f"{getattr(mask, 'dtype', '')}")
    if not mask.any():
        raise ValueError(f"{name} is empty: no pixel to prompt")


def mask_to_box(mask: np.ndarray) -> np.ndarray:
    """Tight XYXY box of a non-empty mask, float64."""
    _check_mask(mask)
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float64)


def jitter_box(box: np.ndarray, image_hw: tuple[int, int], rng: np.random.Generator,
               noise: float = 0.1, max_noise: float = 20.0) -> np.ndarray:
    """Move each box edge by Gaussian noise with std ``noise`` x the box side, capped at ``max_noise`` px
    (SAM's training recipe), clipped to the image and kept non-degenerate."""
    box = np.asarray(box, dtype=np.float64)
    w, h = box[2] - box[0], box[3] - box[1]
    std = np.array([w, h, w, h]) * noise
    delta = np.clip(rng.normal(0.0, 1.0, 4) * std, -max_noise, max_noise)
    out = box + delta
    out[[0, 2]] = np.clip(out[[0, 2]], 0, image_hw[1] - 1)
    out[[1, 3]] = np.clip(out[[1, 3]], 0, image_hw[0] - 1)
    for lo, hi, size in ((0, 2, image_hw[1]), (1, 3, image_hw[0])):  # at least 1 px wide, inside the image
        if out[hi] < out[lo] + 1:
            out[hi] = min(out[lo] + 1, size - 1)
            out[lo] = max(0.0, out[hi] - 1)
    return out


def sample_points(mask: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` points drawn uniformly (with replacement) from the True pixels of ``mask``, ``n x 2`` (x, y)."""
    _check_mask(mask)
    ys, xs = np.nonzero(mask)
    idx = rng.integers(0, len(xs), n)
    return np.stack([xs[idx], ys[idx]], axis=1).astype(np.float64)


def sample_negative_points(mask: np.ndarray, n: int, rng: np.random.Generator, margin: float = 0.2) -> np.ndarray:
    """``n`` background points near the object: outside ``mask`` but inside its box grown by ``margin``
    of its size (anywhere outside when that region is empty). ``n x 2`` (x, y)."""
    x0, y0, x1, y1 = mask_to_box(mask)
    h, w = mask.shape
    mx, my = (x1 - x0 + 1) * margin, (y1 - y0 + 1) * margin
    region = np.zeros_like(mask)
    # pixels whose coordinates lie within [x0 - mx, x1 + mx] x [y0 - my, y1 + my]
    region[max(0, math.ceil(y0 - my)) : min(h, math.floor(y1 + my) + 1),
           max(0, math.ceil(x0 - mx)) : min(w, math.floor(x1 + mx) + 1)] = True
    region &= ~mask
    if not region.any():
        region = ~mask
    if not region.any():
        raise ValueError("the mask covers the whole image: no background pixel for a negative point")
    return sample_points(region, n, rng)


def interior_point(region: np.ndarray) -> np.ndarray:
    """The pixel of ``region`` farthest from its boundary (the image border counts as boundary), (x, y).
    The standard deterministic "centre" click of interactive segmentation benchmarks."""
    _check_mask(region, "region")
    dist = _distance_to_boundary(region)
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return np.array([x, y], dtype=np.float64)


def correction_click(pred: np.ndarray, gt: np.ndarray, rng: np.random.Generator | None = None) -> tuple[np.ndarray, int]:
    """Next click to fix ``pred`` towards ``gt``: in the larger of the false-negative (label 1) and
    false-positive (label 0) regions. With ``rng`` the point is drawn uniformly from that region (SAM's
    training); without, it is the region's interior point (evaluation). A perfect ``pred`` gets a positive
    click at ``gt``'s interior point."""
    for name, m in (("pred", pred), ("gt", gt)):
        if not isinstance(m, np.ndarray) or m.ndim != 2 or m.dtype != bool:
            raise ValueError(f"{name} must be an HxW bool array, got {getattr(m, 'shape', type(m).__name__)} "
                             f"{getattr(m, 'dtype', '')}")
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt must have the same shape, got {pred.shape} and {gt.shape}")
    fn, fp = gt & ~pred, pred & ~gt
    if not fn.any() and not fp.any():
        return interior_point(gt), 1
    if rng is None:
        # compare the depth of the two error regions, as interactive benchmarks (RITM, SAM) do
        fn_depth, fp_depth = _distance_to_boundary(fn).max(), _distance_to_boundary(fp).max()
        region, label = (fn, 1) if fn_depth >= fp_depth else (fp, 0)
        return interior_point(region), label
    region, label = (fn, 1) if fn.sum() >= fp.sum() else (fp, 0)
    return sample_points(region, 1, rng)[0], label


def _distance_to_boundary(region: np.ndarray) -> np.ndarray:
    """Euclidean distance of each pixel of ``region`` to the nearest pixel outside it (or off the image)."""
    padded = np.pad(region, 1).astype(np.uint8)
    return cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]


def pack_stored_prompts(prompts: list, names: list[str]) -> tuple[np.ndarray | None, np.ndarray | None,
                                                                   np.ndarray | None]:
    """N objects' stored prompts (:class:`~samforge.data.stored_prompts.StoredPrompt`) as one batch: point coords
    N x P x 2 and labels N x P (an object with fewer points is padded with label -1, SAM's "not a point"), and boxes
    N x 4 (a row of NaN for an object without a box); unused parts None. ``names[n]`` names object ``n``'s image
    for the error raised when an object has no stored prompt."""
    if len(prompts) != len(names):
        raise ValueError(f"names: expected one per prompt ({len(prompts)}), got {len(names)}")
    missing = [f"{name} object {n}" for n, (p, name) in enumerate(zip(prompts, names)) if p is None]
    if missing:
        raise ValueError(f"prompts.source=stored, but {len(missing)} object(s) have no stored prompt "
                         f"(annotations/<image>.json or dataset_info.json), e.g. {missing[:3]}")
    coords = labels = boxes = None
    most = max((0 if p.points is None else len(p.points)) for p in prompts)
    if most:
        coords = np.zeros((len(prompts), most, 2), dtype=np.float64)
        labels = np.full((len(prompts), most), -1, dtype=np.int64)
        for n, p in enumerate(prompts):
            if p.points is not None:
                coords[n, : len(p.points)], labels[n, : len(p.points)] = p.points, p.labels
    if any(p.box is not None for p in prompts):
        boxes = np.stack([np.full(4, np.nan) if p.box is None else p.box for p in prompts])
    return coords, labels, boxes
