"""The semi-automatic stage's proposals: the automatic masks the model is confident about, minus the objects
already accepted.

A proposal is a record of ``SamAutomaticMaskGenerator`` / ``SAM2AutomaticMaskGenerator`` (``segmentation`` as a
bool mask or a COCO / uncompressed RLE, ``predicted_iou``, ``stability_score``) kept when its predicted IoU and
stability score reach strict thresholds (the SAM paper's semi-automatic stage: confident masks only) and it does not
overlap an accepted object by IoU above ``overlap_iou_thresh``: a proposal never replaces an accepted object.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from samforge.predict.amg_outputs import segmentation_size, segmentation_to_coco_rle

PRED_IOU_THRESH = 0.9
STABILITY_SCORE_THRESH = 0.95
OVERLAP_IOU_THRESH = 0.5


def check_threshold(value: Any, name: str) -> float:
    """``value`` as a float when it is a number in (0, 1] (an IoU or score a mask must reach), else ``ValueError``
    naming ``name``."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
    return float(value)


def proposal_filters(pred_iou_thresh: Any = PRED_IOU_THRESH,
                     stability_score_thresh: Any = STABILITY_SCORE_THRESH) -> dict[str, float]:
    """The proposal filter as recorded beside cached proposals: ``{"pred_iou_thresh", "stability_score_thresh"}``,
    each checked by :func:`check_threshold` (the strict ones by default)."""
    return {"pred_iou_thresh": check_threshold(pred_iou_thresh, "pred_iou_thresh"),
            "stability_score_thresh": check_threshold(stability_score_thresh, "stability_score_thresh")}


def _check_thresh(value: Any, name: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise TypeError(f"{name} must be a number in [0, 1], got {value!r}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return float(value)


def _score(record: Any, key: str, i: int) -> float:
    if not isinstance(record, Mapping):
        raise TypeError(f"records[{i}] must be a dict (an automatic-mask record), got {type(record).__name__}")
    if key not in record or "segmentation" not in record:
        raise ValueError(f"records[{i}] must have 'segmentation', 'predicted_iou' and 'stability_score', got keys "
                         f"{sorted(record)}")
    value = record[key]
    try:
        score = float(value)
    except (TypeError, ValueError) as e:
        raise TypeError(f"records[{i}]['{key}'] must be a number, got {value!r}") from e
    if not math.isfinite(score):
        raise ValueError(f"records[{i}]['{key}'] must be finite, got {value!r}")
    return score


def _rle(segmentation: Any, name: str) -> dict:
    """``segmentation`` as pycocotools' RLE (counts as bytes)."""
    rle = segmentation_to_coco_rle(segmentation, name)
    return {"size": list(rle["size"]), "counts": rle["counts"].encode("ascii")}


def filter_proposals(
    records: Sequence[Mapping[str, Any]],
    accepted: Sequence[Any] = (),
    pred_iou_thresh: float = PRED_IOU_THRESH,
    stability_score_thresh: float = STABILITY_SCORE_THRESH,
    overlap_iou_thresh: float = OVERLAP_IOU_THRESH,
) -> list[Mapping[str, Any]]:
    """The records (in their order, the same objects) with ``predicted_iou >= pred_iou_thresh`` and
    ``stability_score >= stability_score_thresh`` whose mask overlaps no mask of ``accepted`` (the accepted objects
    of the image: HxW bool masks or RLEs of the records' size) by IoU > ``overlap_iou_thresh``."""
    if isinstance(records, (str, bytes, Mapping)) or not isinstance(records, Sequence):
        raise TypeError(f"records must be a list of automatic-mask records, got {type(records).__name__}")
    if isinstance(accepted, (str, bytes, Mapping, np.ndarray)) or not isinstance(accepted, Sequence):
        raise TypeError(f"accepted must be a list of masks (HxW bool arrays or RLEs), got {type(accepted).__name__}")
    pred_iou_thresh = _check_thresh(pred_iou_thresh, "pred_iou_thresh")
    stability_score_thresh = _check_thresh(stability_score_thresh, "stability_score_thresh")
    overlap_iou_thresh = _check_thresh(overlap_iou_thresh, "overlap_iou_thresh")
    confident = [r for i, r in enumerate(records)
                 if _score(r, "predicted_iou", i) >= pred_iou_thresh
                 and _score(r, "stability_score", i) >= stability_score_thresh]
    sizes = {segmentation_size(r["segmentation"], f"records[{i}]['segmentation']") for i, r in enumerate(records)}
    sizes |= {segmentation_size(m, f"accepted[{i}]") for i, m in enumerate(accepted)}
    if len(sizes) > 1:
        raise ValueError(f"records and accepted masks must all be of one image size (HxW), got {sorted(sizes)}")
    if not confident or not accepted:
        return confident
    props = [_rle(r["segmentation"], "proposal") for r in confident]
    objects = [_rle(m, f"accepted[{i}]") for i, m in enumerate(accepted)]
    ious = np.asarray(mask_utils.iou(props, objects, [0] * len(objects))).reshape(len(props), len(objects))
    return [r for r, row in zip(confident, ious) if not (row > overlap_iou_thresh).any()]
