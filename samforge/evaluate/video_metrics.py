"""Video object segmentation metrics with the DAVIS definitions, and the evaluation of a SAM 2 video predictor.

* J, region similarity: the IoU of the predicted and ground-truth masks (void pixels left out); an empty
  prediction on an empty ground truth counts 1.
* F, contour accuracy: the F-measure of boundary precision and recall. Boundaries are one pixel wide (the
  ``seg2bmap`` rule: a pixel differing from its east, south or south-east neighbour), and a boundary pixel is
  matched when the other mask's boundary lies within a disk of radius ``ceil(bound_th * image diagonal)``
  (``bound_th = 0.008``; a value >= 1 is a radius in pixels). No boundary on either side counts 1.
* Per object: the mean over its evaluated frames, the recall (fraction of frames above 0.5) and the decay
  (mean of the first quarter of the frames minus the mean of the last quarter). Clip and dataset figures
  are means over objects; J&F is the mean of J and F.

The protocol of :func:`evaluate_video`: each object is prompted on its first visible frame (a box from its
ground truth, its centre point, or the ground-truth mask) and propagated forward; its scores are taken on
the frames after that prompt frame (the prompt frame is what DAVIS's first frame is: given, not scored).
Objects first seen on the same frame are tracked together, as DAVIS's objects on frame 0 are; objects seen
first on later frames are tracked in a pass of their own, so that no object is tracked before it appears.
Unlike the DAVIS 2017 scripts, the clip's last frame is scored too.
"""

from __future__ import annotations

import io
import json
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from samforge.data.prompts import interior_point, mask_to_box
from samforge.evaluate.report import GT_CONTOUR_COLOR, per_image_csv
from samforge.utils.atomic import atomic_write_bytes
from samforge.viz.overlay import PALETTE, draw_overlay

__all__ = [
    "BOUND_TH", "VIDEO_PROMPTS", "ObjectScores", "VideoEvalResult", "boundary_f", "boundary_map",
    "davis_statistics", "evaluate_video", "format_video_table", "jaccard", "overlay_tile", "video_overlay_png",
]

BOUND_TH = 0.008  # of the image diagonal
VIDEO_PROMPTS = ("box", "point", "mask")
PROMPT_MIN_PIXELS = 64  # the prompt frame: the first with this many object pixels (or the object's most)
VIDEO_METRICS_JSON = "video_metrics.json"
PER_OBJECT_CSV = "per_object.csv"
OVERLAY_PNG = "overlay.png"


# ----------------------------------------------------------------------------------------------------------
# Metrics


def _check_pair(pred: Any, gt: Any, void: Any, name: str) -> tuple:
    arrays = []
    for label, a in (("pred", pred), ("gt", gt), ("void", void)):
        if a is None:
            arrays.append(None)
            continue
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name}: {label} must be a numpy array, got {type(a).__name__}")
        if a.dtype != bool and not (np.issubdtype(a.dtype, np.integer) and np.isin(a, (0, 1)).all()):
            raise ValueError(f"{name}: {label} must be a bool (or 0/1) mask, got dtype {a.dtype}")
        arrays.append(a.astype(bool, copy=False))
    pred, gt, void = arrays
    if pred.ndim not in (2, 3) or 0 in pred.shape:
        raise ValueError(f"{name}: pred must be an H x W or T x H x W mask, got shape {pred.shape}")
    if gt.shape != pred.shape:
        raise ValueError(f"{name}: gt must have pred's shape {pred.shape}, got {gt.shape}")
    if void is not None and void.shape != pred.shape:
        raise ValueError(f"{name}: void must have pred's shape {pred.shape}, got {void.shape}")
    return pred, gt, void


