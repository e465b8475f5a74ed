"""REFUGE metrics as Medical-SAM2 reports them: Dice and IoU per structure (optic disc, optic cup), plain and
averaged over thresholds.

Medical-SAM2 (``func_2d/function.py`` ``validation_sam``, ``func_2d/utils.py`` ``eval_seg``) prompts each
structure with one click, decodes a single mask, binarises its logits at 0.5, then for each threshold ``t`` of
(0.1, 0.3, 0.5, 0.7, 0.9) binarises prediction and target at ``> t`` and takes, per image,

* IoU  = (|P & T| + 1e-6) / (|P | T| + 1e-6),
* Dice = (2 |P & T| + 1e-4) / (|P| + |T| + 1e-4),

averaged over the images, then over the thresholds (``*_thr_avg`` here). With binary targets the thresholds
change nothing; with a soft target (the raters' mean, ``rater=mean``) each threshold is a different level of
rater agreement. The plain ``dice`` / ``iou`` are samforge's (:func:`~samforge.evaluate.metrics.iou_dice`,
no smoothing) of the binary prediction against the target's majority (>= 0.5), averaged over images.

Its click (``random_click``) is a uniformly drawn pixel among those where the raters agree most (the maximum of
the target), labelled foreground.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from samforge.evaluate.metrics import iou_dice

REFUGE_THRESHOLDS = (0.1, 0.3, 0.5, 0.7, 0.9)  # Medical-SAM2 validation_sam
IOU_SMOOTH = 1e-6  # Medical-SAM2 utils.iou
DICE_EPS = 1e-4  # Medical-SAM2 utils.DiceCoeff
LOGIT_THRESHOLD = 0.5  # Medical-SAM2 binarises the predicted logits at 0.5 before eval_seg
PROMPT = "one click where the raters agree most, one mask, logits > 0.5 (Medical-SAM2)"


def _as_maps(x: np.ndarray, name: str) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.ndim not in (2, 3) or not (x.dtype == bool or x.dtype.kind == "f"):
        raise ValueError(f"{name}: expected an HxW or BxHxW bool or float array (values in [0, 1]), got "
                         f"{type(x).__name__} {getattr(x, 'shape', '')} {getattr(x, 'dtype', '')}")
    x = x[None] if x.ndim == 2 else x
    if x.dtype.kind == "f" and x.size and not (np.nanmin(x) >= 0.0 and np.nanmax(x) <= 1.0):
        raise ValueError(f"{name}: float values must lie in [0, 1], got {np.nanmin(x)}..{np.nanmax(x)}")
    return x.astype(np.float32)


def threshold_iou_dice(pred: np.ndarray, target: np.ndarray,
                       thresholds: Sequence[float] = REFUGE_THRESHOLDS) -> tuple[float, float]:
    """(IoU, Dice) of one structure as Medical-SAM2's ``eval_seg`` computes them (see the module docstring):
    ``pred`` and ``target`` HxW or BxHxW, bool or float in [0, 1]; means over the B images, then over the
    thresholds."""
    p, t = _as_maps(pred, "pred"), _as_maps(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred and target must have the same shape, got {p.shape} and {t.shape}")
    if len(thresholds) == 0 or not all(0.0 <= float(th) < 1.0 for th in thresholds):
        raise ValueError(f"thresholds: expected one or more values in [0, 1), got {thresholds!r}")
    ious, dices = [], []
    for th in thresholds:
        pb, tb = p > th, t > th
        inter = (pb & tb).sum((1, 2), dtype=np.float64)
        union = (pb | tb).sum((1, 2), dtype=np.float64)
        total = pb.sum((1, 2), dtype=np.float64) + tb.sum((1, 2), dtype=np.float64)
        ious.append(float(np.mean((inter + IOU_SMOOTH) / (union + IOU_SMOOTH))))
        dices.append(float(np.mean((2 * inter + DICE_EPS) / (total + DICE_EPS))))
    return float(np.mean(ious)), float(np.mean(dices))


def agreement_click(target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Medical-SAM2's ``random_click``: a pixel drawn uniformly among those where ``target`` (HxW, bool or the
    raters' mean) is at its maximum, as a 1 x 2 (x, y) point."""
    t = _as_maps(target, "target")[0]
    if not t.max() > 0:
        raise ValueError(f"target of shape {t.shape} is empty: no pixel to click on")
    ys, xs = np.nonzero(t == t.max())
    k = int(rng.integers(len(ys)))
    return np.array([[xs[k], ys[k]]], dtype=np.float64)


