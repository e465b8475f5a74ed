"""The data engine with a simulated person: rounds of annotation on data with ground truth, the model retrained
between rounds, each round measured (``samforge engine simulate``).

Round 0 is the base model. Round ``r`` (1..R) takes the next ``K`` images of the pool (the data minus its
held-out images) and labels every object with the current model (round ``r - 1``'s):

* assisted stage: the simulated annotator clicks each object (:func:`annotate_objects`, the NoC rule) and the
  mask it ends with is the object's label; an object still below IoU 0.85 after 20 clicks is finished by hand
  (as SAM's annotators did with brush and eraser): its label is the true mask;
* semi-automatic stage (from round ``semi_from``): the automatic masks that pass the strict proposal filter
  (:func:`filter_proposals`) are judged (:func:`judge_proposals`); accepted ones are labels without a click, the
  objects no proposal matched are clicked.

Then the model is fine-tuned on the labels so far (:func:`samforge.engine.retrain.run_retrain` in ``retrain_mode``: the
mask decoder by default, else LoRA adapters plus the decoder or every weight; the interactive ``retrain_recipe``, a
share of the labelled images held out of training to keep the best weights) into ``WORK/rounds/<r>/model.pt``, and the
round's metrics complete it (:mod:`samforge.engine.rounds`): clicks per object, objects finished by hand, share of
objects from accepted proposals, seconds of each part, and, measured on the held-out images (which are never labelled),
the model's mIoU (box, centre point, after k clicks, NoC at 0.85) and the automatic stage's pseudo-labels (strict
filters) scored against the truth (:mod:`samforge.engine.pseudo_label_quality`). Round 0 measures the base the same way.
SAM and SAM 2 models alike: a SAM 2 model is clicked through its image predictor, proposes with its automatic mask
generator and retrains with its own training step (the SAM v1 ``retrain_recipe`` and the embedding cache do not apply to
it). Labels are kept per image in ``WORK/labels/``; ``WORK/rounds.json`` and ``WORK/rounds.png`` sum the rounds up. A
rerun continues after the last complete round (with the same settings, ``WORK/simulate.json``).
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from samforge.data.sample import Sample
from samforge.data.recipes import recipe_settings
from samforge.engine.model_record import sam2_model_record
from samforge.engine.proposals import PRED_IOU_THRESH, STABILITY_SCORE_THRESH, check_threshold, filter_proposals
from samforge.engine.pseudo_label_quality import pseudo_label_scores
from samforge.engine.retrain import RETRAIN_MODES, run_retrain
from samforge.engine.round_model import load_model_ref
from samforge.engine.rounds import ModelRef, current_round, finish_round, list_rounds, start_round
from samforge.engine.simulated_annotator import ACCEPT_IOU, TARGET_IOU, annotate_objects, judge_proposals
from samforge.evaluate.evaluator import evaluate_dataset, image_predictor_for
from samforge.models.checkpoint import read_checkpoint
from samforge.models.build import resolve_sam_config
from samforge.models.sam import Sam
from samforge.models.sam2 import SAM2_CONFIGS, SAM2Base
from samforge.predict.amg_outputs import segmentation_to_mask
from samforge.predict.automatic_mask_generator import SamAutomaticMaskGenerator
from samforge.predict.predictor import SamPredictor
from samforge.predict.sam2_automatic_mask_generator import SAM2AutomaticMaskGenerator
from samforge.predict.sam2_predictor import SAM2ImagePredictor
from samforge.train.checkpoint import save_training_checkpoint
from samforge.utils.atomic import atomic_write_bytes

SETTINGS_FILE = "simulate.json"
ROUND_CHECKPOINT = "model.pt"


@dataclass(frozen=True)
class SimulateSettings:
    """What a simulation run is: ``rounds`` rounds of ``images_per_round`` images, the last ``held_out`` images of
    the data kept for validation, the semi-automatic stage from round ``semi_from``, ``retrain_steps`` steps of a
    ``retrain_mode`` fine-tune (decoder, lora, full) at ``lr`` (warm-up, cosine decay) between rounds with the prompt
    recipe ``retrain_recipe``, every
    ``retrain_val_every`` steps validated on ``retrain_val_share`` of the labelled images (kept out of training),
    automatic masks from a ``points_per_side`` grid.

    The quality bar of the simulated person and the filters: an object is clicked until IoU ``target_iou`` (else
    finished by hand), a proposal is accepted at IoU ``accept_iou`` with a true object, and proposals (and the
    automatic stage's pseudo-labels) are the automatic masks with predicted IoU >= ``proposal_pred_iou`` and
    stability >= ``proposal_stability``. The defaults are the SAM paper's data engine (0.85, 0.85, 0.9, 0.95); a
    lower bar is what a model too weak to reach it can be measured at (coarse labels, a small model on a CPU)."""

    rounds: int
    images_per_round: int
    held_out: int = 4
    semi_from: int = 2
    retrain_steps: int = 80
    lr: float = 1e-4
    points_per_side: int = 16
    seed: int = 0
    retrain_recipe: str = "sam_fast"
    retrain_val_share: float = 0.25
    retrain_val_every: int = 20
    retrain_mode: str = "decoder"
    target_iou: float = TARGET_IOU
    accept_iou: float = ACCEPT_IOU
    proposal_pred_iou: float = PRED_IOU_THRESH
    proposal_stability: float = STABILITY_SCORE_THRESH

    def __post_init__(self) -> None:
        for name in ("target_iou", "accept_iou", "proposal_pred_iou", "proposal_stability"):
            check_threshold(getattr(self, name), name)
        for name, low in (("rounds", 1), ("images_per_round", 1), ("held_out", 1), ("semi_from", 1),
                          ("retrain_steps", 1), ("points_per_side", 1), ("seed", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if not isinstance(self.lr, (int, float)) or isinstance(self.lr, bool) or not self.lr > 0:
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        recipe_settings(self.retrain_recipe)  # an unknown name lists the known recipes
        if self.retrain_mode not in RETRAIN_MODES:
            raise ValueError(f"retrain_mode must be one of {', '.join(RETRAIN_MODES)}, got {self.retrain_mode!r}")
        share = self.retrain_val_share
        if not isinstance(share, (int, float)) or isinstance(share, bool) or not 0 <= share < 1:
            raise ValueError(f"retrain_val_share must be a number in [0, 1), got {share!r}")
        if not isinstance(self.retrain_val_every, int) or isinstance(self.retrain_val_every, bool) \
                or self.retrain_val_every < 1:
            raise ValueError(f"retrain_val_every must be an int >= 1, got {self.retrain_val_every!r}")


@dataclass(frozen=True)
class ImageLabels:
    """One image labelled by the simulated person: a mask per object (in the objects' order), the clicks each
    object cost (0 for one taken from an accepted proposal), how many proposals were shown, and how many clicked
    objects never reached the target IoU and were finished by hand (their label is the true mask, as a person's
    brush would make it)."""

    masks: np.ndarray
    clicks: list[int]
    from_proposals: int
    proposals_shown: int
    hand_finished: int = 0


class _Subset:
    """Samples ``indices`` of a dataset, as a dataset."""

    def __init__(self, dataset: Any, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Sample:
        return self.dataset[self.indices[i]]


def label_image(predictor: SamPredictor | SAM2ImagePredictor, sample: Sample,
                proposals: Sequence[dict] | None = None, *,
                target_iou: float = TARGET_IOU, accept_iou: float = ACCEPT_IOU,
                pred_iou_thresh: float = PRED_IOU_THRESH,
                stability_score_thresh: float = STABILITY_SCORE_THRESH) -> ImageLabels:
    """Label ``sample``'s objects on ``predictor`` (its image set to ``sample.image``): with ``proposals``
    (automatic-mask records, semi-automatic stage) those passing :func:`filter_proposals` (``pred_iou_thresh``,
    ``stability_score_thresh``) are judged (accepted at IoU ``accept_iou`` with a true object) and the accepted ones
    become their object's label; every other object is clicked (:func:`annotate_objects`), its last mask the label
    where it reached ``target_iou``, else the true mask (finished by hand)."""
    if not isinstance(sample, Sample):
        raise TypeError(f"sample must be a Sample, got {type(sample).__name__}")
    gts = [m for m in sample.masks]
    labels: list[np.ndarray | None] = [None] * len(gts)
    clicks = [0] * len(gts)
    shown = 0
    if proposals is not None:
        kept = filter_proposals(list(proposals), pred_iou_thresh=pred_iou_thresh,
                                stability_score_thresh=stability_score_thresh)
        shown = len(kept)
        for record, verdict in zip(kept, judge_proposals(kept, gts, accept_iou)):
            if verdict.accepted:
                labels[verdict.object_index] = segmentation_to_mask(record["segmentation"], "proposal")
    todo = [k for k, m in enumerate(labels) if m is None]
    traces = annotate_objects(predictor, [gts[k] for k in todo], target_iou) if todo else []
    hand = 0
    for k, trace in zip(todo, traces):
        reached = trace.ious[-1] >= target_iou
        labels[k] = trace.last_mask.astype(bool) if reached else gts[k].copy()
        clicks[k] = len(trace.ious)
        hand += not reached
    return ImageLabels(np.stack(labels), clicks, len(gts) - len(todo), shown, hand)


def _open_data(data: Any, settings: SimulateSettings) -> tuple[list[int], list[int]]:
    """(pool indices, held-out indices) of ``data``; checks it is big enough and has ground truth."""
    if not (hasattr(data, "__len__") and hasattr(data, "__getitem__")):
        raise TypeError(f"data must be a dataset (sized, indexable, yielding Sample), got {type(data).__name__}")
    need = settings.rounds * settings.images_per_round + settings.held_out
    if len(data) < need:
        raise ValueError(f"data has {len(data)} images, but {settings.rounds} rounds x {settings.images_per_round} "
                         f"images + {settings.held_out} held out need {need}")
    first = data[0]
    if not isinstance(first, Sample) or first.masks.ndim != 3 or len(first.masks) == 0:
        raise ValueError(f"data must have ground-truth masks (the simulated annotator clicks against them), got "
                         f"{getattr(first, 'name', type(first).__name__)} with no object mask")
    n = len(data)
    return list(range(n - settings.held_out)), list(range(n - settings.held_out, n))


def _model_record(base: ModelRef) -> dict:
    """What a round checkpoint records: the base checkpoint's ``sam_config`` (else the configuration of
    ``base.model_type``) to rebuild the model, and its training ``config`` (the retrain keeps its objective)."""
    extras = read_checkpoint(base.checkpoint)[1] if base.checkpoint is not None else {}
    record = {k: extras[k] for k in ("sam_config", "config") if isinstance(extras.get(k), dict)}
    if "sam_config" not in record and base.model_type in SAM2_CONFIGS:  # rebuilt from its packaged config
        record["sam_config"] = {"family": "sam2", "config_name": base.model_type, "overrides": []}
    elif "sam_config" not in record and base.model_type is not None:
        record["sam_config"] = resolve_sam_config(base.model_type)[1].to_dict()
    return record


def _check_settings(work: Path, spec: str, base: ModelRef, settings: SimulateSettings) -> None:
    """Record the run's settings in ``work``; a rerun must have the same ones, but for ``rounds`` (more rounds
    continue the run)."""
    wanted = json.loads(json.dumps({"data": spec, "base": base.to_json(), **settings.__dict__}))
    path = work / SETTINGS_FILE
    if path.is_file():
        found = json.loads(path.read_text(encoding="utf-8"))
        found.setdefault("retrain_mode", "decoder")  # a run recorded before the setting existed retrained the decoder
        for name in ("target_iou", "accept_iou", "proposal_pred_iou", "proposal_stability"):
            found.setdefault(name, SimulateSettings.__dataclass_fields__[name].default)  # the paper's bar then
        diff = sorted(k for k in set(found) | set(wanted) if k != "rounds" and found.get(k) != wanted.get(k))
        if diff:
            raise ValueError(f"{work} holds a simulation with other settings ({', '.join(diff)} differ: see {path}); "
                             "use another --out, or the same settings to continue it")
        if found == wanted:
            return
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(wanted, indent=2).encode())


def _labels_path(work: Path, index: int) -> Path:
    return work / "labels" / f"{index:06d}.npz"


def _save_labels(work: Path, index: int, masks: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, masks=masks)
    _labels_path(work, index).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(_labels_path(work, index), buf.getvalue())


def _labelled_samples(work: Path, data: Any, indices: Sequence[int]) -> list[Sample]:
    out = []
    for i in indices:
        sample = data[i]
        with np.load(_labels_path(work, i)) as f:
            masks = f["masks"]
        keep = masks.reshape(len(masks), -1).any(1)  # a label mask that came out empty is no training target
        if keep.any():
            out.append(Sample(sample.image, masks[keep], name=sample.name))
    return out


def heldout_miou(model: Sam | SAM2Base, data: Any, indices: Sequence[int], seed: int = 0) -> dict[str, Any]:
    """The model's mIoU on the held-out images (evaluation protocols ``box`` and ``center_point``, mean over
    objects), its mIoU after k clicks of the NoC protocol (``heldout_miou_at_clicks``, keyed by k) and its NoC at
    0.85."""
    metrics = evaluate_dataset(model, _Subset(data, indices), seed=seed, progress=False).to_metrics_dict()
    return {"heldout_miou_box": metrics["box"]["miou"], "heldout_miou_point": metrics["center_point"]["miou"],
            "heldout_miou_at_clicks": metrics["interactive"]["miou_at_clicks"],
            "heldout_noc85": metrics["interactive"]["noc85"]}


def automatic_stage_quality(model: Sam | SAM2Base, data: Any, indices: Sequence[int], points_per_side: int,
                            pred_iou_thresh: float = PRED_IOU_THRESH,
                            stability_score_thresh: float = STABILITY_SCORE_THRESH) -> dict[str, Any]:
    """The automatic stage on images ``indices`` of ``data`` (a ``points_per_side`` grid, the filters: by default
    the strict ones, predicted IoU >= 0.9, stability >= 0.95): its pseudo-labels, best predicted IoU first, scored
    against the true masks (:func:`pseudo_label_scores`: precision and recall at IoU 0.5 and 0.75), with
    ``per_image`` the mean number of pseudo-labels an image got."""
    generator = _mask_generator(model)(model, points_per_side=points_per_side, pred_iou_thresh=pred_iou_thresh,
                                       stability_score_thresh=stability_score_thresh)
    pairs = []
    for i in indices:
        sample = data[i]
        records = sorted(generator.generate(sample.image), key=lambda r: -r["predicted_iou"])
        pairs.append(([np.asarray(r["segmentation"], dtype=bool) for r in records], list(sample.masks)))
    scores = pseudo_label_scores(pairs)
    return {**scores, "per_image": scores["pseudo_labels"] / max(len(pairs), 1)}


def heldout_clicks(model: Sam | SAM2Base, data: Any, indices: Sequence[int], target_iou: float) -> float:
    """Clicks per object the simulated person needs on images ``indices`` of ``data`` with ``model`` (the NoC rule
    to ``target_iou``, 20 at most): the labelling cost of the same unseen images at every round, where a round's
    own ``clicks_per_object`` is measured on that round's new images."""
    predictor = image_predictor_for(model)
    counts: list[int] = []
    for i in indices:
        sample = data[i]
        predictor.set_image(sample.image)
        counts += [len(trace.ious) for trace in annotate_objects(predictor, list(sample.masks), target_iou)]
    return float(np.mean(counts)) if counts else 0.0


