"""The simulated annotator of the data engine: a person replaced by rules applied to ground truth.

* Clicking an object: exactly the evaluation's NoC protocol (:func:`samforge.evaluate.interactive.click_loops`):
  the first click at the object's interior point, each next one in the larger-depth error region, until the mask
  reaches IoU >= ``target_iou`` (0.85) or ``max_clicks`` (20) clicks were given; the clicks an object cost are the
  length of its trace, which is its NoC at ``target_iou``.
* Judging a proposal: accepted when it matches a true object not yet claimed at IoU >= ``accept_iou`` (0.85),
  rejected otherwise (proposals are judged in their order; a true object is claimed by one proposal at most).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from samforge.engine.proposals import check_threshold
from samforge.evaluate.interactive import MAX_CLICKS, ClickTrace, click_loops
from samforge.evaluate.metrics import mask_iou
from samforge.evaluate.protocols import PredictorLike, check_gt
from samforge.predict.amg_outputs import segmentation_to_mask

TARGET_IOU = 0.85
ACCEPT_IOU = 0.85


def annotate_objects(
    predictor: PredictorLike,
    gts: Sequence[np.ndarray],
    target_iou: float = TARGET_IOU,
    max_clicks: int = MAX_CLICKS,
) -> list[ClickTrace]:
    """Click each object of ``gts`` (HxW bool masks of the predictor's current image) as the NoC protocol does until
    its IoU >= ``target_iou`` or ``max_clicks`` clicks; one trace per object (``len(trace.ious)`` clicks, its last
    mask the one the person accepts)."""
    if isinstance(gts, np.ndarray) or not isinstance(gts, Sequence):
        raise TypeError(f"gts must be a list of HxW bool masks, got {type(gts).__name__}")
    target_iou = check_threshold(target_iou, "target_iou")
    return click_loops(predictor, gts, max_clicks=max_clicks, stop_at=target_iou, min_clicks=1)


@dataclass(frozen=True)
class ProposalVerdict:
    """The simulated person's decision on one proposal: accepted or not, the true object it matched (index into
    the image's objects, None when rejected) and its best IoU with an unclaimed true object."""

    accepted: bool
    object_index: int | None
    iou: float


def judge_proposals(
    proposals: Sequence[Mapping[str, Any] | np.ndarray],
    gts: Sequence[np.ndarray],
    accept_iou: float = ACCEPT_IOU,
) -> list[ProposalVerdict]:
    """Accept or reject each proposal (an automatic-mask record or an HxW bool mask) against the true objects
    ``gts`` of its image: accepted when its IoU with a true object not claimed by an earlier proposal is
    >= ``accept_iou`` (that object is then claimed), rejected otherwise."""
    if isinstance(proposals, (np.ndarray, Mapping, str)) or not isinstance(proposals, Sequence):
        raise TypeError(f"proposals must be a list of records or masks, got {type(proposals).__name__}")
    if isinstance(gts, np.ndarray) or not isinstance(gts, Sequence):
        raise TypeError(f"gts must be a list of HxW bool masks, got {type(gts).__name__}")
    accept_iou = check_threshold(accept_iou, "accept_iou")
    for gt in gts:
        check_gt(gt)
    claimed: set[int] = set()
    verdicts = []
    for i, proposal in enumerate(proposals):
        if isinstance(proposal, Mapping):
            if "segmentation" not in proposal:
                raise ValueError(f"proposals[{i}] must have a 'segmentation', got keys {sorted(proposal)}")
            mask = segmentation_to_mask(proposal["segmentation"], f"proposals[{i}]['segmentation']")
        else:
            mask = segmentation_to_mask(proposal, f"proposals[{i}]")
        for j, gt in enumerate(gts):
            if gt.shape != mask.shape:
                raise ValueError(f"proposals[{i}] is {mask.shape[0]}x{mask.shape[1]} but gts[{j}] is "
                                 f"{gt.shape[0]}x{gt.shape[1]}: both must be of the image's size")
        ious = [(mask_iou(mask, gt), j) for j, gt in enumerate(gts) if j not in claimed]
        best, j = max(ious, key=lambda t: (t[0], -t[1]), default=(0.0, None))  # ties: the first object
        if j is not None and best >= accept_iou:
            claimed.add(j)
            verdicts.append(ProposalVerdict(True, j, best))
        else:
            verdicts.append(ProposalVerdict(False, None, best))
    return verdicts
