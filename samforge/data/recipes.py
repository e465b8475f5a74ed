"""Named prompt recipes: how training simulates each object's first prompt and the interactive rounds after it.

A recipe is a preset of the prompt settings (``prompts.*`` of the training config); a user names one with
``prompts.recipe=NAME`` and can still override any of its keys (``prompts.correction_rounds=4``):

* ``default``: samforge's recipe until now: a jittered box (probability 0.5) or one point, then 2 correction
  clicks and 1 mask-only round at the end.
* ``sam``: the SAM paper's interactive training: a point or a box (noise std 10% of the side, at most 20 px), 8
  rounds each adding a click from the error region with the previous low-res logits as mask input, and 2 mask-only
  rounds, one at a random position among the click rounds and one at the end; one click asks for 3 masks, and the
  most confident of them (the highest predicted IoU) is the one fed back.
* ``medsam``: MedSAM's box-only recipe: the tight box moved outward by 0 to 5 px per side (uniform), no clicks.
* ``box_points``: a box plus K=5 positive points inside the object (LoRA fine-tuning repositories).
* ``seed000``: 1-2 positive points jittered by up to 2 px inside the object, a negative point outside it with
  probability 0.3, a box instead with probability 0.1; no further rounds.
* ``sam_fast``: ``sam``'s prompts and kinds of rounds at 1.2x the ``default`` step cost instead of 3.2x (the
  quickstart's recipe; benchmarks/README.md): 5 click rounds and 1 mask-only round at a random place among them;
  the loss (and the gradient) on the first round and 2 more (the last, and one drawn at random), the other rounds
  run without gradient only to place the next click; an object whose mask reaches IoU 0.9 leaves the later
  rounds; at most 8 objects of a batch go on to the rounds after the first.

Three keys make the rounds cheap without changing what a round is (all off in the other recipes):
``loss_rounds`` (rounds after the first that carry a loss; the rounds' losses only reach the weights through
their own decoder pass, since the previous logits are fed back detached, so leaving a round out of the loss is
running it without gradient), ``stop_iou`` and ``round_objects``. Two more say what a round builds on:
``interior_clicks`` (the share of correction clicks placed at the deepest point of the error, as the evaluation
places them, instead of uniformly in it) and ``next_mask`` (after a multimask round, the candidate whose logits go
on: ``lowest_loss``, the one trained on, or ``most_confident``, the highest predicted IoU, as the SAM paper feeds
back and as a tool picks for its user).

The functions here sample what a recipe says; ``settings`` is any object with the ``prompts.*`` attributes
(:class:`samforge.train.config.PromptConfig`).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from samforge.data.prompts import correction_click, jitter_box, mask_to_box, sample_negative_points, sample_points


class PromptSettings(Protocol):
    """The prompt settings a recipe fixes (the fields of ``PromptConfig`` but ``source`` and ``recipe``)."""

    box_prob: float
    box_noise: float
    box_max_noise: float
    box_jitter: str
    box_outward_max: float
    box_points: int
    min_points: int
    max_points: int
    point_jitter: float
    negative_prob: float
    correction_rounds: int
    mask_only_rounds: int
    mask_only_random: bool
    loss_rounds: int
    stop_iou: float
    round_objects: int
    interior_clicks: float
    next_mask: str


DEFAULT: dict[str, Any] = {
    "box_prob": 0.5,  # the first prompt is a box with this probability, else points
    "box_noise": 0.1,  # gaussian box jitter: std of each edge's move, fraction of the box side
    "box_max_noise": 20.0,  # gaussian box jitter: px cap on each edge's move
    "box_jitter": "gaussian",  # gaussian (SAM) | outward (MedSAM: each side moved out by 0..box_outward_max px)
    "box_outward_max": 5.0,  # outward box jitter: the largest move of a side, px
    "box_points": 0,  # positive points inside the object given with a box (box_points recipe: 5)
    "min_points": 1,  # a point prompt has between min_points and max_points positive points (uniform)
    "max_points": 1,
    "point_jitter": 0.0,  # px: each positive point moved by up to this much (uniform), kept inside the object
    "negative_prob": 0.0,  # a point prompt also gets a negative point outside the object with this probability
    "correction_rounds": 2,  # rounds adding a click from the error region, previous logits as mask input
    "mask_only_rounds": 1,  # rounds with the previous logits and no new click
    "mask_only_random": False,  # one mask-only round at a random place among the click rounds, the rest at the end
    "loss_rounds": -1,  # rounds after the first with a loss: the last + random others, the rest without grad; -1 all
    "stop_iou": 0.0,  # an object whose mask reaches this IoU leaves the later rounds (0: never)
    "round_objects": 0,  # at most this many objects (drawn at random) go on to the rounds after the first (0: all)
    "interior_clicks": 0.0,  # probability of a correction click at the error's deepest point (else uniform in it)
    "next_mask": "lowest_loss",  # the multimask candidate the next round gets: lowest_loss | most_confident
}

RECIPES: dict[str, dict[str, Any]] = {
    "default": dict(DEFAULT),
    "sam": {**DEFAULT, "correction_rounds": 8, "mask_only_rounds": 2, "mask_only_random": True,
            "next_mask": "most_confident"},
    "medsam": {**DEFAULT, "box_prob": 1.0, "box_jitter": "outward", "box_outward_max": 5.0,
               "correction_rounds": 0, "mask_only_rounds": 0},
    "box_points": {**DEFAULT, "box_prob": 1.0, "box_points": 5, "correction_rounds": 0, "mask_only_rounds": 0},
    "seed000": {**DEFAULT, "box_prob": 0.1, "min_points": 1, "max_points": 2, "point_jitter": 2.0,
                "negative_prob": 0.3, "correction_rounds": 0, "mask_only_rounds": 0},
    "sam_fast": {**DEFAULT, "correction_rounds": 5, "mask_only_rounds": 1, "mask_only_random": True,
                 "loss_rounds": 2, "stop_iou": 0.9, "round_objects": 8, "next_mask": "most_confident"},
}
BOX_JITTERS = ("gaussian", "outward")
NEXT_MASKS = ("lowest_loss", "most_confident")


def recipe_settings(name: str) -> dict[str, Any]:
    """The prompt settings of recipe ``name`` (a copy); ``ValueError`` listing the known recipes otherwise."""
    if not isinstance(name, str) or name not in RECIPES:
        raise ValueError(f"prompts.recipe: unknown recipe {name!r}; known recipes: {', '.join(RECIPES)}")
    return dict(RECIPES[name])


def outward_box(box: np.ndarray, image_hw: tuple[int, int], rng: np.random.Generator, max_px: float) -> np.ndarray:
    """MedSAM's box perturbation: each side of ``box`` (XYXY) moved outward by a whole number of pixels drawn
    uniformly from 0..``max_px``, clipped to the image."""
    shift = rng.integers(0, int(max_px) + 1, 4).astype(np.float64)
    out = np.asarray(box, dtype=np.float64) + shift * np.array([-1.0, -1.0, 1.0, 1.0])
    out[[0, 2]] = np.clip(out[[0, 2]], 0, image_hw[1] - 1)
    out[[1, 3]] = np.clip(out[[1, 3]], 0, image_hw[0] - 1)
    return out


def jitter_inside(points: np.ndarray, mask: np.ndarray, rng: np.random.Generator, max_px: float) -> np.ndarray:
    """Each point (x, y) moved by a whole number of pixels in [-max_px, max_px] per axis; a move that would leave
    ``mask`` (or the image) is not made, so every point stays inside the object."""
    moved = np.asarray(points, dtype=np.float64).copy()
    steps = rng.integers(-int(max_px), int(max_px) + 1, moved.shape)
    h, w = mask.shape
    for i, (x, y) in enumerate(moved + steps):
        if 0 <= x < w and 0 <= y < h and mask[int(y), int(x)]:
            moved[i] = (x, y)
    return moved


def first_prompts(gts: np.ndarray, settings: PromptSettings, rng: np.random.Generator,
                  image_hw: list[tuple[int, int]]) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Each object's first prompt as ``settings`` say, for the N x H x W bool masks ``gts`` (``image_hw[n]``: the
    unpadded image size of object ``n``). One draw decides box or points for all N objects (so they decode
    together). Returns point coords N x P x 2 and labels N x P (objects with fewer points padded with label -1,
    SAM's "not a point"), and boxes N x 4; unused parts None."""
    if len(image_hw) != len(gts):
        raise ValueError(f"image_hw: expected one size per object ({len(gts)}), got {len(image_hw)}")
    if settings.box_jitter not in BOX_JITTERS:
        raise ValueError(f"prompts.box_jitter must be one of {BOX_JITTERS}, got {settings.box_jitter!r}")
    if rng.random() < settings.box_prob:
        boxes = np.stack([
            outward_box(mask_to_box(gt), hw, rng, settings.box_outward_max) if settings.box_jitter == "outward"
            else jitter_box(mask_to_box(gt), hw, rng, settings.box_noise, settings.box_max_noise)
            for gt, hw in zip(gts, image_hw)
        ])
        if settings.box_points <= 0:
            return None, None, boxes
        coords = np.stack([sample_points(gt, settings.box_points, rng) for gt in gts])
        return coords, np.ones(coords.shape[:2], dtype=np.int64), boxes
    per_object = []
    for gt in gts:
        n = settings.min_points
        if settings.max_points > settings.min_points:
            n = int(rng.integers(settings.min_points, settings.max_points + 1))
        xy = sample_points(gt, n, rng)
        if settings.point_jitter > 0:
            xy = jitter_inside(xy, gt, rng, settings.point_jitter)
        labels = np.ones(n, dtype=np.int64)
        if settings.negative_prob > 0 and rng.random() < settings.negative_prob:
            xy = np.concatenate([xy, sample_negative_points(gt, 1, rng)])
            labels = np.concatenate([labels, np.zeros(1, dtype=np.int64)])
        per_object.append((xy, labels))
    most = max(len(labels) for _, labels in per_object)
    coords = np.zeros((len(gts), most, 2), dtype=np.float64)
    labels = np.full((len(gts), most), -1, dtype=np.int64)
    for n, (xy, lab) in enumerate(per_object):
        coords[n, : len(xy)], labels[n, : len(lab)] = xy, lab
    return coords, labels, None


