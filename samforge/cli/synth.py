"""``samforge synth``: write synthetic scenes (the embedded default dataset) as image + label PNGs."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from samforge.data.synthetic import make_scene
from samforge.utils.atomic import atomic_path, save_png
from samforge.viz.overlay import label_image


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
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.num_images < 1:
        raise ValueError(f"--num-images must be >= 1, got {args.num_images}")
    try:
        size = [int(v) for v in args.size.split(",")]
    except ValueError:
        size = []
    if len(size) not in (1, 2):
        raise ValueError(f"--size expects H or H,W, got {args.size!r}")
    hw = (size[0], size[-1])
    out = Path(args.out)
    if args.video is not None:
        if args.video < 1 or args.frames < 1:
            raise ValueError(f"--video and --frames must be >= 1, got {args.video} and {args.frames}")
        write_clips(out, args.video, hw, args.seed, args.frames)
        print(f"wrote {args.video} clips to {out.resolve()}")
        return 0
    write_scenes(out, args.num_images, hw, args.seed)
    print(f"wrote {args.num_images} scenes to {out.resolve()}")
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
