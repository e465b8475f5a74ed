"""Flags and helpers that read the same across subcommands."""

from __future__ import annotations

import argparse
import errno
import os
import tempfile
from pathlib import Path

import torch

from samforge.models.build import build_sam
from samforge.models.configs import SAM_CONFIGS
from samforge.models.load import load_model as load_checkpoint
from samforge.models.sam import Sam
from samforge.models.sam2 import SAM2_CONFIGS, SAM2Base, build_sam2
from samforge.predict.predictor import PRECISIONS
from samforge.weights import model_type_of


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
        "--checkpoint", default=None, help="weights: a file (.pth/.pt official SAM or SAM 2, or samforge; "
        ".safetensors), an official name downloaded and cached on first use (sam_vit_b, sam2.1_hiera_tiny, ...: "
        "samforge weights list; the name implies --model-type), an http(s) URL (#sha256=HEX to verify it) or a "
        "Hugging Face id (facebook/sam2.1-hiera-tiny)"
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights used without --checkpoint")


def add_precision_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--precision", default="fp32", choices=sorted(PRECISIONS),
        help="fp32 (default): bit for bit the official model; fp32-fast: fused attention and re-associated "
        "prompt decoding (float rounding differs, a few borderline mask pixels may flip); bf16: the image "
        "encoder in bfloat16 (fast on CUDA and on CPUs with AVX512-BF16/AMX; elsewhere it warns and runs "
        "fp32-fast); int8: the image encoder's linear layers dynamically quantised (x86 CPUs, AVX2 included; "
        "masks agree with fp32's to a mean IoU of about 0.97); auto: picks for this device and CPU (README: "
        "which precision)",
    )


def load_model(args: argparse.Namespace) -> Sam | SAM2Base:
    """Build the model named by the flags; without a checkpoint, say plainly that weights are random.
    Checkpoints go through ``models.load_model``: samforge training checkpoints need no ``--model-type``."""
    if args.checkpoint is None and args.model_type is None:
        raise ValueError("give --model-type (random weights), or --checkpoint (and --model-type for official files)")
    if args.checkpoint is None:
        print(
            f"WARNING: no --checkpoint given: {args.model_type} has RANDOM weights (seed {args.seed}); "
            "its masks show the pipeline working, not a trained model. For the official weights pass "
            "--checkpoint NAME (e.g. sam_vit_b, sam2.1_hiera_tiny; samforge weights list)."
        )
        torch.manual_seed(args.seed)
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        raise ValueError(f"--device must be a torch device such as cpu or cuda:0, got {args.device!r}") from e
    if args.checkpoint is not None:  # an official name implies its model type: sam_vit_b -> vit_b
        return load_checkpoint(args.checkpoint, args.model_type or model_type_of(args.checkpoint), device=device)
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


def prepare_out_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Check, at the start of a job, that the output folder ``path`` exists or can be made and is writable; a
    ``ValueError`` names the path, what was expected and what was found. Nothing is created (bad input further on
    leaves no folder behind): the job makes the folder when it writes."""
    if not isinstance(path, (str, os.PathLike)) or str(path) == "":
        raise ValueError(f"{flag} must be a folder path, got {path!r}")
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{flag} {out}: expected a folder (existing or to be created), got an existing file")
    existing = out
    while not existing.exists() and existing.parent != existing:  # the folder it would be made in
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{flag} {out}: expected a writable folder, {OS_ERROR_MEANINGS[errno.ENOTDIR]} "
                         f"at {existing}")
    try:  # write permission, read-only file systems, quotas: only trying tells
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".samforge-write-test-"):
            pass
    except OSError as e:
        where = f" at {existing}" if existing != out else ""
        raise ValueError(f"{flag} {out}: expected a writable folder, {describe_os_error(e)}{where}") from e
    return out


def prepare_out_file(path: str | os.PathLike, flag: str = "--out") -> Path:
    """An output file ``path``: not a folder, its folder created and writable (see :func:`prepare_out_dir`)."""
    if not isinstance(path, (str, os.PathLike)) or str(path) == "":
        raise ValueError(f"{flag} must be a file path, got {path!r}")
    out = Path(path)
    if out.is_dir():
        raise ValueError(f"{flag} {out}: expected a file to write, got an existing folder")
    prepare_out_dir(out.parent, f"{flag}'s folder")
    return out


OS_ERROR_MEANINGS = {
    errno.ENOTDIR: "but a part of the path is a file, not a folder",
    errno.ENOENT: "but a folder on the way does not exist and cannot be made there",
    errno.EEXIST: "but a file is in the way",
    errno.EISDIR: "but it is a folder",
    errno.EROFS: "but the file system is read-only",
    errno.EACCES: "but permission is denied",
    errno.EPERM: "but the operation is not permitted",
    errno.ENOSPC: "but the disk is full",
    errno.EDQUOT: "but the disk quota is exhausted",
    errno.ENAMETOOLONG: "but the name is too long",
}


def describe_os_error(e: OSError) -> str:
    """What went wrong with a path, in words: ``"but the file system is read-only"``."""
    return OS_ERROR_MEANINGS.get(e.errno or -1, f"but the system said: {e.strerror or e}")