class RefugeScores:
    """Per-structure scores gathered image by image; :meth:`summary` gives ``metrics.json``'s ``refuge`` block."""

    def __init__(self, structures: Sequence[str], thresholds: Sequence[float] = REFUGE_THRESHOLDS) -> None:
        if not structures or len(set(structures)) != len(structures):
            raise ValueError(f"structures: expected distinct names, e.g. ('disc', 'cup'), got {structures!r}")
        self.structures = tuple(structures)
        self.thresholds = tuple(float(t) for t in thresholds)
        self._scores: dict[str, list[tuple[float, float, float, float]]] = {s: [] for s in self.structures}

    def add(self, structure: str, pred: np.ndarray, target: np.ndarray) -> None:
        """Score one image's ``pred`` (HxW bool) of ``structure`` against its ``target`` (HxW bool, or soft)."""
        if structure not in self._scores:
            raise ValueError(f"structure: expected one of {self.structures}, got {structure!r}")
        if not (isinstance(pred, np.ndarray) and pred.dtype == bool and pred.ndim == 2):
            raise ValueError(f"pred: expected an HxW bool array, got {getattr(pred, 'shape', '')} "
                             f"{getattr(pred, 'dtype', type(pred).__name__)}")
        t = _as_maps(target, "target")[0]
        iou, dice = iou_dice(pred, t >= 0.5)
        iou_avg, dice_avg = threshold_iou_dice(pred, t, self.thresholds)
        self._scores[structure].append((dice, iou, dice_avg, iou_avg))

    def add_sample(self, predictor, masks: np.ndarray, targets: np.ndarray, rng: np.random.Generator) -> None:
        """Prompt each structure on the predictor's current image as Medical-SAM2 does (one click where the raters
        agree most, a single mask, logits > 0.5) and score it. ``masks`` K x H x W bool, ``targets`` K x H x W
        (soft or bool), object k being ``structures[k]``."""
        if len(masks) != len(self.structures) or len(targets) != len(masks):
            raise ValueError(f"expected one mask and target per structure {self.structures}, got {len(masks)} "
                             f"masks and {len(targets)} targets")
        for structure, target in zip(self.structures, targets):
            logits, _, _ = predictor.predict(point_coords=agreement_click(target, rng), point_labels=np.ones(1),
                                             multimask_output=False, return_logits=True)
            self.add(structure, np.asarray(logits[0]) > LOGIT_THRESHOLD, target)

    def summary(self) -> dict:
        """``{structure: {dice, iou, dice_thr_avg, iou_thr_avg}, thresholds, prompt, num_images}``, means over
        the images scored."""
        counts = {len(v) for v in self._scores.values()}
        if counts == {0}:
            raise ValueError("no image was scored: REFUGE metrics need at least one image")
        out: dict = {}
        for s, rows in self._scores.items():
            a = np.asarray(rows, dtype=np.float64)
            out[s] = {k: float(a[:, j].mean()) for j, k in enumerate(("dice", "iou", "dice_thr_avg", "iou_thr_avg"))}
        out["thresholds"] = list(self.thresholds)
        out["prompt"] = PROMPT
        out["num_images"] = max(counts)
        return out


def format_refuge_table(block: dict) -> str:
    """The ``refuge`` block of ``metrics.json`` as a short table."""
    names = [k for k, v in block.items() if isinstance(v, dict)]
    lines = [f"REFUGE ({block['num_images']} images; {block['prompt']})",
             f"{'structure':<10}{'Dice':>8}{'IoU':>8}{'Dice@thr':>10}{'IoU@thr':>9}"]
    for s in names:
        v = block[s]
        lines.append(f"{s:<10}{v['dice']:>8.4f}{v['iou']:>8.4f}{v['dice_thr_avg']:>10.4f}{v['iou_thr_avg']:>9.4f}")
    return "\n".join(lines)
