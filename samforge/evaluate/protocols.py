"""The single-shot prompt protocols of SAM's evaluation, for one object on an image already set.

* ``center_point``: one positive click at the object's interior point (farthest from its boundary);
* ``random_point``: one positive click drawn uniformly inside the object (seeded ``rng``);
* ``box``: the object's tight box (no jitter);
* ``points_3``: the centre click plus two random clicks inside, all positive;
* ``recipe`` (only when a training recipe is named): the first prompt that recipe trains with, drawn from it.

As in SAM's evaluation and training, a single click (ambiguous) asks for three masks
(``multimask_output=True``) and keeps the one with the highest predicted IoU; a box, or more than one click,
asks for a single mask (as the official box examples do, and as samforge's trainer supervises boxes).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Protocol, Sequence

import numpy as np
import torch

from samforge.data.prompts import interior_point, mask_to_box, sample_points
from samforge.data.recipes import first_prompts, recipe_settings
from samforge.predict.predictor import SamPredictor

PROTOCOLS: tuple[str, ...] = ("center_point", "random_point", "box", "points_3")
RECIPE = "recipe"  # with a training recipe named: that recipe's first prompt (evaluate --recipe)
DECODE_BATCH = 16  # prompts per decoder call: bounds the B x 3 x H x W full-resolution masks in memory


class PredictorLike(Protocol):
    """What the evaluation needs of a predictor: ``SamPredictor``'s ``set_image`` and ``predict``."""

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None: ...

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


@dataclass
class Prompt:
    """One prompt set: points ``N x 2`` (x, y) with labels ``N``, and/or a box ``4`` (XYXY)."""

    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    box: np.ndarray | None = None

    @property
    def multimask(self) -> bool:
        """SAM's rule: three masks only for an ambiguous prompt, a single click without a box."""
        return self.box is None and self.points is not None and len(self.points) == 1


@dataclass
class Prediction:
    """A protocol's chosen mask (HxW bool), its predicted IoU, its low-res logits (1 x h x w) and prompt."""

    mask: np.ndarray
    score: float
    low_res: np.ndarray
    prompt: Prompt


def check_gt(gt: np.ndarray) -> None:
    """A non-empty HxW bool ground-truth mask."""
    if not isinstance(gt, np.ndarray) or gt.ndim != 2 or gt.dtype != bool:
        raise ValueError(
            f"gt must be an HxW bool numpy array, got {type(gt).__name__} "
            f"{getattr(gt, 'shape', '')} {getattr(gt, 'dtype', '')}".rstrip()
        )
    if not gt.any():
        raise ValueError(f"gt of shape {gt.shape} is empty: an object needs at least one pixel to prompt")


def protocol_prompts(gt: np.ndarray, rng: np.random.Generator) -> dict[str, Prompt]:
    """The prompt of each protocol in :data:`PROTOCOLS` for the object ``gt``; draws 3 points from ``rng``."""
    check_gt(gt)
    centre = interior_point(gt)[None]
    one = np.ones(1, dtype=np.int64)
    return {
        "center_point": Prompt(centre, one),
        "random_point": Prompt(sample_points(gt, 1, rng), one),
        "box": Prompt(box=mask_to_box(gt)),
        "points_3": Prompt(np.concatenate([centre, sample_points(gt, 2, rng)]), np.ones(3, dtype=np.int64)),
    }


def predict_prompt(
    predictor: PredictorLike, prompt: Prompt, mask_input: np.ndarray | None = None, multimask: bool | None = None
) -> Prediction:
    """Decode ``prompt`` on the predictor's current image; with several masks keep the best-scored one.
    ``multimask`` defaults to SAM's rule (:attr:`Prompt.multimask`)."""
    multimask = prompt.multimask if multimask is None else multimask
    masks, scores, low_res = predictor.predict(
        point_coords=prompt.points,
        point_labels=prompt.labels,
        box=prompt.box,
        mask_input=mask_input,
        multimask_output=multimask,
    )
    best = int(np.argmax(scores))
    return Prediction(np.asarray(masks[best], dtype=bool), float(scores[best]), low_res[best][None], prompt)


def predict_prompts(
    predictor: PredictorLike,
    prompts: Sequence[Prompt],
    mask_inputs: Sequence[np.ndarray] | None = None,
    multimask: bool | None = None,
    max_batch: int = DECODE_BATCH,
) -> list[Prediction]:
    """:func:`predict_prompt` for many prompts of one kind (same number of points; all with a box or
    none; all with a ``mask_input`` or none). A :class:`SamPredictor` decodes them in batches of up to
    ``max_batch`` (one decoder call each) with the image embedding shared; any other predictor one by one."""
    if mask_inputs is not None and len(mask_inputs) != len(prompts):
        raise ValueError(f"mask_inputs must be one per prompt ({len(prompts)}), got {len(mask_inputs)}")
    if not isinstance(predictor, SamPredictor):
        return [predict_prompt(predictor, p, None if mask_inputs is None else mask_inputs[i], multimask)
                for i, p in enumerate(prompts)]
    out: list[Prediction] = []
    for start in range(0, len(prompts), max_batch):
        chunk = slice(start, start + max_batch)
        out += _decode_batch(predictor, prompts[chunk], None if mask_inputs is None else mask_inputs[chunk], multimask)
    return out


