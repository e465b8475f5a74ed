"""``samforge evaluate``: a checkpoint on a dataset.

* ``--data`` (images; SAM or SAM 2): every prompt protocol of SAM's evaluation -> ``metrics.json`` (stable keys),
  ``per_image.csv``, ``best_worst.png``; ``--prompts stored``: the prompts stored with the data instead.
* ``--video`` (SAM 2): tracking from each object's first frame -> ``video_metrics.json`` (J, F, J&F),
  ``per_object.csv``, ``overlay.png``.
* ``--volumes`` (SAM 2): each object prompted on its largest slice and propagated both ways -> 3D Dice/IoU in
  ``volume_metrics.json``, ``per_object.csv``, ``overlay.png``.

``--split RUN_DIR`` keeps only the cases that training run held out (its ``split.json``).

With a baseline (``--baseline``, or the base model itself when ``--adapter`` is given) the baseline is evaluated
the same way into ``--out/baseline/``, and ``comparison.json`` and ``before_after.png`` show the two side by side.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

from samforge.cli.common import add_model_args, load_model, prepare_out_dir
from samforge.data.readers import open_dataset, summarize_bad_samples
from samforge.data.recipes import RECIPES
from samforge.data.split import read_split, split_datasets
from samforge.evaluate import evaluate_dataset, format_table
from samforge.evaluate.compare import (before_after_png, compare_metrics, compare_scalars, format_comparison,
                                       format_scalar_comparison, write_comparison)
from samforge.evaluate.video_metrics import video_overlay_png
from samforge.evaluate.volume_metrics import VOLUME_PROMPTS
from samforge.models.configs import SAM_CONFIGS
from samforge.models.load import load_model as load_checkpoint
from samforge.models.sam import Sam
from samforge.models.sam2 import SAM2_CONFIGS, SAM2Base
from samforge.predict.sam2_video_predictor import video_predictor_for
from samforge.train.adapter_file import load_adapter
from samforge.weights import resolve_checkpoint

MAX_BAD_SHOWN = 10


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="measure a model on a dataset: mIoU/Dice per prompt protocol, interactive NoC",
        description="Evaluate a checkpoint on images with instance masks: 1 centre point, 1 random point, "
        "1 box, 3 points, and interactive clicks (mIoU after 1/2/3/5/9 clicks, NoC@85/90). Writes "
        "metrics.json, per_image.csv and best_worst.png to --out.",
    )
    add_model_args(p)
    p.add_argument("--data", default=None,
                   help="COCO JSON file, image+mask folder, .npz, refuge:PATH (REFUGE fundus: adds disc/cup Dice "
                   "and IoU as Medical-SAM2 reports them), or synthetic[:N[:SIZE]] / synthetic-fundus[:N[:SIZE]]")
    p.add_argument("--video", default=None, metavar="DATA",
                   help="evaluate video tracking (SAM 2) instead: a DAVIS-layout folder (JPEGImages/, Annotations/) "
                   "or synthetic-video[:N[:SIZE[:FRAMES[:SEED]]]]; writes video_metrics.json (J, F, J&F), "
                   "per_object.csv and overlay.png")
    p.add_argument("--volumes", default=None, metavar="DATA",
                   help="evaluate 3D segmentation of volumes (SAM 2) instead: MedSAM .npz volume(s), a NIfTI folder "
                   "(images/ of NIfTI volumes or DICOM series folders + labels/), or "
                   "synthetic-medical-volume[:N[:SIZE[:DEPTH[:SEED]]]]; each object is "
                   "prompted on its largest slice and propagated both ways; writes volume_metrics.json (3D Dice, "
                   "IoU), per_object.csv and overlay.png")
    p.add_argument("--axis", type=int, default=None,
                   help="with --volumes: the slicing axis (default 0 for .npz, 2 for NIfTI)")
    p.add_argument("--prompt", default="box", choices=["box", "point", "mask"],
                   help="with --video: each object's prompt on its first visible frame; with --volumes (box or "
                   "point): on its largest slice (default: box)")
    p.add_argument("--images", default=None, help="folder of the COCO images (default: beside the JSON)")
    p.add_argument("--split", default=None, metavar="RUN_DIR",
                   help="evaluate on exactly the cases a training run held out: RUN_DIR/split.json (or the file "
                   "itself), written by samforge train/finetune when no validation data was given. Alone it "
                   "evaluates the images of the split's data; with --data/--volumes/--video DATA, that data's "
                   "held-out cases (e.g. the same folder moved)")
    p.add_argument("--prompts", default="simulated", choices=["simulated", "stored"],
                   help="with --data: simulated (default) runs SAM's prompt protocols and the interactive clicks; "
                   "stored prompts each object with the points/box stored with the data (annotations/<image>.json "
                   "or dataset_info.json beside images/ and masks/; see samforge.data.stored_prompts) -> the "
                   "'stored' mIoU/Dice in metrics.json")
    p.add_argument("--recipe", default=None, choices=list(RECIPES),
                   help="with --data: also evaluate each object on the first prompt this training recipe "
                   "(prompts.recipe, samforge.data.recipes) trains with, drawn as in training (e.g. medsam: the box "
                   "moved outward by 0-5 px) -> the 'recipe' mIoU/Dice in metrics.json")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--max-images", type=int, default=None,
                   help="evaluate only the first N images (clips with --video, volumes with --volumes)")
    p.add_argument("--adapter", default=None,
                   help="LoRA adapter (.safetensors from samforge finetune) applied to the --checkpoint model; "
                   "the plain --checkpoint model is then the baseline unless --baseline names another")
    p.add_argument("--baseline", default=None,
                   help="a second checkpoint evaluated on the same data and shown side by side (e.g. the base "
                   "model before fine-tuning)")
    p.add_argument("--baseline-model-type", default=None, choices=["default", *SAM_CONFIGS, *SAM2_CONFIGS],
                   help="model type of --baseline (not needed for samforge checkpoints)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    split = None
    if args.split is not None:  # the run's held-out cases; alone, of the images of the data it split
        split = read_split(args.split)
        if all(getattr(args, m) is None for m in ("data", "video", "volumes")):
            args.data = split.data
    modes = [m for m in ("data", "video", "volumes") if getattr(args, m) is not None]
    if len(modes) != 1:
        raise ValueError(f"give exactly one of --data (images), --video (clips) or --volumes (3D), got "
                         f"{['--' + m for m in modes] or 'none'}")
    if args.max_images is not None and args.max_images < 1:
        raise ValueError(f"--max-images must be a positive integer, got {args.max_images}")
    if args.seed < 0:
        raise ValueError(f"--seed must be a non-negative integer, got {args.seed}")
    for flag in ("checkpoint", "baseline"):  # an official name, URL or hub id -> its verified cached file
        if getattr(args, flag) is not None:
            setattr(args, flag, str(resolve_checkpoint(getattr(args, flag), what=f"--{flag} file")))
    for flag, path in (("--checkpoint", args.checkpoint), ("--baseline", args.baseline), ("--adapter", args.adapter)):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{flag} file not found: {path}")
    if args.adapter is not None and args.checkpoint is None:
        raise ValueError("--adapter needs --checkpoint: the base model the adapter was trained on")
    if args.images is not None and args.data is None:
        raise ValueError("--images (the images of a COCO json) applies to --data only")
    if args.axis is not None and args.volumes is None:
        raise ValueError("--axis applies to --volumes only")
    if args.prompts != "simulated" and args.data is None:
        raise ValueError(f"--prompts {args.prompts} applies to --data (images) only")
    if args.recipe is not None and (args.data is None or args.prompts != "simulated"):
        raise ValueError(f"--recipe {args.recipe} applies to --data with simulated prompts only")
    if args.data is not None and args.prompt != "box":
        raise ValueError("--prompt applies to --video and --volumes; --data evaluates every prompt protocol")
    if args.volumes is not None and args.prompt not in VOLUME_PROMPTS:
        raise ValueError(f"--volumes takes --prompt {' or '.join(VOLUME_PROMPTS)}, got {args.prompt!r}")

    prepare_out_dir(args.out)
    dataset = _open_data(args)  # before the (slow) model load: bad data fails fast
    if split is not None:
        spec = getattr(args, modes[0])
        dataset = split_datasets(dataset, split, spec)[1]
        print(f"evaluating on the {len(split.val_cases)} held-out cases of {spec} in {args.split} "
              f"({len(dataset)} {'images' if args.data is not None else 'clips'})")
    model, baseline = _models(args)
    if args.data is None and not isinstance(model, SAM2Base):
        raise ValueError(f"--{modes[0]} needs a SAM 2 model (--model sam2.1_hiera_t, or a SAM 2 checkpoint), got a "
                         "SAM (v1) model")
    if baseline is not None and type(baseline) is not type(model) and args.data is None:
        raise ValueError("--baseline must be a SAM 2 model too for --video/--volumes")
    out = Path(args.out)
    evaluate, write_pair = {"data": (_eval_images, _compare_images), "video": (_eval_video, _compare_scalars),
                            "volumes": (_eval_volumes, _compare_scalars)}[modes[0]]
    result = evaluate(model, dataset, args)
    result.write(out)
    if baseline is not None:
        base_result = evaluate(baseline, dataset, args)
        base_result.write(out / "baseline")
        write_pair(out, baseline, model, base_result, result, dataset, args)
    print(f"wrote {out.resolve()}")
    return 0


def _open_data(args: argparse.Namespace):
    if args.data is not None:
        dataset = open_dataset(args.data, images=args.images)
        if dataset.bad_samples or getattr(dataset, "dropped_objects", 0):
            print(summarize_bad_samples(dataset))
        return dataset
    if args.video is not None:
        from samforge.data.davis_dataset import open_video_dataset

        return open_video_dataset(args.video)
    from samforge.data.clip_dataset import open_clip_dataset

    dataset = open_clip_dataset(args.volumes, axis=args.axis)
    if dataset.bad_samples:
        print(summarize_bad_samples(dataset))
    return dataset


def _models(args: argparse.Namespace) -> tuple[Sam | SAM2Base, Sam | SAM2Base | None]:
    """(the model, its baseline or None): ``--baseline``, else the plain base model when ``--adapter`` is given."""
    model = load_model(args)
    baseline = None
    if args.baseline is not None:
        baseline = load_checkpoint(args.baseline, args.baseline_model_type, device=args.device)
    if args.adapter is not None:
        if baseline is None:
            baseline = copy.deepcopy(model)
        load_adapter(model, args.adapter)
    return model, baseline


def _eval_images(model, dataset, args):
    result = evaluate_dataset(model, dataset, seed=args.seed, max_images=args.max_images, prompts=args.prompts,
                              recipe=args.recipe)
    for line in result.skipped[:MAX_BAD_SHOWN]:
        print(f"skipped {line}")
    if len(result.skipped) > MAX_BAD_SHOWN:
        print(f"... and {len(result.skipped) - MAX_BAD_SHOWN} more skipped objects")
    print(format_table(result.to_metrics_dict()))
    if result.refuge is not None:  # REFUGE-like data (disc, cup): what Medical-SAM2 reports, in metrics.json too
        from samforge.evaluate.refuge_metrics import format_refuge_table

        print(format_refuge_table(result.refuge))
    return result


def _eval_video(model, dataset, args):
    from samforge.evaluate.video_metrics import evaluate_video, format_video_table

    result = evaluate_video(video_predictor_for(model), dataset, prompt=args.prompt, max_clips=args.max_images)
    for line in result.skipped[:MAX_BAD_SHOWN]:
        print(f"skipped {line}")
    print(format_video_table(result.to_metrics_dict()))
    return result


def _eval_volumes(model, dataset, args):
    from samforge.evaluate.volume_metrics import evaluate_volumes

    result = evaluate_volumes(video_predictor_for(model), dataset, prompt=args.prompt, max_volumes=args.max_images)
    m = result.to_metrics_dict()
    print(f"3D Dice {m['dice_3d']:.4f}  3D IoU {m['iou_3d']:.4f}  ({m['num_objects']} objects in "
          f"{m['num_volumes']} volumes, {m['prompt']} prompt on the largest slice)")
    return result


def _compare_images(out, baseline, model, base_result, result, dataset, args) -> None:
    comparison = compare_metrics(base_result.to_metrics_dict(), result.to_metrics_dict())
    count = len(dataset) if args.max_images is None else min(len(dataset), args.max_images)
    picture = before_after_png(baseline, model, [dataset[i] for i in range(min(count, 6))],
                               names=("baseline", "model"))
    write_comparison(out, comparison, picture)
    print(format_comparison(comparison))


def _compare_scalars(out, baseline, model, base_result, result, dataset, args) -> None:
    """Video (J, F, J&F) or volumes (3D Dice, IoU): the deltas, and the two overlays one above the other."""
    before, after = base_result.to_metrics_dict(), result.to_metrics_dict()
    keys = [k for k in ("J", "F", "J&F", "dice_3d", "iou_3d") if k in after]
    comparison = compare_scalars(before, after, keys)
    rows = [(f"{label} {name}", tiles) for (label, tiles), (_, base_tiles) in
            zip(result.overlay_rows, base_result.overlay_rows) for name, tiles in (("baseline", base_tiles),
                                                                                  ("model", tiles))]
    picture = video_overlay_png(rows, args.prompt, title="baseline and model on the same objects: prediction "
                                "filled, ground truth outlined in yellow", frame_word="slice" if args.volumes else "frame")
    write_comparison(out, comparison, picture)
    print(format_scalar_comparison(comparison))
