"""Evaluate a SAM on a dataset of images with instance masks: every prompt protocol for every object.

Each image is embedded once; then each object gets the single-shot protocols (centre point, random point,
box, 3 points) and the interactive click loop. Results are kept per object, aggregated per image and over
the dataset (means over objects), and written as ``metrics.json``, ``per_image.csv`` and ``best_worst.png``.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
from tqdm import tqdm

from samforge.data.sample import Sample
from samforge.evaluate.interactive import (
    CLICKS_REPORTED,
    MAX_CLICKS,
    NOC_THRESHOLDS,
    ClickTrace,
    click_loops,
    miou_at_clicks,
)
from samforge.evaluate.interactive import noc as noc_of
from samforge.evaluate.metrics import iou_dice
from samforge.data.recipes import recipe_settings
from samforge.evaluate.protocols import RECIPE, PredictorLike, run_protocols_many
from samforge.evaluate.stored_protocol import PROMPT_SOURCES, STORED, evaluate_image_stored
from samforge.evaluate.refuge_metrics import RefugeScores
from samforge.models.sam import Sam
from samforge.models.sam2 import SAM2Base
from samforge.predict.predictor import SamPredictor
from samforge.predict.sam2_predictor import SAM2ImagePredictor

METRIC_PROTOCOLS: tuple[str, ...] = ("box", "center_point", "random_point", "points_3")  # metrics.json order
NUM_EXTREMES = 4  # best and worst objects shown in best_worst.png
NOC_KEYS: dict[str, float] = {f"noc{round(t * 100)}": t for t in NOC_THRESHOLDS}  # {"noc85": 0.85, "noc90": 0.9}


class DatasetLike(Protocol):
    """A sized, indexable collection of :class:`Sample` (e.g. ``SyntheticDataset`` or a list)."""

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> Sample: ...


@dataclass
class ObjectResult:
    """One object's results: IoU and Dice per protocol, IoU after each interactive click, NoC per threshold."""

    image_index: int
    image_name: str
    object_index: int
    area: int
    iou: dict[str, float]
    dice: dict[str, float]
    click_ious: list[float]
    noc: dict[str, int]


@dataclass
class Case:
    """A picture-worthy object for ``best_worst.png``: image, gt, the box protocol's mask and box, IoU."""

    image: np.ndarray
    gt: np.ndarray
    pred: np.ndarray
    box: np.ndarray | None
    iou: float
    title: str