def _decode_batch(
    predictor: SamPredictor, prompts: Sequence[Prompt], mask_inputs: Sequence[np.ndarray] | None,
    multimask: bool | None,
) -> list[Prediction]:
    """One ``predict_torch`` call for prompts of one kind, transformed exactly as ``SamPredictor.predict`` does."""
    first = prompts[0]
    kinds = {(None if p.points is None else len(p.points), p.box is None, p.multimask) for p in prompts}
    if len(kinds) != 1:
        raise ValueError(f"prompts decoded together must share (number of points, has box, multimask), got {kinds}")
    multimask = first.multimask if multimask is None else multimask
    size, device = predictor.original_size, predictor.device
    coords = labels = boxes = masks_in = None
    if first.points is not None:
        pts = np.stack([predictor.transform.apply_coords(np.asarray(p.points, dtype=np.float64), size)
                        for p in prompts])
        coords = torch.as_tensor(pts, dtype=torch.float, device=device)
        labels = torch.as_tensor(np.stack([np.asarray(p.labels) for p in prompts]), dtype=torch.int, device=device)
    if first.box is not None:
        bx = np.stack([predictor.transform.apply_boxes(np.asarray(p.box, dtype=np.float64)[None], size)[0]
                       for p in prompts])
        boxes = torch.as_tensor(bx, dtype=torch.float, device=device)
    if mask_inputs is not None:
        masks_in = torch.as_tensor(np.stack(mask_inputs), dtype=torch.float, device=device)
    masks, scores, low_res = predictor.predict_torch(coords, labels, boxes, masks_in, multimask_output=multimask)
    best = scores.argmax(dim=1)
    rows = torch.arange(len(prompts), device=best.device)
    masks = masks[rows, best].cpu().numpy()
    chosen_scores = scores[rows, best].float().cpu().numpy()
    low_res = low_res[rows, best][:, None].float().cpu().numpy()
    return [Prediction(masks[i], float(chosen_scores[i]), low_res[i], p) for i, p in enumerate(prompts)]


def recipe_prompt(gt: np.ndarray, recipe: str, rng: np.random.Generator) -> Prompt:
    """The first prompt training recipe ``recipe`` (:mod:`samforge.data.recipes`) would give object ``gt``, drawn
    from ``rng`` in the image's own pixels (``ValueError`` listing the recipes for an unknown name)."""
    check_gt(gt)
    settings = SimpleNamespace(**recipe_settings(recipe))
    coords, labels, boxes = first_prompts(gt[None], settings, rng, [gt.shape])
    return Prompt(None if coords is None else coords[0], None if labels is None else labels[0],
                  None if boxes is None else boxes[0])


def predict_mixed(predictor: PredictorLike, prompts: Sequence[Prompt]) -> list[Prediction]:
    """:func:`predict_prompts` for prompts of different kinds: each kind (number of points, box or not) decoded
    together, the predictions given back in the order of ``prompts``."""
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault((None if p.points is None else len(p.points), p.box is None), []).append(i)
    out: list[Prediction | None] = [None] * len(prompts)
    for rows in groups.values():
        for i, pred in zip(rows, predict_prompts(predictor, [prompts[i] for i in rows])):
            out[i] = pred
    return out


def run_protocols_many(
    predictor: PredictorLike, gts: Sequence[np.ndarray], rngs: Sequence[np.random.Generator],
    recipe: str | None = None,
) -> list[dict[str, Prediction]]:
    """The prediction of every protocol for each object in ``gts`` (one rng each, for the random points),
    on the predictor's current image; each protocol is decoded for all objects together. With ``recipe`` (a
    training recipe's name) also ``"recipe"``: the first prompt that recipe trains with (drawn after the others,
    so they are the same with or without it)."""
    if len(rngs) != len(gts):
        raise ValueError(f"rngs must be one per object ({len(gts)}), got {len(rngs)}")
    prompts = [protocol_prompts(gt, rng) for gt, rng in zip(gts, rngs)]
    per_protocol = {name: predict_prompts(predictor, [p[name] for p in prompts]) for name in PROTOCOLS}
    if recipe is not None:
        per_protocol[RECIPE] = predict_mixed(predictor, [recipe_prompt(gt, recipe, rng) for gt, rng in zip(gts, rngs)])
    return [{name: preds[i] for name, preds in per_protocol.items()} for i in range(len(gts))]


def run_protocols(predictor: PredictorLike, gt: np.ndarray, rng: np.random.Generator) -> dict[str, Prediction]:
    """The prediction of every protocol for object ``gt`` (the predictor's image must already be set)."""
    return run_protocols_many(predictor, [gt], [rng])[0]
