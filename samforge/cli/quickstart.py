"""``samforge quickstart``: the embedded default job end to end on the CPU, in about ten minutes.

1. writes held-out synthetic scenes to ``OUT/data/val`` (the folder format the readers load back);
2. trains the small SAM from scratch on synthetic scenes served on the fly (preset ``quickstart``: a few
   minutes; rerunning the command resumes a killed run);
3. evaluates it on the held-out scenes (every protocol) and prints the table;
4. segments one held-out scene from a box and from a point, as ``samforge predict`` does.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from samforge.cli.common import prepare_out_dir
from samforge.cli.predict import predict_to_folder
from samforge.cli.synth import write_scenes
from samforge.data.prompts import interior_point, mask_to_box
from samforge.data.readers import open_dataset
from samforge.models.build import load_sam
from samforge.train.config import load_config
from samforge.train.trainer import train

VAL_SEED = 1_000_000  # held-out scenes: far from the training seeds


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quickstart", help="train a small SAM on synthetic scenes, evaluate it, segment (make quickstart)")
    p.add_argument("--out", default="runs/quickstart", help="output folder (default runs/quickstart)")
    p.add_argument("--minutes", type=float, default=None, help="training time in minutes (default: the preset's, 7.5)")
    p.add_argument("--val-images", type=int, default=32, help="held-out scenes to evaluate on (default 32)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="training settings replacing the preset's")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    out = prepare_out_dir(args.out)
    val_dir = out / "data" / "val"
    if not (val_dir / "masks").is_dir() or len(list((val_dir / "masks").glob("*.png"))) < args.val_images:
        print(f"1/4 writing {args.val_images} held-out synthetic scenes to {val_dir}")
        write_scenes(val_dir, args.val_images, (256, 256), VAL_SEED)
    overrides = [f"out={out}", f"data.val={val_dir}", f"val_images={args.val_images}", *args.overrides]
    if args.minutes is not None:
        overrides.append(f"max_minutes={args.minutes}")
    cfg = load_config("quickstart", overrides)
    print(f"2/4 training the small SAM from scratch for {cfg.max_minutes} minutes (progress below)")
    outcome = train(cfg)  # ends with 3/4: the evaluation on the held-out scenes (table above)
    print(f"3/4 evaluated step {outcome.step} on {args.val_images} held-out scenes -> {out / 'eval'}")

    print("4/4 segmenting a held-out scene with the trained model (box, then point)")
    model = load_sam(out / "checkpoints" / "best.pt")
    sample = open_dataset(val_dir)[0]
    target = int(np.argmax(sample.masks.reshape(len(sample.masks), -1).sum(1)))
    gt = sample.masks[target]
    info = {"image": sample.name, "checkpoint": str(out / "checkpoints" / "best.pt")}
    box = predict_to_folder(model, sample.image, out / "segment_box", None, None, mask_to_box(gt), False, info)
    point = predict_to_folder(model, sample.image, out / "segment_point", interior_point(gt)[None], np.array([1]),
                              None, True, info)
    for name, result in (("box", box), ("point", point)):
        pred = np.array(result["areas"])[result["best"]]
        print(f"   {name}: predicted area {pred} px, true area {int(gt.sum())} px -> {out / ('segment_' + name)}")
    print(f"wrote {out.resolve()}: checkpoints/, metrics.jsonl, curves.png, overlays/, eval/metrics.json, "
          f"eval/best_worst.png, segment_box/overlay.png, segment_point/overlay.png")
    return 0
