"""Interactive segmentation: simulated correction clicks, mIoU after k clicks and NoC@t (number of clicks).

The click loop follows the interactive benchmarks (RITM, SAM): the first click is the object's interior
point; each next click is the interior point of the larger-depth error region (positive in a missed part,
negative in a spurious one), deterministic. Points and labels accumulate; from the second click on, the
previous chosen mask's low-res logits are fed back as ``mask_input`` and a single mask is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from samforge.data.prompts import correction_click, interior_point
from samforge.evaluate.metrics import mask_iou
from samforge.evaluate.protocols import PredictorLike, Prompt, check_gt, predict_prompts

MAX_CLICKS = 20
CLICKS_REPORTED: tuple[int, ...] = (1, 2, 3, 5, 9)
NOC_THRESHOLDS: tuple[float, ...] = (0.85, 0.90)


@dataclass
class ClickTrace:
    """IoU after each click (``ious[k - 1]`` after k clicks), the clicks given, and the last mask."""

    ious: list[float] = field(default_factory=list)
    points: list[np.ndarray] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    last_mask: np.ndarray | None = None

    def noc(self, threshold: float, max_clicks: int = MAX_CLICKS) -> int:
        """Clicks needed to reach IoU >= ``threshold``; ``max_clicks`` if never reached."""
        return noc(self.ious, threshold, max_clicks)


def noc(ious: Sequence[float], threshold: float, max_clicks: int = MAX_CLICKS) -> int:
    """The first click count k (1-based, k <= ``max_clicks``) with ``ious[k - 1] >= threshold``, else ``max_clicks``."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    for k, iou in enumerate(ious[:max_clicks], start=1):
        if iou >= threshold:
            return k
    return max_clicks


def click_loops(
    predictor: PredictorLike,
    gts: Sequence[np.ndarray],
    max_clicks: int = MAX_CLICKS,
    stop_at: float | None = max(NOC_THRESHOLDS),
    min_clicks: int = max(CLICKS_REPORTED),
) -> list[ClickTrace]:
    """Simulate up to ``max_clicks`` clicks on each object of ``gts`` (the predictor's image must be set);
    the objects still clicking are decoded together at each step.

    An object stops early once at least ``min_clicks`` were given and its IoU >= ``stop_at`` (set
    ``stop_at`` to None to always click ``max_clicks`` times): NoC at thresholds <= ``stop_at`` and the IoU
    after up to ``min_clicks`` clicks are the same either way.
    """
    for gt in gts:
        check_gt(gt)
    if not isinstance(max_clicks, int) or isinstance(max_clicks, bool) or max_clicks < 1:
        raise ValueError(f"max_clicks must be a positive int, got {max_clicks!r}")
    traces = [ClickTrace() for _ in gts]
    nxt: list[tuple[np.ndarray, int]] = [(interior_point(gt), 1) for gt in gts]
    mask_inputs: list[np.ndarray | None] = [None] * len(gts)
    active = list(range(len(gts)))
    for k in range(1, max_clicks + 1):
        for i in active:
            traces[i].points.append(nxt[i][0])
            traces[i].labels.append(nxt[i][1])
        prompts = [Prompt(np.stack(traces[i].points), np.asarray(traces[i].labels, dtype=np.int64)) for i in active]
        preds = predict_prompts(predictor, prompts, None if k == 1 else [mask_inputs[i] for i in active],
                                multimask=k == 1)
        still = []
        for i, pred in zip(active, preds):
            t = traces[i]
            t.ious.append(mask_iou(pred.mask, gts[i]))
            t.last_mask = pred.mask
            if stop_at is not None and k >= min_clicks and t.ious[-1] >= stop_at:
                continue
            mask_inputs[i] = pred.low_res
            nxt[i] = correction_click(pred.mask, gts[i])
            still.append(i)
        active = still
        if not active:
            break
    return traces


def click_loop(
    predictor: PredictorLike,
    gt: np.ndarray,
    max_clicks: int = MAX_CLICKS,
    stop_at: float | None = max(NOC_THRESHOLDS),
    min_clicks: int = max(CLICKS_REPORTED),
) -> ClickTrace:
    """:func:`click_loops` for one object."""
    return click_loops(predictor, [gt], max_clicks, stop_at, min_clicks)[0]


def miou_at_clicks(traces: Sequence[ClickTrace], clicks: Sequence[int] = CLICKS_REPORTED) -> dict[str, float]:
    """Mean IoU over objects after each number of clicks in ``clicks``, keyed by ``str(k)``.

    A trace that stopped early (target reached) keeps its last IoU for later click counts.
    """
    if not traces:
        raise ValueError("miou_at_clicks needs at least one click trace, got none")
    return {str(k): float(np.mean([t.ious[min(k, len(t.ious)) - 1] for t in traces])) for k in clicks}
