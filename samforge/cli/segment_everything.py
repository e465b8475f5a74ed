"""``samforge segment-everything``: automatic masks (a grid of point prompts) for every image of a folder,
with a SAM model (``SamAutomaticMaskGenerator``) or a SAM 2 model (``SAM2AutomaticMaskGenerator``).

Per image ``<stem>`` of IMAGES_DIR (top level, sorted by name), under ``--out``:

* ``masks/<stem>.json``: the generator's records, a list; ``segmentation`` is a COCO RLE (counts a str);
  ``area``, ``bbox`` (XYWH, inclusive extent as in segment_anything), ``predicted_iou``, ``point_coords``,
  ``stability_score``, ``crop_box``. Written last, so its presence means the image is done.
* ``labels/<stem>.png``: 16-bit label image, 0 = background, label k = record k - 1 of the JSON; masks are
  painted largest first so small ones stay visible.
* ``overlays/<stem>.png``: the image with each mask in its own colour (largest first, too).

and ``annotations.json`` for the whole folder (COCO instances, ``file_name`` relative to IMAGES_DIR, one
category "object"), rewritten after each image; read it with
``open_dataset(OUT/annotations.json, images=IMAGES_DIR)``. ``settings.json`` records the model and
generator settings; rerunning with other settings into the same ``--out`` is refused.

A rerun skips the images whose ``masks/<stem>.json`` exists (their masks still go into annotations.json).
"""

from __future__ import annotations

import argparse
import colorsys
import json
import numbers
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from samforge.cli.common import add_model_args, add_precision_arg, load_model, prepare_out_dir
from samforge.data.bad_samples import natural_key
from samforge.data.image_io import IMAGE_SUFFIXES, read_image_rgb
from samforge.models.sam2 import SAM2_CONFIGS, SAM2Base
from samforge.predict.amg_outputs import (
    coco_instances,
    label_image_from_records,
    paint_order,
    records_to_json,
    segmentation_size,
    segmentation_to_mask,
)
from samforge.predict.automatic_mask_generator import SamAutomaticMaskGenerator
from samforge.predict.sam2_automatic_mask_generator import SAM2AutomaticMaskGenerator
from samforge.utils.atomic import atomic_path, atomic_write_bytes, remove_stale_temporaries, save_png
from samforge.viz.overlay import PALETTE, draw_overlay

SUBDIRS = ("masks", "labels", "overlays")
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


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "segment-everything",
        help="automatic masks for every image of a folder (resumable)",
        description="Segment every image of IMAGES_DIR with a grid of point prompts (SamAutomaticMaskGenerator, or "
        "SAM2AutomaticMaskGenerator for a SAM 2 --model-type). "
        "Writes masks/<stem>.json (COCO RLE records), labels/<stem>.png (16-bit label image), "
        "overlays/<stem>.png and annotations.json (COCO instances for the folder) to --out. "
        "A rerun skips images already done.",
    )
    p.add_argument("images_dir", metavar="IMAGES_DIR", help="folder of images (its top level; other files are skipped)")
    add_model_args(p)
    add_precision_arg(p)
    p.add_argument("--out", required=True, help="output folder")
    for dest, (flag, default, kind, lo, hi) in GENERATOR_FLAGS.items():
        bounds = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        said = default if default is not None else f"{SAM_DEFAULTS[dest]} for SAM, {SAM2_DEFAULTS[dest]} for SAM 2"
        p.add_argument(flag, dest=dest, type=kind, default=default,
                       help=f"{dest} of the generator, {bounds} (default {said})")
    p.add_argument("--use-m2m", action="store_true",
                   help="SAM 2 only: refine each mask once with its own low-res logits as mask input (use_m2m)")
    p.set_defaults(run=run)


def _check_flags(args: argparse.Namespace) -> dict:
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


def overlay_image(image: np.ndarray, records: list[dict]) -> np.ndarray:
    """Each mask blended in its own colour, largest first (one mask decoded at a time)."""
    colors = mask_colors(len(records))
    out = image
    for i in paint_order(records):
        out = draw_overlay(out, segmentation_to_mask(records[i]["segmentation"]), colors=[colors[i]])
    return out


