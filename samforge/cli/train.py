"""``samforge train``: train a SAM (from scratch or from a checkpoint) on a dataset."""

from __future__ import annotations

import argparse

from samforge.cli.common import prepare_out_dir
from samforge.train.config import load_config
from samforge.train.trainer import train


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a SAM on a dataset (resumes a killed run from its last checkpoint)",
        description="Train a SAM. Settings come from the defaults, then --config, then key=value overrides "
        "(e.g. steps=500 optim.lr=1e-4 data.train=DIR model.type=vit_small). The run folder (out=...) gets "
        "config.yaml, checkpoints/last.pt and best.pt, metrics.jsonl, curves.png, overlays/ and eval/. "
        "Rerunning the same command resumes from checkpoints/last.pt. Under torchrun it trains on every process. "
        "Validation: data.val=DATA; without it, training on your own data (anything but synthetic*) holds out "
        "data.val_split=0.2 of data.train's cases (seeded by seed; whole scans, clips or images) and writes them to "
        "OUT/split.json (kept on resume; data.split=FILE reuses another run's). A preset's synthetic data.val applies "
        "only to synthetic data.train: to validate your data's training on synthetic scenes say data.val=synthetic... "
        "on the command line. prompts.source=stored trains on the prompts stored with the data "
        "(annotations/<image>.json or dataset_info.json) instead of simulated ones.",
    )
    p.add_argument("--config", default=None, help="YAML file with settings (see samforge/train/config.py)")
    p.add_argument("--out", default=None, help="run folder (same as the override out=DIR)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="settings that replace the config's")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides) + ([f"out={args.out}"] if args.out else [])
    cfg = load_config(args.config, overrides)
    prepare_out_dir(cfg.out, "out")
    outcome = train(cfg)
    print(f"wrote {outcome.out.resolve()}")
    return 0