def _mask_generator(model: Sam | SAM2Base) -> type:
    """The automatic mask generator class of ``model``'s family."""
    return SAM2AutomaticMaskGenerator if isinstance(model, SAM2Base) else SamAutomaticMaskGenerator


def _measure(model: Sam | SAM2Base, data: Any, held: Sequence[int], settings: "SimulateSettings") -> dict[str, Any]:
    """A round's measurements on the held-out images: :func:`heldout_miou`, :func:`heldout_clicks` at the run's
    target IoU, the automatic stage's quality (``auto``) and the seconds each took."""
    t0 = time.perf_counter()
    metrics = heldout_miou(model, data, held, settings.seed)
    metrics["heldout_clicks_per_object"] = heldout_clicks(model, data, held, settings.target_iou)
    metrics["eval_seconds"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    metrics["auto"] = automatic_stage_quality(model, data, held, settings.points_per_side,
                                              settings.proposal_pred_iou, settings.proposal_stability)
    metrics["auto_seconds"] = round(time.perf_counter() - t0, 3)
    return metrics


def _split_labelled(samples: list[Sample], share: float) -> tuple[list[Sample], list[Sample]]:
    """(training, validation) images of a retrain: every ``1 / share``-th labelled image validates (at least one
    when there are two or more and ``share > 0``), the rest train."""
    if share <= 0 or len(samples) < 2:
        return samples, []
    n_val = min(max(1, round(share * len(samples))), len(samples) - 1)
    val_at = set(np.linspace(len(samples) - 1, 0, n_val).round().astype(int).tolist())
    return ([s for i, s in enumerate(samples) if i not in val_at], [s for i, s in enumerate(samples) if i in val_at])


def simulate(data: Any, spec: str, work: str | Path, base: ModelRef, settings: SimulateSettings,
             device: str = "cpu", log=print) -> list[dict]:
    """Run (or continue) the simulation of ``settings`` on ``data`` (named ``spec``) from ``base`` in ``work``;
    returns each round's metrics (round 0 first) and writes ``rounds.json`` / ``rounds.png``."""
    if not isinstance(base, ModelRef):
        raise TypeError(f"base must be a ModelRef, got {type(base).__name__}")
    if not isinstance(settings, SimulateSettings):
        raise TypeError(f"settings must be SimulateSettings, got {type(settings).__name__}")
    pool, held = _open_data(data, settings)
    work = Path(work)
    _check_settings(work, spec, base, settings)
    record = _model_record(base)
    if current_round(work) is None:
        start_round(work, base, [])
        model = load_model_ref(base, device, settings.seed)
        metrics = {"round": 0, "stage": "base", **_measure(model, data, held, settings)}
        finish_round(work, 0, metrics)
        log(f"round 0 (base): held-out mIoU box {metrics['heldout_miou_box']:.3f}, NoC@85 "
            f"{metrics['heldout_noc85']:.2f}, {metrics['heldout_clicks_per_object']:.2f} clicks/object to IoU "
            f"{settings.target_iou:g}; {_auto_line(metrics['auto'])}")
    while (cur := current_round(work)).index < settings.rounds:
        r = cur.index + 1
        images = pool[: r * settings.images_per_round]
        names = [data[i].name for i in images]
        start_round(work, ModelRef(base.model_type, ROUND_CHECKPOINT), names)
        model = load_model_ref(cur.model.resolved(cur.folder), device, settings.seed)
        sam2 = isinstance(model, SAM2Base)  # its own predictor, mask generator and training step (no SAM recipe)
        if sam2:
            record = {**record, "sam_config": sam2_model_record(model)}  # rebuilt exactly, overrides included
        stage = "semi" if r >= settings.semi_from else "assisted"
        predictor = image_predictor_for(model)
        generator = _mask_generator(model)(model, points_per_side=settings.points_per_side) if stage == "semi" \
            else None
        new = images[(r - 1) * settings.images_per_round:]
        clicks, accepted, shown, hand, t0 = [], 0, 0, 0, time.perf_counter()
        for i in new:
            sample = data[i]
            predictor.set_image(sample.image)
            proposals = generator.generate(sample.image) if generator is not None else None
            labels = label_image(predictor, sample, proposals, target_iou=settings.target_iou,
                                 accept_iou=settings.accept_iou, pred_iou_thresh=settings.proposal_pred_iou,
                                 stability_score_thresh=settings.proposal_stability)
            _save_labels(work, i, labels.masks)
            clicks += labels.clicks
            accepted += labels.from_proposals
            shown += labels.proposals_shown
            hand += labels.hand_finished
        annotate_s = time.perf_counter() - t0
        train, val = _split_labelled(_labelled_samples(work, data, images), settings.retrain_val_share)
        cache = work / "embedding_cache" if settings.retrain_mode == "decoder" and not sam2 else None
        result = run_retrain(model, train, settings.retrain_steps, cache, lr=settings.lr,
                             seed=settings.seed + r, train_config=record.get("config"), mode=settings.retrain_mode,
                             recipe=None if sam2 else settings.retrain_recipe,
                             warmup_steps=min(20, settings.retrain_steps // 10),
                             min_lr_ratio=0.1, val_samples=val, val_every=settings.retrain_val_every)
        folder = work / "rounds" / str(r)
        save_training_checkpoint(folder / ROUND_CHECKPOINT, model=model.state_dict(), **record)
        metrics = {
            "round": r, "stage": stage, "images": len(new), "objects": len(clicks),
            "clicks_per_object": float(np.mean(clicks)) if clicks else 0.0,
            "clicked_objects": sum(c > 0 for c in clicks), "hand_finished": hand,
            "accepted_proposals": accepted, "proposals_shown": shown,
            "accepted_share": accepted / len(clicks) if clicks else 0.0,
            "seconds_per_image": round(annotate_s / len(new), 3), "annotate_seconds": round(annotate_s, 3),
            "retrain_mode": result.mode, "retrain_trainable": result.trainable,
            "retrain_seconds": round(result.seconds, 3), "retrain_images": len(train), "retrain_val_images": len(val),
            "retrain_steps_done": result.steps_done, "retrain_kept_step": result.kept_step,
            "retrain_loss_first": result.losses[0], "retrain_loss_last": result.losses[-1],
            "retrain_val_losses": [[s, v] for s, v in result.val_losses],
            **_measure(model, data, held, settings),
        }
        finish_round(work, r, metrics)
        log(f"round {r} ({stage}): {metrics['clicks_per_object']:.2f} clicks/object ({hand} of {len(clicks)} "
            f"finished by hand), {100 * metrics['accepted_share']:.0f}% from proposals; retrain kept step "
            f"{result.kept_step} of {result.steps_done}; held-out mIoU box {metrics['heldout_miou_box']:.3f}, NoC@85 "
            f"{metrics['heldout_noc85']:.2f}, {metrics['heldout_clicks_per_object']:.2f} clicks/object to IoU "
            f"{settings.target_iou:g}; {_auto_line(metrics['auto'])}")
    table = [r.metrics for r in list_rounds(work) if r.complete]
    write_summary(work, spec, settings, [data[i].name for i in held], table)
    return table


def _auto_line(auto: dict) -> str:
    """The automatic stage's quality in a line of the log."""
    p = auto["precision@0.75"]
    return (f"automatic stage: {auto['pseudo_labels']} pseudo-labels, precision@0.75 "
            f"{'n/a' if p is None else f'{p:.2f}'}, recall@0.75 {auto['recall@0.75']:.2f}")


def write_summary(work: Path, spec: str, settings: SimulateSettings, held_out: list[str], table: list[dict]) -> None:
    """``rounds.json`` (settings, held-out names, each round's metrics) and ``rounds.png`` (the curves)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = ("annotate_seconds", "retrain_seconds", "eval_seconds", "auto_seconds")
    seconds = {p: round(sum(m.get(p, 0.0) for m in table), 1) for p in parts}
    summary = {"data": spec, "settings": settings.__dict__, "held_out": held_out,
               "seconds": {**seconds, "total": round(sum(seconds.values()), 1)}, "rounds": table}
    atomic_write_bytes(work / "rounds.json", json.dumps(summary, indent=2).encode())
    done = [m for m in table if m["round"] >= 1]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.5))
    axes[0].plot([m["round"] for m in done], [m["clicks_per_object"] for m in done], "o-",
                 label="the round's images (previous model)")
    held_clicks = [(m["round"], m["heldout_clicks_per_object"]) for m in table if "heldout_clicks_per_object" in m]
    if held_clicks:
        axes[0].plot(*zip(*held_clicks), "s--", label="held-out images (the round's model)")
    axes[0].set(title=f"clicks per object (to IoU {settings.target_iou:g})", xlabel="round")
    axes[0].legend(fontsize=8)
    axes[1].plot([m["round"] for m in done], [100 * m["accepted_share"] for m in done], "o-")
    axes[1].set(title="objects from accepted proposals (%)", xlabel="round")
    for key, label in (("heldout_miou_box", "box"), ("heldout_miou_point", "center point")):
        axes[2].plot([m["round"] for m in table], [m[key] for m in table], "o-", label=label)
    after9 = [(m["round"], m["heldout_miou_at_clicks"]["9"]) for m in table if "heldout_miou_at_clicks" in m]
    if after9:
        axes[2].plot(*zip(*after9), "s--", label="after 9 clicks")
    axes[2].set(title="held-out mIoU", xlabel="round (0 = base)")
    axes[2].legend()
    auto = [m for m in table if isinstance(m.get("auto"), dict)]
    for key, style in (("precision@0.75", "o-"), ("recall@0.75", "s--"), ("precision@0.5", "o:"), ("recall@0.5", "s:")):
        points = [(m["round"], m["auto"][key]) for m in auto if m["auto"].get(key) is not None]
        if points:
            axes[3].plot(*zip(*points), style, label=key)
    axes[3].set(title=f"automatic stage vs truth\n(pred. IoU >= {settings.proposal_pred_iou:g}, stability >= "
                      f"{settings.proposal_stability:g})", xlabel="round (0 = base)")
    if axes[3].lines:
        axes[3].legend(fontsize=8)
    axes[0].set_ylim(0, 20.5)
    axes[1].set_ylim(0, 100)
    axes[2].set_ylim(0, 1)
    axes[3].set_ylim(0, 1.02)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(f"samforge engine simulate on {spec}: {settings.images_per_round} images per round, "
                 f"{len(held_out)} held out")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(work / "rounds.png", buf.getvalue())
