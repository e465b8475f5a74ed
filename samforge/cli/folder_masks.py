"""Automatic masks for a folder of images, as ``samforge segment-everything`` and ``samforge engine auto`` make them:
the generator's flags, the folder's images, the per-image record files ``masks/<stem>.json`` (written last, so one
that exists is an image done) and the loop that segments the images not done yet, one process or many.

Under torchrun the images are shared out (:mod:`samforge.utils.distributed`): rank 0 plans (which images are done,
which are not), image i of the images to do goes to rank i % world size, every rank writes its images' files, and
rank 0 gathers every record for the command's merged outputs. A killed run, sharded or not, is rerun with any number
of processes: the images whose ``masks/<stem>.json`` exists are not redone.
"""

from __future__ import annotations

import argparse
import colorsys
import json
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from samforge.data.bad_samples import natural_key
from samforge.data.image_io import IMAGE_SUFFIXES, read_image_rgb
from samforge.models.sam2 import SAM2_CONFIGS
from samforge.predict.amg_outputs import paint_order, records_to_json, segmentation_size, segmentation_to_mask
from samforge.utils.atomic import atomic_write_bytes
from samforge.utils.distributed import Processes
from samforge.viz.overlay import PALETTE, draw_overlay

# generator argument -> (flag, default, kind, lower bound, upper bound or None); a default of None is the
# generator's own (SAM and SAM 2 differ: SAM2_DEFAULTS)
GENERATOR_FLAGS = {
    "points_per_side": ("--points-per-side", 32, int, 1, None),
    "points_per_batch": ("--points-per-batch", 64, int, 1, None),
    "pred_iou_thresh": ("--pred-iou-thresh", None, float, 0.0, 1.0),
    "stability_score_thresh": ("--stability-score-thresh", 0.95, float, 0.0, 1.0),
    "box_nms_thresh": ("--box-nms-thresh", 0.7, float, 0.0, 1.0),
    "crop_n_layers": ("--crop-n-layers", 0, int, 0, None),
    "min_mask_region_area": ("--min-mask-region-area", 0, int, 0, None),
}
SAM_DEFAULTS = {"pred_iou_thresh": 0.88}
SAM2_DEFAULTS = {"pred_iou_thresh": 0.8}
GRAY_MODES = ("1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
Records = list[dict]
Size = tuple[int, int]  # (height, width)


def check_generator_flags(args: argparse.Namespace) -> dict:
    """The generator's keyword arguments, each checked against its bounds (the flag named on failure)."""
    sam2 = args.model_type in SAM2_CONFIGS
    kwargs = {}
    for dest, (flag, _, kind, lo, hi) in GENERATOR_FLAGS.items():
        value = getattr(args, dest)
        if value is None:
            value = (SAM2_DEFAULTS if sam2 else SAM_DEFAULTS)[dest]
        bounds = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        expected = f"{'an int' if kind is int else 'a number'} {bounds}"
        ok_type = isinstance(value, numbers.Integral if kind is int else numbers.Real) and not isinstance(value, bool)
        if not ok_type:
            raise TypeError(f"{flag} must be {expected}, got {value!r}")
        if not np.isfinite(value) or value < lo or (hi is not None and value > hi):
            raise ValueError(f"{flag} must be {expected}, got {value!r}")
        kwargs[dest] = value
    if sam2:
        kwargs["use_m2m"] = bool(args.use_m2m)
    elif args.use_m2m:
        raise ValueError(f"--use-m2m is for SAM 2 models (sam2.1_hiera_t, ...), got --model-type {args.model_type}")
    return kwargs


def scan_folder(images_dir: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """(image files, [(name, why skipped)]) of the folder's top level, both sorted by name; hidden files
    are ignored."""
    if not images_dir.exists():
        raise FileNotFoundError(f"images folder not found: {images_dir}")
    if not images_dir.is_dir():
        raise ValueError(f"IMAGES_DIR must be a folder of images, got the file {images_dir}")
    images, skipped = [], []
    for p in sorted(images_dir.iterdir(), key=lambda p: natural_key(p.name)):
        if p.name.startswith("."):
            continue
        if p.is_dir():
            skipped.append((p.name, "a folder (only the top level is read)"))
        elif p.suffix.lower() in IMAGE_SUFFIXES:
            images.append(p)
        else:
            skipped.append((p.name, f"not an image (suffix {p.suffix or 'none'!r}; images end in "
                                    f"{', '.join(IMAGE_SUFFIXES)})"))
    if not images:
        raise ValueError(f"no images in {images_dir}: expected files ending in {', '.join(IMAGE_SUFFIXES)}"
                         + (f"; found only {len(skipped)} other entries: "
                            + ", ".join(n for n, _ in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
                            if skipped else " (the folder is empty)"))
    stems: dict[str, list[str]] = {}
    for p in images:
        stems.setdefault(p.stem, []).append(p.name)
    clashes = [names for names in stems.values() if len(names) > 1]
    if clashes:
        raise ValueError("outputs are named by file stem, and these images share one: "
                         + "; ".join(" and ".join(n) for n in clashes) + " (rename or move one of each)")
    return images, skipped


def read_image(path: Path) -> tuple[np.ndarray, str | None]:
    """The image as HxWx3 uint8 RGB, and a line saying how it was converted (None when it was RGB)."""
    try:
        with Image.open(path) as im:
            mode = im.mode
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"could not read image {path}: {e}") from e
    image = read_image_rgb(path)
    if mode == "RGB":
        return image, None
    if mode in GRAY_MODES:
        how = "scaled by its min/max to 8 bits and " if mode not in ("1", "L") else ""
        return image, f"{path.name}: grayscale (mode {mode}) {how}converted to RGB by repeating the channel"
    if mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        return image, f"{path.name}: {mode} converted to RGB, alpha channel dropped"
    return image, f"{path.name}: mode {mode} converted to RGB"


def mask_colors(n: int) -> np.ndarray:
    """``n`` distinct RGB colours: the overlay palette, then golden-ratio hues."""
    extra = [colorsys.hsv_to_rgb((0.13 + i * 0.618034) % 1.0, 0.75 + 0.25 * (i % 2), 0.95 - 0.25 * (i // 2 % 2))
             for i in range(max(0, n - len(PALETTE)))]
    colors = np.concatenate([PALETTE[:n].astype(np.float64), np.array(extra).reshape(-1, 3) * 255.0])
    return colors.round().astype(np.uint8)


def overlay_image(image: np.ndarray, records: Records) -> np.ndarray:
    """Each mask blended in its own colour, largest first (one mask decoded at a time)."""
    colors = mask_colors(len(records))
    out = image
    for i in paint_order(records):
        out = draw_overlay(out, segmentation_to_mask(records[i]["segmentation"]), colors=[colors[i]])
    return out


def check_settings(out: Path, settings: dict) -> None:
    """Refuse to mix masks made with other settings into ``out``; record the settings when it holds none."""
    path = out / "settings.json"
    if path.is_file() and any((out / "masks").glob("*.json")):
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path} is not valid JSON ({e}); delete it, or give a new --out") from e
        old = old if isinstance(old, dict) else {}
        old.setdefault("precision", "fp32")  # written before --precision existed
        diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        if diff:
            said = ", ".join(f"{k}: {a!r} then, {b!r} now" for k, (a, b) in diff.items())
            raise ValueError(f"{out} holds masks made with other settings ({said}); give a new --out, or delete "
                             f"{out} to start over")
    else:
        atomic_write_bytes(path, json.dumps(settings, indent=2).encode())


def load_done(path: Path, image_path: Path) -> tuple[Records | None, Size | None, str | None]:
    """Records of an image done by an earlier run and the image's (h, w); or (None, size, why it must be
    redone); or (None, None, why the image is unreadable)."""
    try:
        with Image.open(image_path) as im:
            w, h = im.size
    except (UnidentifiedImageError, OSError) as e:
        return None, None, f"unreadable image ({e})"
    if not path.is_file():
        return None, (h, w), None
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(records, list):
            raise ValueError(f"expected a list of records, got {type(records).__name__}")
        for r in records:
            if not isinstance(r, dict) or segmentation_size(r.get("segmentation")) != (h, w):
                raise ValueError(f"a record's segmentation is not of the image's size {h}x{w}")
    except (UnicodeDecodeError, ValueError, TypeError) as e:
        return None, (h, w), f"{path.name} from an earlier run is unusable ({e}): segmenting again"
    return records, (h, w), None


@dataclass
class FolderPlan:
    """A folder's images and how far their segmentation is. ``pending`` (the images to segment) is the same on every
    rank; ``done``, ``sizes`` and ``skipped`` are rank 0's: records and (h, w) of the images done, in the folder's
    order once :func:`segment_pending` returns, and the files skipped with why."""

    images: list[Path]
    masks_dir: Path
    pending: list[Path]
    done: dict[Path, Records] = field(default_factory=dict)
    sizes: dict[Path, Size] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def in_order(self) -> list[Path]:
        """The images done, in the folder's order."""
        return [p for p in self.images if p in self.done]


def plan_folder(images: Sequence[Path], masks_dir: Path, procs: Processes,
                prepare: Callable[[], None] | None = None) -> FolderPlan:
    """Rank 0 runs ``prepare`` (folders, settings check), then reads each image's size and its ``masks_dir``
    records from an earlier run; every rank gets the images still to segment. Rank 0 prints why an earlier file
    is redone."""
    images = list(images)
    if not all(isinstance(p, Path) for p in images):
        raise TypeError("plan_folder expects a list of image paths (pathlib.Path)")
    plan = FolderPlan(images, Path(masks_dir), [])

    def scan() -> list[str]:
        if prepare is not None:
            prepare()
        for p in images:
            records, size, why = load_done(plan.masks_dir / f"{p.stem}.json", p)
            if size is None:  # cannot be read now: segmenting would fail the same way
                plan.skipped.append((p.name, why))
                continue
            plan.sizes[p] = size
            if records is not None:
                plan.done[p] = records
            else:
                if why:
                    print(why)
                plan.pending.append(p)
        return [p.name for p in plan.pending]

    by_name = {p.name: p for p in images}
    plan.pending = [by_name[name] for name in procs.from_main(scan)]
    return plan


def segment_pending(plan: FolderPlan, procs: Processes, make_generator: Callable[[], object], desc: str,
                    save: Callable[[Path, np.ndarray, Records], None] | None = None,
                    after_image: Callable[[], None] | None = None) -> FolderPlan:
    """Segment this rank's share of ``plan.pending`` with the generator ``make_generator()`` builds (only when the
    share is not empty): per image ``save(path, image, records)`` (the command's other files), then
    ``masks/<stem>.json`` atomically, then, on rank 0, ``after_image()``. Rank 0 shows the progress bar. Then every
    rank's outcome goes to every rank: a failure on any rank is raised on all (:class:`RankFailed` naming the rank
    and the image; with one process the error itself), and rank 0 reads the records the other ranks wrote into
    ``plan`` (the ranks share the output folder). Returns ``plan``, complete on rank 0."""
    share = procs.shard(plan.pending)
    done_here: list[str] = []
    skipped_here: list[tuple[str, str]] = []
    error, cause, current = None, None, "while loading the model"
    try:
        if share:
            generator = make_generator()
            label = desc if not procs.distributed else f"{desc} [rank 0 of {procs.world_size}: its share]"
            initial = len(plan.done) if not procs.distributed else 0
            bar = tqdm(share, desc=label, unit="image", total=initial + len(share), initial=initial,
                       disable=not procs.main)
            for p in bar:
                current = f"on image {p.name}"
                try:
                    image, note = read_image(p)
                except ValueError as e:
                    skipped_here.append((p.name, f"unreadable image ({e})"))
                    procs.alive(p.name)
                    continue
                if note:
                    tqdm.write(note)
                records = records_to_json(generator.generate(image))
                if save is not None:
                    save(p, image, records)
                atomic_write_bytes(plan.masks_dir / f"{p.stem}.json", json.dumps(records).encode())  # last: "done"
                done_here.append(p.name)
                procs.alive(p.name)
                if procs.main:
                    plan.done[p], plan.sizes[p] = records, image.shape[:2]
                    bar.set_postfix(masks=len(records))
                    if after_image is not None:
                        after_image()
            bar.close()
    except Exception as e:
        if not procs.distributed:
            raise
        error = f"rank {procs.rank} failed {current}: {type(e).__name__}: {e}"
        cause = e
    outcomes = procs.all_outcomes({"done": done_here, "skipped": skipped_here}, error, cause)
    if procs.main:
        _gather_records(plan, outcomes)
    return plan


def _gather_records(plan: FolderPlan, outcomes: list[dict]) -> None:
    """Rank 0: the records of the images the other ranks did, read from their files; the files the ranks skipped
    (after those the plan skipped, in the folder's order: as one process lists them)."""
    by_name = {p.name: p for p in plan.images}
    order = {p: i for i, p in enumerate(plan.images)}
    skipped = [(name, why) for outcome in outcomes for name, why in outcome["skipped"]]
    plan.skipped += sorted(skipped, key=lambda s: order[by_name[s[0]]])
    for rank, outcome in enumerate(outcomes):
        if rank == 0:
            continue
        for name in outcome["done"]:
            p = by_name[name]
            records, size, why = load_done(plan.masks_dir / f"{p.stem}.json", p)
            if records is None:
                raise ValueError(f"rank {rank} segmented {name}, but rank 0 cannot read its "
                                 f"{plan.masks_dir / (p.stem + '.json')} ({why or 'missing'}): the processes must "
                                 "share the --out folder (one file system)")
            plan.done[p], plan.sizes[p] = records, size
    plan.done = dict(sorted(plan.done.items(), key=lambda item: order[item[0]]))
