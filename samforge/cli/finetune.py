"""``samforge finetune``: adapt a SAM checkpoint to a dataset with LoRA, decoder-only or full fine-tuning.

The same trainer as ``samforge train`` (progress bar, metrics.jsonl, curves.png, overlays, atomic resumable
checkpoints); LoRA runs also write ``adapter.safetensors``, the small file to ship.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from samforge.cli.common import prepare_out_dir
from samforge.models.configs import SAM_CONFIGS
from samforge.models.sam2 import SAM2_CONFIGS
from samforge.train.config import load_config
from samforge.train.trainer import train
from samforge.weights import model_type_of


def parse_base(text: str) -> tuple[str, str]:
    """``TYPE:CHECKPOINT`` (an official or samforge file of a registered SAM or SAM 2 type, e.g.
    ``vit_b:sam_vit_b_01ec64.pth`` or ``sam2.1_hiera_t:sam2.1_hiera_tiny.pt``; CHECKPOINT may also be an official
    name, a URL or a Hugging Face id) or ``CHECKPOINT`` (a samforge checkpoint, which records its model, or an
    official name, which implies it: ``sam_vit_b``) -> (model.type, model.checkpoint)."""
    kind, sep, path = text.partition(":")
    if sep and kind in (*SAM_CONFIGS, *SAM2_CONFIGS, "default"):
        if not path:
            raise ValueError(f"--base {text!r}: expected TYPE:CHECKPOINT with a checkpoint path after the colon")
        return kind, path
    implied = None if Path(text).exists() else model_type_of(text)  # an official name: sam_vit_b -> vit_b
    return implied or "checkpoint", text


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune a SAM checkpoint on your data: LoRA, decoder-only or full",
        description="Fine-tune a SAM checkpoint. --mode lora trains low-rank adapters on the image encoder's Q and "
        "V projections (and the mask decoder unless finetune.train_decoder=false) and writes adapter.safetensors; "
        "--mode decoder freezes both encoders and caches image embeddings on disk; --mode full trains everything "
        "(finetune.layer_decay=0.75 for layer-wise learning-rate decay). Further settings as key=value overrides, "
        "as for samforge train. Rerunning the same command resumes.",
    )
    p.add_argument("--base", required=True,
                   help="the model to start from: TYPE:CHECKPOINT (e.g. vit_b:sam_vit_b_01ec64.pth, "
                   "sam2.1_hiera_t:sam2.1_hiera_tiny.pt), an official name downloaded on first use (sam_vit_b, "
                   "sam2.1_hiera_tiny, medsam_vit_b; samforge weights list) or a samforge checkpoint (which records "
                   "its model type). "
                   "SAM 2 trains on clips of data.num_frames frames (default 1: images)")
    p.add_argument("--data", required=True, help="training data: COCO JSON, image+mask folder, .npz, NIfTI folder, "
                   "synthetic:... or synthetic-medical:...; for SAM 2 also DAVIS-layout clip folders, .npz/NIfTI "
                   "volumes as clips of slices, synthetic-video:... and synthetic-medical-volume:...")
    p.add_argument("--val", default=None, help="held-out data for validation, best.pt and the final evaluation. "
                   "Default: data.val_split (0.2) of --data's cases are held out, seeded, by case (a volume's slices, "
                   "a clip's frames stay together) and listed in OUT/split.json (a rerun keeps them; `samforge "
                   "evaluate --split OUT` evaluates on them); with synthetic --data, the config's synthetic data.val")
    p.add_argument("--mode", required=True, choices=["lora", "decoder", "full"], help="what trains")
    p.add_argument("--rank", type=int, default=None, help="LoRA rank r (default 4)")
    p.add_argument("--alpha", type=float, default=None, help="LoRA scaling alpha (default 4)")
    p.add_argument("--config", default=None, help="YAML file with further settings (applied before the flags)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--vis", type=int, default=None, metavar="N",
                   help="write validation overlays (OUT/overlays/) every N validations and at the end (vis_every; "
                   "default 1: every validation; 0: at the end only)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="settings that replace the config's")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.rank is not None and args.rank <= 0:
        raise ValueError(f"--rank must be a positive integer, got {args.rank}")
    if args.alpha is not None and not args.alpha > 0:
        raise ValueError(f"--alpha must be positive, got {args.alpha}")
    model_type, checkpoint = parse_base(args.base)
    overrides = [f"model.type={model_type}", f"model.checkpoint={checkpoint}", f"data.train={args.data}",
                 f"finetune.mode={args.mode}", f"out={args.out}"]
    if args.val is not None:
        overrides.append(f"data.val={args.val}")
    if args.rank is not None:
        overrides.append(f"finetune.rank={args.rank}")
    if args.alpha is not None:
        overrides.append(f"finetune.alpha={args.alpha}")
    if args.vis is not None:
        if args.vis < 0:
            raise ValueError(f"--vis must be an integer >= 0 (overlays every N validations), got {args.vis}")
        overrides.append(f"vis_every={args.vis}")
    cfg = load_config(args.config, overrides + list(args.overrides))
    prepare_out_dir(cfg.out)
    outcome = train(cfg)
    print(f"wrote {outcome.out.resolve()}")
    return 0