class _Extremes:
    """Keeps the ``k`` highest- and ``k`` lowest-scored cases seen (ties: the earlier one first)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self._best: list[tuple[float, int, Case]] = []  # min-heap on (score, -order): root = weakest best
        self._worst: list[tuple[float, int, Case]] = []  # min-heap on (-score, -order): root = mildest worst
        self._order = itertools.count()

    def add(self, score: float, case: Case) -> None:
        n = next(self._order)
        for heap, key in ((self._best, score), (self._worst, -score)):
            item = (key, -n, case)
            if len(heap) < self.k:
                heapq.heappush(heap, item)
            elif item[:2] > heap[0][:2]:
                heapq.heapreplace(heap, item)

    def best(self) -> list[Case]:
        return [c for _, _, c in sorted(self._best, key=lambda t: t[:2], reverse=True)]

    def worst(self) -> list[Case]:
        return [c for _, _, c in sorted(self._worst, key=lambda t: t[:2], reverse=True)]


@dataclass
class EvalResult:
    """Everything :func:`evaluate_dataset` measured. ``skipped`` lists objects that could not be prompted."""

    objects: list[ObjectResult]
    image_names: list[str]
    best: list[Case] = field(default_factory=list)
    worst: list[Case] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    refuge: dict | None = None  # per-structure Dice/IoU as Medical-SAM2 reports them, for a dataset of structures

    def to_metrics_dict(self) -> dict[str, Any]:
        """The stable ``metrics.json`` content: per protocol ``{"miou", "dice"}``, ``interactive``
        (``miou_at_clicks`` at 1/2/3/5/9 clicks, ``noc85``, ``noc90``), ``num_objects``, ``num_images``;
        all means over objects. For a dataset of named structures (REFUGE: disc, cup) also ``refuge``
        (:meth:`samforge.evaluate.refuge_metrics.RefugeScores.summary`)."""
        if not self.objects:
            raise ValueError("no object was evaluated: metrics need at least one object")
        out: dict[str, Any] = {
            p: {
                "miou": float(np.mean([o.iou[p] for o in self.objects])),
                "dice": float(np.mean([o.dice[p] for o in self.objects])),
            }
            for p in self.protocols
        }
        if self.interactive:
            interactive: dict[str, Any] = {"miou_at_clicks": _miou_at_clicks(self.objects)}
            for key in NOC_KEYS:
                interactive[key] = float(np.mean([o.noc[key] for o in self.objects]))
            out["interactive"] = interactive
        out["num_objects"] = len(self.objects)
        out["num_images"] = len(self.image_names)
        if self.refuge is not None:
            out["refuge"] = self.refuge
        return out

    @property
    def protocols(self) -> list[str]:
        """The protocols measured: SAM's simulated ones (:data:`METRIC_PROTOCOLS`), or ``stored`` (the prompts
        stored with the data, ``evaluate_dataset(..., prompts="stored")``; then there is no interactive part)."""
        measured = self.objects[0].iou if self.objects else {}
        return [p for p in (*METRIC_PROTOCOLS, RECIPE, STORED) if p in measured]

    @property
    def interactive(self) -> bool:
        return bool(self.objects) and bool(self.objects[0].click_ious)

    def per_image_rows(self) -> list[dict[str, Any]]:
        """One row per evaluated image: name, number of objects, mean IoU/Dice per protocol, mean NoC
        (metric cells are None for an image without a usable object)."""
        by_image: dict[int, list[ObjectResult]] = {i: [] for i in range(len(self.image_names))}
        for o in self.objects:
            by_image[o.image_index].append(o)
        rows = []
        for i, name in enumerate(self.image_names):
            objs = by_image[i]
            row: dict[str, Any] = {"image": name, "num_objects": len(objs)}
            for p in self.protocols:
                row[f"{p}_iou"] = _mean([o.iou[p] for o in objs])
                row[f"{p}_dice"] = _mean([o.dice[p] for o in objs])
            for key in NOC_KEYS if self.interactive else ():
                row[key] = _mean([o.noc[key] for o in objs])
            rows.append(row)
        return rows

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``metrics.json`` (atomically), ``per_image.csv`` and ``best_worst.png`` into ``out_dir``
        (created if needed); returns their paths by name."""
        from samforge.evaluate.report import write_report

        return write_report(self, Path(out_dir))


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _miou_at_clicks(objects: Sequence[ObjectResult]) -> dict[str, float]:
    return miou_at_clicks([ClickTrace(ious=o.click_ious) for o in objects], CLICKS_REPORTED)


def image_predictor_for(model: Sam | SAM2Base | PredictorLike) -> PredictorLike:
    if isinstance(model, Sam):
        return SamPredictor(model)
    if isinstance(model, SAM2Base):
        return SAM2ImagePredictor(model)
    if callable(getattr(model, "set_image", None)) and callable(getattr(model, "predict", None)):
        return model
    raise TypeError(
        f"model must be a samforge Sam, a SAM2Base, or a predictor with set_image() and predict(), "
        f"got {type(model).__name__}"
    )


def evaluate_image(
    predictor: PredictorLike, sample: Sample, image_index: int, seed: int = 0, recipe: str | None = None
) -> tuple[list[ObjectResult], list[tuple[float, Case]], list[str]]:
    """Embed ``sample.image`` once and evaluate each of its objects (with ``recipe``, also on that training
    recipe's first prompt: protocol ``recipe``). Returns the object results, the
    (box IoU, case) pairs for the picture, and the objects skipped (empty masks) with the reason."""
    skipped = [f"{sample.name}: object {k} has an empty mask (not evaluated)"
               for k, gt in enumerate(sample.masks) if not gt.any()]
    keep = [k for k, gt in enumerate(sample.masks) if gt.any()]
    if not keep:
        return [], [], skipped
    predictor.set_image(sample.image)
    gts = [sample.masks[k] for k in keep]
    rngs = [np.random.default_rng([seed, image_index, k]) for k in keep]  # independent of order and max_images
    preds = run_protocols_many(predictor, gts, rngs, recipe)
    traces = click_loops(predictor, gts, max_clicks=MAX_CLICKS)
    results, cases = [], []
    for k, gt, pred, trace in zip(keep, gts, preds, traces):
        scores = {p: iou_dice(pred[p].mask, gt) for p in pred}
        results.append(ObjectResult(
            image_index=image_index,
            image_name=sample.name,
            object_index=k,
            area=int(gt.sum()),
            iou={p: s[0] for p, s in scores.items()},
            dice={p: s[1] for p, s in scores.items()},
            click_ious=trace.ious,
            noc={key: noc_of(trace.ious, t, MAX_CLICKS) for key, t in NOC_KEYS.items()},
        ))
        box_iou = scores["box"][0]
        cases.append((box_iou, Case(sample.image, gt, pred["box"].mask, pred["box"].prompt.box, box_iou,
                                    f"{sample.name} #{k}")))
    return results, cases, skipped