def jaccard(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None) -> float | np.ndarray:
    """Region similarity J of ``H x W`` masks (a float), or per frame of ``T x H x W`` masks (an array).
    Void pixels are left out; an empty union counts 1."""
    pred, gt, void = _check_pair(pred, gt, void, "jaccard")
    keep = np.ones_like(gt) if void is None else ~void
    inter = np.count_nonzero(pred & gt & keep, axis=(-2, -1))
    union = np.count_nonzero((pred | gt) & keep, axis=(-2, -1))
    j = np.where(union == 0, 1.0, inter / np.maximum(union, 1))
    return float(j) if pred.ndim == 2 else j.astype(np.float64)


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """The one-pixel boundary of an ``H x W`` mask (DAVIS's ``seg2bmap``): pixels that differ from their east,
    south or south-east neighbour; on the last row only the east one counts, on the last column only the south
    one, and the bottom-right pixel never. Boundaries sit half a pixel towards the origin."""
    if not isinstance(mask, np.ndarray) or mask.ndim != 2 or 0 in mask.shape:
        raise ValueError(f"boundary_map: expected a non-empty H x W mask, got {getattr(mask, 'shape', type(mask))}")
    m = mask.astype(bool)
    east = np.zeros_like(m)
    south = np.zeros_like(m)
    south_east = np.zeros_like(m)
    east[:, :-1] = m[:, 1:]
    south[:-1, :] = m[1:, :]
    south_east[:-1, :-1] = m[1:, 1:]
    b = (m ^ east) | (m ^ south) | (m ^ south_east)
    b[-1, :] = m[-1, :] ^ east[-1, :]
    b[:, -1] = m[:, -1] ^ south[:, -1]
    b[-1, -1] = False
    return b


def _disk(radius: int) -> np.ndarray:
    """(2r+1) x (2r+1) uint8 disk: offsets with dx^2 + dy^2 <= r^2."""
    d = np.arange(-radius, radius + 1)
    return ((d[:, None] ** 2 + d[None, :] ** 2) <= radius * radius).astype(np.uint8)


def _boundary_f_frame(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None, bound_th: float) -> float:
    radius = bound_th if bound_th >= 1 else math.ceil(bound_th * math.hypot(*pred.shape))
    keep = ~void if void is not None else None
    pb = boundary_map(pred if keep is None else pred & keep)
    gb = boundary_map(gt if keep is None else gt & keep)
    n_pred, n_gt = int(pb.sum()), int(gb.sum())
    if n_pred == 0 and n_gt == 0:
        return 1.0
    if n_pred == 0 or n_gt == 0:
        return 0.0  # precision 1 / recall 0 (or the reverse): F = 0
    kernel = _disk(int(radius))
    pred_near = cv2.dilate(pb.astype(np.uint8), kernel).astype(bool)
    gt_near = cv2.dilate(gb.astype(np.uint8), kernel).astype(bool)
    precision = np.count_nonzero(pb & gt_near) / n_pred
    recall = np.count_nonzero(gb & pred_near) / n_gt
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def boundary_f(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None,
               bound_th: float = BOUND_TH) -> float | np.ndarray:
    """Contour accuracy F of ``H x W`` masks (a float), or per frame of ``T x H x W`` masks (an array).
    ``bound_th``: the matching tolerance, a fraction of the image diagonal (< 1) or pixels (>= 1)."""
    pred, gt, void = _check_pair(pred, gt, void, "boundary_f")
    if not isinstance(bound_th, numbers.Real) or isinstance(bound_th, bool) or not bound_th > 0:
        raise ValueError(f"boundary_f: bound_th must be a positive number, got {bound_th!r}")
    if pred.ndim == 2:
        return _boundary_f_frame(pred, gt, void, float(bound_th))
    return np.array([_boundary_f_frame(pred[t], gt[t], None if void is None else void[t], float(bound_th))
                     for t in range(pred.shape[0])], dtype=np.float64)


