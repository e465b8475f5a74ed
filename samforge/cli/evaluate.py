"""``samforge evaluate``: a checkpoint on a dataset, under every prompt protocol of SAM's evaluation.

Writes ``metrics.json`` (stable keys), ``per_image.csv`` and ``best_worst.png`` to ``--out``. With a baseline
(``--baseline``, or the base model itself when ``--adapter`` is given) it also evaluates the baseline into
``--out/baseline/`` and writes ``comparison.json`` and ``before_after.png`` side by side.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

from samforge.cli.common import add_model_args, load_model
from samforge.data.readers import open_dataset, summarize_bad_samples
from samforge.evaluate import evaluate_dataset, format_table
from samforge.evaluate.compare import before_after_png, compare_metrics, format_comparison, write_comparison
from samforge.models.build import load_sam
from samforge.models.configs import SAM_CONFIGS
from samforge.models.sam2 import SAM2_CONFIGS
from samforge.train.adapter_file import load_adapter

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
                   help="COCO JSON file, image+mask folder, .npz, or synthetic[:N[:SIZE]]")
    p.add_argument("--video", default=None, metavar="DATA",
                   help="evaluate video tracking (SAM 2) instead: a DAVIS-layout folder (JPEGImages/, Annotations/) "
                   "or synthetic-video[:N[:SIZE[:FRAMES[:SEED]]]]; writes video_metrics.json (J, F, J&F), "
                   "per_object.csv and overlay.png")
    p.add_argument("--prompt", default="box", choices=["box", "point", "mask"],
                   help="with --video: each object's prompt on its first visible frame (default: box)")
    p.add_argument("--images", default=None, help="folder of the COCO images (default: beside the JSON)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--max-images", type=int, default=None,
                   help="evaluate only the first N images (clips, with --video)")
    p.add_argument("--adapter", default=None,
                   help="LoRA adapter (.safetensors from samforge finetune) applied to the --checkpoint model; "
                   "the plain --checkpoint model is then the baseline unless --baseline names another")
    p.add_argument("--baseline", default=None,
                   help="a second checkpoint evaluated on the same data and shown side by side (e.g. the base "
                   "model before fine-tuning)")
    p.add_argument("--baseline-model-type", default=None, choices=["default", *SAM_CONFIGS],
                   help="model type of --baseline (not needed for samforge checkpoints)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if (args.data is None) == (args.video is None):
        raise ValueError("give one of --data (images) or --video (clips)")
    if args.video is not None:
        return run_video(args)
    if args.max_images is not None and args.max_images < 1:
        raise ValueError(f"--max-images must be a positive integer, got {args.max_images}")
    if args.seed < 0:
        raise ValueError(f"--seed must be a non-negative integer, got {args.seed}")
    if args.model_type in SAM2_CONFIGS and (args.adapter is not None or args.baseline is not None):
        raise ValueError(f"--adapter and --baseline take SAM (v1) models for now, got {args.model_type!r}")
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        raise FileNotFoundError(f"--checkpoint file not found: {args.checkpoint}")
    dataset = open_dataset(args.data, images=args.images)  # before the (slow) model load: bad data fails fast
    if dataset.bad_samples or getattr(dataset, "dropped_objects", 0):
        print(summarize_bad_samples(dataset))
    model = load_model(args)
    baseline = None
    if args.baseline is not None:
        if not Path(args.baseline).is_file():
            raise FileNotFoundError(f"--baseline file not found: {args.baseline}")
        baseline = load_sam(args.baseline, args.baseline_model_type)
    if args.adapter is not None:
        if args.checkpoint is None:
            raise ValueError("--adapter needs --checkpoint: the base model the adapter was trained on")
        if baseline is None:
            baseline = copy.deepcopy(model)
        load_adapter(model, args.adapter)
    result = evaluate_dataset(model, dataset, seed=args.seed, max_images=args.max_images)
    for line in result.skipped[:MAX_BAD_SHOWN]:
        print(f"skipped {line}")
    if len(result.skipped) > MAX_BAD_SHOWN:
        print(f"... and {len(result.skipped) - MAX_BAD_SHOWN} more skipped objects")
    out = Path(args.out)
    result.write(out)
    print(format_table(result.to_metrics_dict()))
    if baseline is not None:
        base_result = evaluate_dataset(baseline, dataset, seed=args.seed, max_images=args.max_images)
        base_result.write(out / "baseline")
        comparison = compare_metrics(base_result.to_metrics_dict(), result.to_metrics_dict())
        count = len(dataset) if args.max_images is None else min(len(dataset), args.max_images)
        picture = before_after_png(baseline, model, [dataset[i] for i in range(min(count, 6))],
                                   names=("baseline", "model"))
        write_comparison(out, comparison, picture)
        print(format_comparison(comparison))
    print(f"wrote {out.resolve()}")
    return 0


def run_video(args: argparse.Namespace) -> int:
    """``--video``: track each object from its first visible frame with SAM2VideoPredictor, score J / F / J&F."""
    import torch

    from samforge.data.davis_dataset import open_video_dataset
    from samforge.evaluate.video_metrics import evaluate_video, format_video_table
    from samforge.predict.sam2_video_predictor import build_sam2_video_predictor

    if args.model_type not in SAM2_CONFIGS:
        raise ValueError(f"--video needs a SAM 2 model (--model sam2.1_hiera_t, ...), got {args.model_type!r}")
    if args.adapter is not None or args.baseline is not None or args.images is not None:
        raise ValueError("--adapter, --baseline and --images do not apply to --video")
    if args.max_images is not None and args.max_images < 1:
        raise ValueError(f"--max-images must be a positive integer, got {args.max_images}")
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        raise FileNotFoundError(f"--checkpoint file not found: {args.checkpoint}")
    dataset = open_video_dataset(args.video)  # before the (slow) model load: bad data fails fast
    if args.checkpoint is None:
        print(f"WARNING: no --checkpoint given: {args.model_type} has RANDOM weights (seed {args.seed}); "
              "its masks show the pipeline working, not a trained model.")
        torch.manual_seed(args.seed)
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        raise ValueError(f"--device must be a torch device such as cpu or cuda:0, got {args.device!r}") from e
    predictor = build_sam2_video_predictor(args.model_type, args.checkpoint, device=device)
    result = evaluate_video(predictor, dataset, prompt=args.prompt, max_clips=args.max_images)
    for line in result.skipped[:MAX_BAD_SHOWN]:
        print(f"skipped {line}")
    out = Path(args.out)
    result.write(out)
    print(format_video_table(result.to_metrics_dict()))
    print(f"wrote {out.resolve()}")
    return 0
