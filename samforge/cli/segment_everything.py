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
``torchrun --nproc_per_node N -m samforge segment-everything ...`` shares the images out among N processes and
writes the same folder (``samforge.cli.folder_masks``): rank 0 rewrites annotations.json after each of its images
and merges every rank's at the end.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from samforge.cli.common import add_model_args, add_precision_arg, load_model, prepare_out_dir
from samforge.cli.folder_masks import GENERATOR_FLAGS, SAM2_DEFAULTS, SAM_DEFAULTS, check_generator_flags
from samforge.cli.folder_masks import check_settings, overlay_image, plan_folder, scan_folder, segment_pending
from samforge.models.sam2 import SAM2Base
from samforge.predict.amg_outputs import coco_instances, label_image_from_records
from samforge.predict.automatic_mask_generator import SamAutomaticMaskGenerator
from samforge.predict.sam2_automatic_mask_generator import SAM2AutomaticMaskGenerator
from samforge.utils.atomic import atomic_path, atomic_write_bytes, remove_stale_temporaries, save_png
from samforge.utils.distributed import processes_from_env

SUBDIRS = ("masks", "labels", "overlays")


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


def run(args: argparse.Namespace) -> int:
    kwargs = check_generator_flags(args)
    images_dir = Path(args.images_dir)
    images, skipped = scan_folder(images_dir)
    out = prepare_out_dir(args.out)
    settings = _settings(args, kwargs)

    def prepare() -> None:  # rank 0, before any rank writes
        for d in SUBDIRS:
            (out / d).mkdir(parents=True, exist_ok=True)
        for removed in remove_stale_temporaries([out, *(out / d for d in SUBDIRS)]):
            print(f"removed {removed.name}, a temporary file left by a killed run")
        check_settings(out, settings)

    def write_annotations() -> None:
        entries = [{"file_name": p.relative_to(images_dir).as_posix(), "height": plan.sizes[p][0],
                    "width": plan.sizes[p][1], "records": plan.done[p]} for p in plan.in_order()]
        coco = coco_instances(entries, category="object",
                              info={"description": "samforge segment-everything", "images_dir": str(images_dir),
                                    **settings})
        atomic_write_bytes(out / "annotations.json", json.dumps(coco).encode())

    def make_generator() -> SamAutomaticMaskGenerator | SAM2AutomaticMaskGenerator:
        model = load_model(argparse.Namespace(**{**vars(args), "device": str(device)}))
        make = SAM2AutomaticMaskGenerator if isinstance(model, SAM2Base) else SamAutomaticMaskGenerator
        return make(model, output_mode="coco_rle", precision=args.precision, **kwargs)

    def save(path: Path, image: np.ndarray, records: list[dict]) -> None:
        h, w = image.shape[:2]
        save_label_png(label_image_from_records(records, h, w), out / "labels" / f"{path.stem}.png")
        save_png(overlay_image(image, records), out / "overlays" / f"{path.stem}.png")

    with processes_from_env(args.device) as procs:
        device = procs.device(args.device)
        plan = plan_folder(images, out / "masks", procs, prepare)
        if procs.main:
            unreadable = len(plan.skipped)
            print(f"{len(images)} images in {images_dir}: {len(plan.done)} already done, {len(plan.pending)} to "
                  f"segment" + (f", {unreadable} unreadable" if unreadable else "")
                  + (f", shared out among {procs.world_size} processes" if procs.distributed else ""))
        segment_pending(plan, procs, make_generator, "segment-everything", save=save, after_image=write_annotations)
        if not procs.main:
            return 0
    skipped += plan.skipped
    if not plan.done:
        lines = "; ".join(f"{n}: {why}" for n, why in skipped)
        raise ValueError(f"no image of {images_dir} could be segmented: {lines}")
    write_annotations()

    n_masks = sum(len(r) for r in plan.done.values())
    print(f"{len(plan.done)} images, {n_masks} masks: wrote {out.resolve()} (annotations.json, masks/, labels/, "
          "overlays/)")
    if skipped:
        print(f"skipped {len(skipped)} file{'s' if len(skipped) > 1 else ''}:")
        for name, why in skipped:
            print(f"  {name}: {why}")
    return 0
