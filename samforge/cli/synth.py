"""``samforge synth``: write synthetic scenes (the embedded default dataset) as image + label PNGs, video clips
in the DAVIS layout (``--video``), or fundus cases in the REFUGE layout (``--fundus``)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from samforge.cli.common import prepare_out_dir
from samforge.data.synthetic import make_scene
from samforge.utils.atomic import atomic_path, save_png
from samforge.viz.overlay import label_image


MIN_SIDE, MAX_SIDE = 32, 4096  # a 4096 x 4096 scene needs about 1 GiB of memory while it is drawn
MAX_SCENES = 100_000  # scenes (clips) per call; frames per clip at most MAX_FRAMES
MAX_FRAMES = 1000
MAX_CLIP_PIXELS = 2**30  # frames x H x W of one clip, which is drawn in memory (about 4 GiB at the bound)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="write synthetic scenes with instance masks",
        description="Write images/<i>.png and masks/<i>.png (16-bit instance labels, 0 = background) to --out.",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--num-images", type=int, default=16, help="how many scenes (default 16)")
    p.add_argument("--size", default="256", metavar="H[,W]", help="image size (default 256)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first scene; scene i uses seed+i")
    p.add_argument("--video", type=int, default=None, metavar="N",
                   help="write N synthetic video clips instead, in the DAVIS layout: JPEGImages/<clip>/00000.jpg ... "
                   "and Annotations/<clip>/00000.png ... (palette PNGs, value k+1 for object k)")
    p.add_argument("--frames", type=int, default=16, help="frames per clip, with --video (default 16)")
    p.add_argument("--fundus", type=int, default=None, metavar="N",
                   help="write N synthetic fundus cases instead, in the REFUGE layout (optic disc and cup drawn by "
                   "7 raters): Training-400/<case>/<case>.jpg, <case>_seg_cup_K.png, <case>_seg_disc_K.png; read "
                   "back with --data refuge:OUT (size >= 64)")
    p.add_argument("--fundus-test", type=int, default=0, metavar="M",
                   help="with --fundus: also write M cases to Test-400/ (seeds after the training cases; default 0)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.num_images <= MAX_SCENES:
        raise ValueError(f"--num-images must be in [1, {MAX_SCENES}], got {args.num_images}")
    try:
        size = [int(v) for v in args.size.split(",")]
    except ValueError:
        size = []
    if len(size) not in (1, 2):
        raise ValueError(f"--size expects H or H,W, got {args.size!r}")
    hw = (size[0], size[-1])
    if not all(MIN_SIDE <= s <= MAX_SIDE for s in hw):
        raise ValueError(f"--size must be between {MIN_SIDE} and {MAX_SIDE} pixels per side (H or H,W), "
                         f"got {args.size!r}")
    if args.video is not None:
        if not 1 <= args.video <= MAX_SCENES or not 1 <= args.frames <= MAX_FRAMES:
            raise ValueError(f"--video must be in [1, {MAX_SCENES}] and --frames in [1, {MAX_FRAMES}], got "
                             f"{args.video} and {args.frames}")
        if args.frames * hw[0] * hw[1] > MAX_CLIP_PIXELS:
            raise ValueError(f"--frames x --size must be at most {MAX_CLIP_PIXELS} pixels per clip (drawn in "
                             f"memory), got {args.frames} x {hw[0]} x {hw[1]} = {args.frames * hw[0] * hw[1]}")
    if args.fundus is not None and args.video is not None:
        raise ValueError("give at most one of --video and --fundus")
    if args.fundus is not None:
        return _write_fundus(args, hw)
    if args.fundus_test:
        raise ValueError(f"--fundus-test applies to --fundus only, got --fundus-test {args.fundus_test}")
    out = prepare_out_dir(args.out)
    if args.video is not None:
        write_clips(out, args.video, hw, args.seed, args.frames)
        print(f"wrote {args.video} clips to {out.resolve()}")
        return 0
    write_scenes(out, args.num_images, hw, args.seed)
    print(f"wrote {args.num_images} scenes to {out.resolve()}")
    return 0


def _write_fundus(args: argparse.Namespace, hw: tuple[int, int]) -> int:
    """``--fundus N [--fundus-test M]``: synthetic fundus cases in the REFUGE layout."""
    from samforge.data.synthetic_fundus import write_fundus_layout

    if not 1 <= args.fundus <= MAX_SCENES or not 0 <= args.fundus_test <= MAX_SCENES:
        raise ValueError(f"--fundus must be in [1, {MAX_SCENES}] and --fundus-test in [0, {MAX_SCENES}], got "
                         f"{args.fundus} and {args.fundus_test}")
    if min(hw) < 64:
        raise ValueError(f"--fundus needs --size >= 64 per side, got {args.size!r}")
    out = prepare_out_dir(args.out)
    write_fundus_layout(out, args.fundus, hw, args.seed, part="Training-400")
    if args.fundus_test:
        write_fundus_layout(out, args.fundus_test, hw, args.seed + args.fundus, part="Test-400")
    print(f"wrote {args.fundus} training and {args.fundus_test} test fundus cases to {out.resolve()}")
    return 0


def write_scenes(out: Path, num_images: int, image_size: tuple[int, int], seed: int) -> list[Path]:
    """Write scenes ``seed .. seed+num_images-1``; returns the image paths."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    paths = []
    for i in tqdm(range(num_images), desc="synthetic scenes", disable=num_images < 8):
        scene = make_scene(seed + i, image_size=image_size)
        name = f"{i:05d}.png"
        save_png(scene.image, out / "images" / name)
        labels = label_image(scene.masks).astype(np.uint16)
        with atomic_path(out / "masks" / name) as tmp:
            Image.fromarray(labels).save(tmp, format="PNG")
        paths.append(out / "images" / name)
    return paths


def write_clips(out: Path, num_clips: int, image_size: tuple[int, int], seed: int, num_frames: int) -> list[Path]:
    """Write clips ``seed .. seed+num_clips-1`` as ``clip_<i>`` in the DAVIS layout; returns their frame folders."""
    from samforge.data.synthetic_video import make_clip

    return [make_clip(seed + i, num_frames=num_frames, image_size=image_size).write_davis(out, f"clip_{i:04d}")
            for i in tqdm(range(num_clips), desc="synthetic clips", disable=num_clips < 4)]
