"""The ``stored`` protocol: each object prompted with the prompt stored with the data (``Sample.prompts``, read by
:mod:`samforge.data.stored_prompts`) instead of a simulated one; one prediction per object, SAM's multimask rule
(three masks and the best-scored kept only for a single click without a box)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from samforge.data.sample import Sample
from samforge.evaluate.metrics import iou_dice
from samforge.evaluate.protocols import PredictorLike, Prompt, predict_prompt

if TYPE_CHECKING:
    from samforge.evaluate.evaluator import Case, ObjectResult

STORED = "stored"  # the protocol's name in metrics.json and per_image.csv
PROMPT_SOURCES = ("simulated", "stored")


def evaluate_image_stored(predictor: PredictorLike, sample: Sample, image_index: int,
                          ) -> tuple[list["ObjectResult"], list[tuple[float, "Case"]], list[str]]:
    """Embed ``sample.image`` once and predict each object from its stored prompt. Returns the object results
    (``iou``/``dice`` under ``"stored"``, no interactive clicks), the (IoU, case) pairs for the picture, and the
    objects skipped (no stored prompt, or an empty mask) with the reason."""
    from samforge.evaluate.evaluator import Case, ObjectResult

    prompts = sample.prompts or [None] * len(sample.masks)
    skipped = [f"{sample.name}: object {k} has {'an empty mask' if not gt.any() else 'no stored prompt'} "
               "(not evaluated)" for k, (gt, p) in enumerate(zip(sample.masks, prompts)) if p is None or not gt.any()]
    keep = [k for k, (gt, p) in enumerate(zip(sample.masks, prompts)) if p is not None and gt.any()]
    if not keep:
        return [], [], skipped
    predictor.set_image(sample.image)
    results, cases = [], []
    for k in keep:
        stored, gt = prompts[k], sample.masks[k]
        pred = predict_prompt(predictor, Prompt(stored.points, stored.labels, stored.box))
        iou, dice = iou_dice(pred.mask, gt)
        results.append(ObjectResult(image_index=image_index, image_name=sample.name, object_index=k,
                                    area=int(gt.sum()), iou={STORED: iou}, dice={STORED: dice}, click_ious=[],
                                    noc={}))
        cases.append((iou, Case(sample.image, gt, pred.mask, stored.box, iou, f"{sample.name} #{k}")))
    return results, cases, skipped