def save_label_png(labels: np.ndarray, path: Path) -> None:
    if labels.dtype != np.uint16 or labels.ndim != 2:
        raise ValueError(f"labels must be an HxW uint16 array, got {labels.dtype} of shape {labels.shape}")
    with atomic_path(path) as tmp:
        Image.fromarray(labels).save(tmp, format="PNG")


def _settings(args: argparse.Namespace, kwargs: dict) -> dict:
    model = {"model_type": args.model_type,
             "checkpoint": None if args.checkpoint is None else str(Path(args.checkpoint).resolve())}
    if args.checkpoint is None:
        model["seed"] = args.seed  # random weights: the seed decides them
    return {**model, "precision": args.precision, **kwargs}


def _check_settings(out: Path, settings: dict) -> None:
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


def _load_done(path: Path, image_path: Path) -> tuple[list[dict] | None, tuple[int, int] | None, str | None]:
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


def run(args: argparse.Namespace) -> int:
    kwargs = _check_flags(args)
    images_dir = Path(args.images_dir)
    images, skipped = scan_folder(images_dir)
    out = prepare_out_dir(args.out)
    for d in SUBDIRS:
        (out / d).mkdir(parents=True, exist_ok=True)
    for removed in remove_stale_temporaries([out, *(out / d for d in SUBDIRS)]):
        print(f"removed {removed.name}, a temporary file left by a killed run")
    settings = _settings(args, kwargs)
    _check_settings(out, settings)

    done: dict[Path, list[dict]] = {}
    sizes: dict[Path, tuple[int, int]] = {}
    pending: list[Path] = []
    for p in images:
        records, size, why = _load_done(out / "masks" / f"{p.stem}.json", p)
        if size is None:  # cannot be read now: segmenting would fail the same way
            skipped.append((p.name, why))
            continue
        sizes[p] = size
        if records is not None:
            done[p] = records
        else:
            if why:
                print(why)
            pending.append(p)
    unreadable = len(images) - len(done) - len(pending)
    print(f"{len(images)} images in {images_dir}: {len(done)} already done, {len(pending)} to segment"
          + (f", {unreadable} unreadable" if unreadable else ""))

    def write_annotations() -> None:
        entries = [{"file_name": p.relative_to(images_dir).as_posix(), "height": sizes[p][0],
                    "width": sizes[p][1], "records": done[p]} for p in images if p in done]
        coco = coco_instances(entries, category="object",
                              info={"description": "samforge segment-everything", "images_dir": str(images_dir),
                                    **settings})
        atomic_write_bytes(out / "annotations.json", json.dumps(coco).encode())

    if pending:
        model = load_model(args)
        make = SAM2AutomaticMaskGenerator if isinstance(model, SAM2Base) else SamAutomaticMaskGenerator
        generator = make(model, output_mode="coco_rle", precision=args.precision, **kwargs)
        bar = tqdm(pending, desc="segment-everything", unit="image", total=len(done) + len(pending),
                   initial=len(done))
        for p in bar:
            try:
                image, note = read_image(p)
            except ValueError as e:
                skipped.append((p.name, f"unreadable image ({e})"))
                continue
            if note:
                tqdm.write(note)
            records = records_to_json(generator.generate(image))
            h, w = image.shape[:2]
            sizes[p] = (h, w)
            save_label_png(label_image_from_records(records, h, w), out / "labels" / f"{p.stem}.png")
            save_png(overlay_image(image, records), out / "overlays" / f"{p.stem}.png")
            atomic_write_bytes(out / "masks" / f"{p.stem}.json", json.dumps(records).encode())  # last: "done"
            done[p] = records
            bar.set_postfix(masks=len(records))
            write_annotations()
        bar.close()
    if not done:
        lines = "; ".join(f"{n}: {why}" for n, why in skipped)
        raise ValueError(f"no image of {images_dir} could be segmented: {lines}")
    write_annotations()

    n_masks = sum(len(r) for r in done.values())
    print(f"{len(done)} images, {n_masks} masks: wrote {out.resolve()} (annotations.json, masks/, labels/, overlays/)")
    if skipped:
        print(f"skipped {len(skipped)} file{'s' if len(skipped) > 1 else ''}:")
        for name, why in skipped:
            print(f"  {name}: {why}")
    return 0
