"""How good the automatic stage's pseudo-labels are, measured against ground truth (``engine simulate``).

Pseudo-labels and true objects are matched one to one, as COCO's evaluation matches detections: the pseudo-labels in
their order (the automatic stage's, best score first) each take the unclaimed true object they overlap most, when that
IoU reaches the threshold. At threshold ``t``: precision = matched pseudo-labels / pseudo-labels (None when there are
none: nothing to be right or wrong about), recall = matched true objects / true objects. Counts are summed over the
images before dividing (micro-averaged), so an image with many objects weighs as much as its objects.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

THRESHOLDS: tuple[float, ...] = (0.5, 0.75)


def _masks(masks: Sequence[np.ndarray], name: str) -> np.ndarray:
    """``masks`` as a K x H x W bool array (K may be 0); a list of HxW bool arrays of one size, or such an array."""
    if isinstance(masks, np.ndarray):
        arr = masks
    elif isinstance(masks, Sequence) and not isinstance(masks, (str, bytes)):
        arr = np.stack(masks) if len(masks) else np.zeros((0, 0, 0), dtype=bool)
    else:
        raise TypeError(f"{name} must be a list of HxW bool masks or a KxHxW bool array, got {type(masks).__name__}")
    if arr.ndim != 3 or arr.dtype != bool:
        raise ValueError(f"{name} must be HxW bool masks (K x H x W bool), got shape {arr.shape} dtype {arr.dtype}")
    return arr


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every mask of ``a`` (N x H x W bool) with every mask of ``b`` (K x H x W bool): N x K (0 where both
    are empty)."""
    fa = a.reshape(len(a), -1).astype(np.float32)
    fb = b.reshape(len(b), -1).astype(np.float32)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def match_count(pseudo: Sequence[np.ndarray], gts: Sequence[np.ndarray], threshold: float) -> int:
    """How many of ``pseudo`` (HxW bool masks, best first) match a distinct true object of ``gts`` at IoU >=
    ``threshold`` (greedy one-to-one matching, each pseudo-label taking its best unclaimed object)."""
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0 < threshold <= 1:
        raise ValueError(f"threshold must be a number in (0, 1], got {threshold!r}")
    p, g = _masks(pseudo, "pseudo"), _masks(gts, "gts")
    if len(p) == 0 or len(g) == 0:
        return 0
    if p.shape[1:] != g.shape[1:]:
        raise ValueError(f"pseudo-labels are {p.shape[1]}x{p.shape[2]} but the true masks {g.shape[1]}x{g.shape[2]}: "
                         "both must be of the image's size")
    ious = iou_matrix(p, g)
    free = np.ones(len(g), dtype=bool)
    matched = 0
    for row in ious:
        row = np.where(free, row, -1.0)
        j = int(np.argmax(row))
        if row[j] >= threshold:
            free[j] = False
            matched += 1
    return matched


def pseudo_label_scores(images: Sequence[tuple[Sequence[np.ndarray], Sequence[np.ndarray]]],
                        thresholds: Sequence[float] = THRESHOLDS) -> dict[str, float | int | None]:
    """Precision and recall of the pseudo-labels of ``images`` (one ``(pseudo-labels best first, true masks)`` pair
    per image) at each IoU threshold: ``{"pseudo_labels": N, "objects": K, "precision@0.5": ..., "recall@0.5": ...,
    ...}``; a precision is None when there is no pseudo-label, a recall None when there is no true object."""
    if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
        raise TypeError(f"images must be a list of (pseudo-labels, true masks) pairs, got {type(images).__name__}")
    for i, item in enumerate(images):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ValueError(f"images[{i}] must be a (pseudo-labels, true masks) pair, got {type(item).__name__}")
    n_pseudo = sum(len(p) for p, _ in images)
    n_objects = sum(len(g) for _, g in images)
    out: dict[str, float | int | None] = {"pseudo_labels": n_pseudo, "objects": n_objects}
    for t in thresholds:
        matched = sum(match_count(p, g, t) for p, g in images)
        out[f"precision@{t:g}"] = matched / n_pseudo if n_pseudo else None
        out[f"recall@{t:g}"] = matched / n_objects if n_objects else None
    return out