def davis_statistics(values: Sequence[float] | np.ndarray) -> tuple[float, float, float]:
    """(mean, recall, decay) of one object's per-frame J (or F) values: the mean; the fraction of frames above
    0.5; the mean of the first quarter of the frames minus that of the last (the quarters of DAVIS: four bins
    over the frames, neighbouring bins sharing their edge frame). NaN values are left out."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"davis_statistics: expected a non-empty 1-D sequence of values, got shape {v.shape}")
    valid = ~np.isnan(v)
    if not valid.any():
        return math.nan, math.nan, math.nan
    mean = float(v[valid].mean())
    recall = float((v[valid] > 0.5).mean())
    edges = (np.round(np.linspace(1, v.size, 5) + 1e-10) - 1).astype(np.int64)
    first, last = v[edges[0]:edges[1] + 1], v[edges[3]:edges[4] + 1]
    with np.errstate(all="ignore"):
        f = np.nanmean(first) if (~np.isnan(first)).any() else math.nan
        la = np.nanmean(last) if (~np.isnan(last)).any() else math.nan
    return mean, recall, float(f - la)


# ----------------------------------------------------------------------------------------------------------
# Results


@dataclass
class ObjectScores:
    """One object of one clip: where it was prompted and its J / F on each scored frame."""

    clip: str
    obj_id: int
    prompt_frame: int
    frames: list
    j: np.ndarray
    f: np.ndarray

    def summary(self) -> dict[str, float]:
        jm, jr, jd = davis_statistics(self.j)
        fm, fr, fd = davis_statistics(self.f)
        return {"J": jm, "F": fm, "J&F": (jm + fm) / 2, "J_recall": jr, "J_decay": jd, "F_recall": fr, "F_decay": fd}


def _mean(values: Iterable[float]) -> float:
    v = [x for x in values if not math.isnan(x)]
    return float(np.mean(v)) if v else math.nan


def _summarize(objects: Sequence[ObjectScores]) -> dict[str, float]:
    sums = [o.summary() for o in objects]
    out = {k: _mean(s[k] for s in sums) for k in ("J", "F", "J_recall", "J_decay", "F_recall", "F_decay")}
    out["J&F"] = (out["J"] + out["F"]) / 2
    return {k: out[k] for k in ("J", "F", "J&F", "J_recall", "J_decay", "F_recall", "F_decay")}


@dataclass
class VideoEvalResult:
    """Everything :func:`evaluate_video` measured; ``write(out)`` leaves the report files."""

    prompt: str
    clips: list  # clip names, in order
    objects: list  # ObjectScores
    skipped: list = field(default_factory=list)  # "clip/obj: reason"
    overlay_rows: list = field(default_factory=list)  # [(clip name, [(frame idx, tile)])]

    def to_metrics_dict(self) -> dict[str, Any]:
        if not self.objects:
            raise ValueError("no object was scored: nothing to summarize (see the skipped list)")
        per_clip = {}
        for name in self.clips:
            objs = [o for o in self.objects if o.clip == name]
            if not objs:
                continue
            per_clip[name] = {**_summarize(objs), "num_objects": len(objs),
                              "objects": {str(o.obj_id): {"prompt_frame": o.prompt_frame, "num_frames": len(o.frames),
                                                          **o.summary()} for o in objs}}
        return {**_summarize(self.objects), "per_clip": per_clip, "num_clips": len(per_clip),
                "num_objects": len(self.objects), "prompt": self.prompt, "bound_th": BOUND_TH,
                "skipped": list(self.skipped)}

    def per_object_rows(self) -> list[dict[str, Any]]:
        return [{"clip": o.clip, "obj_id": o.obj_id, "prompt_frame": o.prompt_frame, "num_frames": len(o.frames),
                 **o.summary()} for o in self.objects]

    def write(self, out: str | Path) -> dict[str, Path]:
        """Write ``video_metrics.json``, ``per_object.csv`` and ``overlay.png`` into ``out``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        metrics = _json_safe(self.to_metrics_dict())
        paths = {n: out / n for n in (VIDEO_METRICS_JSON, PER_OBJECT_CSV, OVERLAY_PNG)}
        atomic_write_bytes(paths[VIDEO_METRICS_JSON], (json.dumps(metrics, indent=2) + "\n").encode())
        atomic_write_bytes(paths[PER_OBJECT_CSV], per_image_csv(self.per_object_rows()).encode())
        atomic_write_bytes(paths[OVERLAY_PNG], video_overlay_png(self.overlay_rows, self.prompt))
        return paths


