"""``samforge evaluate``: a checkpoint on a dataset, under every prompt protocol of SAM's evaluation.

Writes ``metrics.json`` (stable keys), ``per_image.csv`` and ``best_worst.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import torch

from samforge.data.synthetic_dataset import SyntheticDataset
from samforge.evaluate import evaluate_dataset, format_table
from samforge.models.build import build_sam, load_sam
from samforge.models.configs import SAM_CONFIGS
from samforge.models.sam import Sam

MAX_BAD_SHOWN = 10


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="measure a model on a dataset: mIoU/Dice per prompt protocol, interactive NoC",
        description="Evaluate a checkpoint on images with instance masks: 1 centre point, 1 random point, "
        "1 box, 3 points, and interactive clicks (mIoU after 1/2/3/5/9 clicks, NoC@85/90). Writes "
        "metrics.json, per_image.csv and best_worst.png to --out.",
    )
    p.add_argument("--checkpoint", default=None,
                   help="samforge training checkpoint, or an official file (then give --model-type); "
                   "without it the model has RANDOM weights")
    p.add_argument("--model-type", "--model", dest="model_type", default=None, choices=["default", *SAM_CONFIGS],
                   help="model configuration; needed for official files, read from samforge checkpoints")
    p.add_argument("--data", required=True,
                   help="COCO JSON file, image+mask folder, .npz, or synthetic[:N[:SIZE]]")
    p.add_argument("--images", default=None, help="folder of the COCO images (default: beside the JSON)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")
    p.add_argument("--max-images", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--seed", type=int, default=0, help="seed of the random-point prompts (and of random weights)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.max_images is not None and args.max_images < 1:
        raise ValueError(f"--max-images must be a positive integer, got {args.max_images}")
    if args.seed < 0:
        raise ValueError(f"--seed must be a non-negative integer, got {args.seed}")
    if args.checkpoint is None and args.model_type is None:
        raise ValueError("give --checkpoint (and --model-type for official files), or --model-type for random weights")
    device = parse_device(args.device)
    dataset = open_data(args.data, args.images)  # before the (slow) model load: bad data fails fast
    bad = bad_samples_report(dataset)
    if bad:
        print(bad)
    model = load_eval_model(args.checkpoint, args.model_type, device, args.seed)
    result = evaluate_dataset(model, dataset, seed=args.seed, max_images=args.max_images)
    for line in result.skipped[:MAX_BAD_SHOWN]:
        print(f"skipped {line}")
    if len(result.skipped) > MAX_BAD_SHOWN:
        print(f"... and {len(result.skipped) - MAX_BAD_SHOWN} more skipped objects")
    out = Path(args.out)
    result.write(out)
    print(format_table(result.to_metrics_dict()))
    print(f"wrote {out.resolve()}")
    return 0


def parse_device(text: str) -> torch.device:
    try:
        return torch.device(text)
    except RuntimeError as e:
        raise ValueError(f"--device must be a torch device such as cpu or cuda:0, got {text!r}") from e


def load_eval_model(checkpoint: str | None, model_type: str | None, device: torch.device, seed: int) -> Sam:
    """A samforge or official checkpoint (``load_sam``), or random weights with a loud warning."""
    if checkpoint is None:
        print(
            f"WARNING: no --checkpoint given: {model_type} has RANDOM weights (seed {seed}); "
            "its metrics measure the pipeline, not a trained model."
        )
        torch.manual_seed(seed)
        return build_sam(model_type, device=device)
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"--checkpoint file not found: {checkpoint}")
    return load_sam(checkpoint, model_type, device=device)


def open_data(spec: str, images: str | None) -> Any:
    """``samforge.data.readers.open_dataset`` when available; otherwise only ``synthetic[:N[:SIZE]]``."""
    try:
        from samforge.data.readers import open_dataset
    except ModuleNotFoundError as e:
        if e.name != "samforge.data.readers":
            raise
        return _open_synthetic(spec)
    return open_dataset(spec, images=images)


def _open_synthetic(spec: str) -> SyntheticDataset:
    m = re.fullmatch(r"synthetic(?::(\d+)(?::(\d+))?)?", spec)
    if m is None:
        raise ValueError(f"--data: unknown dataset {spec!r}; expected synthetic[:N[:SIZE]] "
                         "(file readers are not installed in this build)")
    n, size = int(m.group(1) or 64), int(m.group(2) or 256)
    if n < 1 or size < 32:
        raise ValueError(f"--data: synthetic needs N >= 1 images of SIZE >= 32 px, got {spec!r}")
    return SyntheticDataset(n, image_size=(size, size))


def bad_samples_report(dataset: Any) -> str:
    """What the reader skipped (``summarize_bad_samples`` when available), or "" when nothing was."""
    bad = list(getattr(dataset, "bad_samples", []) or [])
    if not bad and not getattr(dataset, "dropped_objects", 0):
        return ""
    try:
        from samforge.data.readers import summarize_bad_samples
    except ImportError:
        lines = [f"{len(bad)} bad samples skipped:"] + [f"  {b}" for b in bad[:MAX_BAD_SHOWN]]
        return "\n".join(lines + ([f"  ... and {len(bad) - MAX_BAD_SHOWN} more"] if len(bad) > MAX_BAD_SHOWN else []))
    return str(summarize_bad_samples(dataset))