def correction_clicks(preds: np.ndarray, gts: np.ndarray, settings: PromptSettings,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One correction click per object for the N x H x W bool masks ``preds`` against ``gts``: coords N x 1 x 2 and
    labels N x 1 (1 in a false negative, 0 in a false positive). Each click is, with probability
    ``settings.interior_clicks``, the deepest point of the deepest error region (the evaluation's click; RITM's
    iterative training), else drawn uniformly from the larger error region (SAM's training); with
    ``interior_clicks`` 0 no extra number is drawn from ``rng``."""
    if preds.shape != gts.shape or preds.ndim != 3:
        raise ValueError(f"preds and gts: expected two N x H x W masks of one shape, got {preds.shape} and {gts.shape}")
    p = settings.interior_clicks
    clicks = [correction_click(pred, gt, None if p > 0 and rng.random() < p else rng) for pred, gt in zip(preds, gts)]
    return np.stack([c[0] for c in clicks])[:, None], np.array([c[1] for c in clicks], dtype=np.int64)[:, None]


def round_schedule(settings: PromptSettings, rng: np.random.Generator) -> list[bool]:
    """The decoding rounds of one training step, True for a round that adds a click: the first prompt, then
    ``correction_rounds`` click rounds and ``mask_only_rounds`` mask-only ones, at the end; with
    ``mask_only_random`` (and at least one click round) one of the latter goes just before a click round drawn
    at random (the SAM paper: among the iterative rounds), the rest stay at the end."""
    rounds = [True] * (1 + settings.correction_rounds)
    rest = settings.mask_only_rounds
    if settings.mask_only_random and rest > 0 and settings.correction_rounds > 0:
        rounds.insert(int(rng.integers(1, len(rounds))), False)  # before one of the click rounds
        rest -= 1
    return rounds + [False] * rest


def loss_rounds(settings: PromptSettings, rounds: list[bool], rng: np.random.Generator) -> list[bool]:
    """Which of ``rounds`` (:func:`round_schedule`) carry a loss: all of them when ``settings.loss_rounds < 0``
    (no draw from ``rng``); else the first, the last and ``loss_rounds - 1`` others drawn at random (without
    replacement) among the rounds after the first."""
    if settings.loss_rounds < 0 or settings.loss_rounds >= len(rounds) - 1:
        return [True] * len(rounds)
    chosen = [True] + [False] * (len(rounds) - 1)
    if settings.loss_rounds > 0:
        chosen[-1] = True
        for r in rng.choice(np.arange(1, len(rounds) - 1), settings.loss_rounds - 1, replace=False):
            chosen[int(r)] = True
    return chosen


def round_survivors(ious: np.ndarray, settings: PromptSettings, first_round: bool,
                    rng: np.random.Generator) -> np.ndarray:
    """The objects (indices into ``ious``, in order) that go on to the next round: those whose mask IoU is below
    ``settings.stop_iou`` (all when it is 0); after the first round, at most ``settings.round_objects`` of them
    (drawn at random, only when there are more; 0: all)."""
    ious = np.asarray(ious, dtype=np.float64)
    if ious.ndim != 1:
        raise ValueError(f"ious: expected one IoU per object (1-D), got shape {ious.shape}")
    keep = np.arange(len(ious))
    if settings.stop_iou > 0:
        keep = keep[ious < settings.stop_iou]
    if first_round and 0 < settings.round_objects < len(keep):
        keep = np.sort(rng.choice(keep, settings.round_objects, replace=False))
    return keep