def _json_safe(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    if isinstance(x, float) and math.isnan(x):
        return None
    return x


def format_video_table(metrics: dict[str, Any]) -> str:
    """A plain-text summary of a ``video_metrics.json`` dict, for the terminal."""
    lines = [f"{'clip':<28}{'J':>8}{'F':>8}{'J&F':>8}{'objects':>9}"]
    for name, m in metrics["per_clip"].items():
        short = name if len(name) <= 27 else "..." + name[-24:]
        lines.append(f"{short:<28}{m['J']:>8.4f}{m['F']:>8.4f}{m['J&F']:>8.4f}{m['num_objects']:>9d}")
    m = metrics
    lines.append(f"{'all':<28}{m['J']:>8.4f}{m['F']:>8.4f}{m['J&F']:>8.4f}{m['num_objects']:>9d}")
    lines.append(f"J recall {metrics['J_recall']:.4f}  decay {metrics['J_decay']:.4f}   "
                 f"F recall {metrics['F_recall']:.4f}  decay {metrics['F_decay']:.4f}   "
                 f"({metrics['num_clips']} clips, {metrics['prompt']} prompts)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# Pictures


def overlay_tile(image: np.ndarray, pred: dict, gt: dict, colors: dict) -> np.ndarray:
    """The frame with each predicted mask filled in its object's colour and every ground truth outlined."""
    ids = sorted(pred)
    tile = draw_overlay(image, [pred[i] for i in ids], colors=[colors[i] for i in ids]) if ids else image.copy()
    width = max(1, round(min(image.shape[:2]) / 256))
    for m in gt.values():
        inner = cv2.erode(m.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=width,
                          borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)
        tile[m & ~inner] = GT_CONTOUR_COLOR
    return tile


def video_overlay_png(rows: Sequence[tuple[str, Sequence[tuple[int, np.ndarray]]]], prompt: str = "box",
                      title: str | None = None, frame_word: str = "frame") -> bytes:
    """A PNG (matplotlib): one row per clip, a few frames each, predictions filled, ground truth outlined."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in rows if r[1]]
    n_rows = max(1, len(rows))
    cols = max([1, *(len(tiles) for _, tiles in rows)])
    fig = Figure(figsize=(2.6 * cols, 2.8 * n_rows + 0.4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(title or f"{prompt} prompt on each object's first frame: prediction filled, ground truth outlined "
                 "in yellow", fontsize=9)
    for r, (name, tiles) in enumerate(rows):
        for c in range(cols):
            ax = fig.add_subplot(n_rows, cols, r * cols + c + 1)
            ax.set_axis_off()
            if c < len(tiles):
                t, tile = tiles[c]
                ax.imshow(tile, interpolation="nearest")
                short = name if len(name) <= 24 else "..." + name[-21:]
                ax.set_title(f"{short} {frame_word} {t}", fontsize=8)
    if not rows:
        ax = fig.add_subplot(1, 1, 1)
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no frames to show", ha="center", va="center")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------------------
# Evaluation


def _prompt_frame(areas: np.ndarray) -> int | None:
    """The first frame with ``PROMPT_MIN_PIXELS`` object pixels (or as many as the object ever has)."""
    if areas.max() == 0:
        return None
    return int(np.argmax(areas >= min(PROMPT_MIN_PIXELS, int(areas.max()))))


def _add_prompt(predictor: Any, state: dict, frame: int, obj_id: int, mask: np.ndarray, prompt: str) -> None:
    if prompt == "box":
        predictor.add_new_points_or_box(state, frame_idx=frame, obj_id=obj_id, box=mask_to_box(mask).astype(np.float32))
    elif prompt == "point":
        point = interior_point(mask).astype(np.float32)[None]
        predictor.add_new_points_or_box(state, frame_idx=frame, obj_id=obj_id, points=point,
                                        labels=np.array([1], dtype=np.int32))
    else:
        predictor.add_new_mask(state, frame_idx=frame, obj_id=obj_id, mask=mask)


def _check_predictor(predictor: Any) -> Any:
    from samforge.models.sam2 import SAM2Base
    from samforge.predict.sam2_video_predictor import SAM2VideoPredictor

    if isinstance(predictor, SAM2Base):
        return SAM2VideoPredictor(predictor)
    needed = ("init_state", "add_new_points_or_box", "add_new_mask", "propagate_in_video", "reset_state")
    if not all(callable(getattr(predictor, n, None)) for n in needed) or not hasattr(predictor, "model"):
        raise TypeError("predictor: expected a SAM2VideoPredictor (or anything with its methods "
                        f"{', '.join(needed)}) or a SAM2Base, got {type(predictor).__name__}")
    return predictor


def evaluate_video(predictor: Any, dataset: Sequence, prompt: str = "box", max_clips: int | None = None,
                   overlay_clips: int = 4, overlay_frames: int = 6, progress: bool = True) -> VideoEvalResult:
    """Prompt every object of every clip on its first visible frame (see the module docstring), propagate it
    forward with ``predictor`` (a ``SAM2VideoPredictor``, or a ``SAM2Base`` wrapped in one) and score it.

    ``dataset``: clips (``len`` and ``[i] -> VideoClip``: a ``DavisDataset``, ``SyntheticVideoDataset`` or a
    list); ``prompt``: ``"box"`` (the ground truth's box), ``"point"`` (its centre) or ``"mask"``. The first
    ``overlay_clips`` clips give a row of ``overlay_frames`` frames each to the overlay picture."""
    predictor = _check_predictor(predictor)
    if prompt not in VIDEO_PROMPTS:
        raise ValueError(f"prompt: expected one of {VIDEO_PROMPTS}, got {prompt!r}")
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise TypeError(f"dataset: expected a sequence of VideoClip, got {type(dataset).__name__}")
    for name, value, lo in (("max_clips", max_clips, 1), ("overlay_clips", overlay_clips, 0),
                            ("overlay_frames", overlay_frames, 1)):
        if value is None and name == "max_clips":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < lo:
            raise ValueError(f"{name}: expected an int >= {lo}, got {value!r}")
    count = len(dataset) if max_clips is None else min(len(dataset), max_clips)
    if count == 0:
        raise ValueError("dataset: no clips to evaluate")
    model = predictor.model
    was_training = model.training
    model.eval()
    result = VideoEvalResult(prompt=prompt, clips=[], objects=[])
    try:
        for i in tqdm(range(count), desc="video clips", disable=not progress or count < 2):
            clip = dataset[i]
            result.clips.append(clip.name)
            row = _evaluate_clip(predictor, clip, prompt, result, overlay_frames if i < overlay_clips else 0)
            if row:
                result.overlay_rows.append((clip.name, row))
    finally:
        model.train(was_training)
    return result


def _evaluate_clip(predictor: Any, clip: Any, prompt: str, result: VideoEvalResult, overlay_frames: int) -> list:
    void = clip.void()
    labels = clip.labels
    groups: dict[int, list] = {}
    for oid in clip.obj_ids:  # per-object masks are made one frame at a time: a long clip stays light
        frame = _prompt_frame(np.array([np.count_nonzero(lab == oid) for lab in labels]))
        if frame is None:
            result.skipped.append(f"{clip.name}/{oid}: never visible")
        elif frame == clip.num_frames - 1:
            result.skipped.append(f"{clip.name}/{oid}: first visible on the last frame, nothing left to track")
        else:
            groups.setdefault(frame, []).append(oid)
    colors = {oid: PALETTE[k % len(PALETTE)] for k, oid in enumerate(clip.obj_ids)}
    shown: list = []
    if groups and overlay_frames:
        first = min(groups)
        shown = sorted({int(round(x)) for x in np.linspace(first, clip.num_frames - 1, overlay_frames)})
    shown_pred: dict[int, dict] = {t: {} for t in shown}
    if not groups:
        return []
    state = predictor.init_state(clip.video)
    if state["num_frames"] != clip.num_frames:
        raise ValueError(f"clip {clip.name}: the predictor read {state['num_frames']} frames from {clip.video} "
                         f"but there are {clip.num_frames} annotations")
    read_names = getattr(state.get("images"), "names", None)
    if isinstance(clip.video, Path) and read_names is not None and list(read_names) != list(clip.frame_names):
        raise ValueError(f"clip {clip.name}: the predictor reads the frames of {clip.video} in another order than "
                         f"their annotations ({list(read_names)[:3]}... vs {list(clip.frame_names)[:3]}...)")
    for g, (frame, oids) in enumerate(sorted(groups.items())):
        if g:
            predictor.reset_state(state)
        for oid in oids:
            _add_prompt(predictor, state, frame, oid, labels[frame] == oid, prompt)
        j = {oid: [] for oid in oids}
        f = {oid: [] for oid in oids}
        frames: list = []
        for t, out_ids, logits in predictor.propagate_in_video(state, start_frame_idx=frame):
            pred = (logits[:, 0] > 0).cpu().numpy()
            by_id = {oid: pred[k] for k, oid in enumerate(out_ids)}
            if t in shown_pred:
                shown_pred[t].update({oid: by_id[oid] for oid in oids})
            if t <= frame:
                continue
            frames.append(t)
            v = None if void is None else void[t]
            for oid in oids:
                gt = labels[t] == oid
                j[oid].append(jaccard(by_id[oid], gt, v))
                f[oid].append(boundary_f(by_id[oid], gt, v))
        for oid in oids:
            result.objects.append(ObjectScores(clip.name, int(oid), frame, frames, np.array(j[oid]), np.array(f[oid])))
    tiles = []
    for t in shown:
        gt_t = {oid: labels[t] == oid for oid in clip.obj_ids}
        tiles.append((t, overlay_tile(clip.frame(t), shown_pred[t], gt_t, colors)))
    return tiles
