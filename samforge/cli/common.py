"""Flags and helpers that read the same across subcommands."""

from __future__ import annotations

import argparse

import torch

from samforge.models.build import build_sam
from samforge.models.configs import SAM_CONFIGS
from samforge.models.load import load_model as load_checkpoint
from samforge.models.sam import Sam
from samforge.models.sam2 import SAM2_CONFIGS, SAM2Base, build_sam2
from samforge.predict.predictor import PRECISIONS


def add_model_args(parser: argparse.ArgumentParser, default_model: str | None = None) -> None:
    parser.add_argument(
        "--model-type",
        "--model",
        dest="model_type",
        default=default_model,
        choices=["default", *SAM_CONFIGS, *SAM2_CONFIGS],
        metavar="MODEL",
        help="model configuration: SAM (vit_h, vit_l, vit_b, vit_small; default = vit_h, as in segment_anything) "
        "or SAM 2 (sam2.1_hiera_t, sam2.1_hiera_s, sam2.1_hiera_b+, sam2.1_hiera_l; sam2_hiera_* likewise). "
        "Optional with a samforge training checkpoint, which records its model",
    )
    parser.add_argument(
        "--checkpoint", default=None, help="weights file (.pth/.pt official SAM or SAM 2, or samforge; .safetensors)"
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights used without --checkpoint")


def add_precision_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--precision", default="fp32", choices=sorted(PRECISIONS),
        help="fp32 (default): bit for bit the official model; fp32-fast: fused attention and re-associated "
        "prompt decoding (float rounding differs, a few borderline mask pixels may flip); bf16: the image "
        "encoder in bfloat16 (fast on CUDA and on CPUs with AVX512-BF16/AMX, slow elsewhere)",
    )


def load_model(args: argparse.Namespace) -> Sam | SAM2Base:
    """Build the model named by the flags; without a checkpoint, say plainly that weights are random.
    Checkpoints go through ``models.load_model``: samforge training checkpoints need no ``--model-type``."""
    if args.checkpoint is None and args.model_type is None:
        raise ValueError("give --model-type (random weights), or --checkpoint (and --model-type for official files)")
    if args.checkpoint is None:
        print(
            f"WARNING: no --checkpoint given: {args.model_type} has RANDOM weights (seed {args.seed}); "
            "its masks show the pipeline working, not a trained model."
        )
        torch.manual_seed(args.seed)
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        raise ValueError(f"--device must be a torch device such as cpu or cuda:0, got {args.device!r}") from e
    if args.checkpoint is not None:
        return load_checkpoint(args.checkpoint, args.model_type, device=device)
    if args.model_type in SAM2_CONFIGS:
        return build_sam2(args.model_type, device=device)
    return build_sam(args.model_type, device=device)


def parse_floats(text: str, count: tuple[int, ...], name: str) -> list[float]:
    """``"1,2,3"`` -> floats, with the number of values one of ``count``."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in count:
        expected = " or ".join(str(c) for c in count)
        raise ValueError(f"{name} expects {expected} comma-separated numbers, got {text!r}")
    return values
