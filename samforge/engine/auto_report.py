"""The automatic stage's report: how many pseudo-labels each image got and how their scores are spread, from the
COCO instances ``samforge engine auto`` writes (each annotation with ``predicted_iou`` and ``stability_score``)."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

SCORE_BINS = 20  # histogram bins over [0, 1]


def auto_report(coco: Mapping[str, Any], bins: int = SCORE_BINS) -> dict:
    """``{"images", "pseudo_labels", "masks_per_image": {file_name: count}, "histograms": {score: {"edges",
    "counts"}}}`` of a COCO instances dict whose annotations carry ``predicted_iou`` and ``stability_score``
    (a score outside [0, 1], as a regressed IoU can be, is counted in the nearest end bin)."""
    if not isinstance(coco, Mapping) or not {"images", "annotations"} <= set(coco):
        got = f"a dict with keys {sorted(coco)}" if isinstance(coco, Mapping) else type(coco).__name__
        raise ValueError(f"coco must be COCO instances (a dict with 'images' and 'annotations'), got {got}")
    if not isinstance(bins, int) or isinstance(bins, bool) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}")
    names = {im["id"]: im["file_name"] for im in coco["images"]}
    per_image = dict.fromkeys(names.values(), 0)
    scores: dict[str, list[float]] = {"predicted_iou": [], "stability_score": []}
    for i, ann in enumerate(coco["annotations"]):
        missing = [k for k in ("image_id", *scores) if k not in ann]
        if missing or ann["image_id"] not in names:
            why = f"lacks {missing}" if missing else f"has image_id {ann['image_id']!r}, not an image's id"
            raise ValueError(f"annotations[{i}] {why}: expected a pseudo-label of samforge engine auto")
        per_image[names[ann["image_id"]]] += 1
        for key, values in scores.items():
            values.append(float(ann[key]))
    histograms = {}
    for key, values in scores.items():
        clipped = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)  # outside [0, 1]: in the end bins
        counts, edges = np.histogram(clipped, bins=bins, range=(0.0, 1.0))
        histograms[key] = {"edges": [round(float(e), 6) for e in edges], "counts": counts.tolist()}
    return {"images": len(names), "pseudo_labels": len(coco["annotations"]), "masks_per_image": per_image,
            "histograms": histograms}