def evaluate_dataset(
    model: Sam | SAM2Base | PredictorLike,
    dataset: DatasetLike,
    seed: int = 0,
    max_images: int | None = None,
    progress: bool = True,
    prompts: str = "simulated",
    recipe: str | None = None,
) -> EvalResult:
    """Evaluate ``model`` (a Sam, a SAM 2 image model, or any predictor with SamPredictor's
    ``set_image``/``predict``) on the first ``max_images`` images of ``dataset`` (all by default). ``seed``
    fixes the random-point prompts. ``prompts="stored"`` evaluates each object on the prompt stored with the data
    (``Sample.prompts``) instead of SAM's simulated protocols; ``recipe`` (a training recipe's name, see
    :mod:`samforge.data.recipes`) adds protocol ``recipe``, the first prompt that recipe trains with. A model is
    put in eval mode for the run and given back in the mode it came in. A dataset with ``structures`` (object k
    of every sample is ``structures[k]``, e.g. REFUGE's disc and cup) is also scored per structure as Medical-SAM2
    does (``EvalResult.refuge``)."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if prompts not in PROMPT_SOURCES:
        raise ValueError(f"prompts: expected one of {PROMPT_SOURCES}, got {prompts!r}")
    if recipe is not None:
        if prompts == STORED:
            raise ValueError(f"recipe={recipe!r} adds a simulated first prompt; it does not apply to prompts=stored")
        recipe_settings(recipe)  # an unknown name lists the known recipes
    if prompts == STORED and not getattr(dataset, "has_stored_prompts", True):
        raise ValueError(f"prompts=stored, but the dataset stores no prompts ({type(dataset).__name__}): expected "
                         "annotations/<image>.json or dataset_info.json beside images/ and masks/")
    if max_images is not None and (not isinstance(max_images, int) or isinstance(max_images, bool) or max_images < 1):
        raise ValueError(f"max_images must be a positive int or None, got {max_images!r}")
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise TypeError(f"dataset must be sized and indexable (yielding Sample), got {type(dataset).__name__}")
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    if n == 0:
        raise ValueError("dataset is empty: nothing to evaluate")
    predictor = image_predictor_for(model)
    was_training = isinstance(model, (Sam, SAM2Base)) and model.training
    if isinstance(model, (Sam, SAM2Base)):
        model.eval()
    objects: list[ObjectResult] = []
    names: list[str] = []
    skipped: list[str] = []
    extremes = _Extremes(NUM_EXTREMES)
    structures = getattr(dataset, "structures", None)
    refuge = RefugeScores(structures) if structures else None
    try:
        for i in tqdm(range(n), desc="evaluate", unit="img", disable=not progress):
            sample = dataset[i]
            if not isinstance(sample, Sample):
                raise TypeError(f"dataset[{i}] must be a samforge Sample, got {type(sample).__name__}")
            if prompts == STORED:
                results, cases, bad = evaluate_image_stored(predictor, sample, i)
            else:
                results, cases, bad = evaluate_image(predictor, sample, i, seed, recipe)
            if refuge is not None and results:  # the image is still set on the predictor
                targets = sample.masks if sample.soft_masks is None else sample.soft_masks
                rng = np.random.default_rng([seed, i, 2**20])  # a stream apart from the objects' ([seed, i, k])
                refuge.add_sample(predictor, sample.masks, targets, rng)
            names.append(sample.name)
            objects.extend(results)
            skipped.extend(bad)
            for score, case in cases:
                extremes.add(score, case)
    finally:
        if was_training:
            model.train()
    if not objects:
        why = "no object has a stored prompt" if prompts == STORED else "every mask was empty"
        raise ValueError(f"no object to evaluate in {n} image(s): {why}")
    return EvalResult(objects, names, extremes.best(), extremes.worst(), skipped,
                      None if refuge is None else refuge.summary())
