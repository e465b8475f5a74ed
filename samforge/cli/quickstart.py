"""``samforge quickstart``: the embedded default job, end to end, on a synthetic scene.

For now it shows the prediction path: a synthetic scene, a point on its largest object, ``samforge predict``'s
job on it. Training a small SAM first (so the masks are right) comes with the training issue.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from samforge.cli.common import add_model_args, load_model
from samforge.cli.predict import predict_to_folder
from samforge.data.synthetic import make_scene
from samforge.utils.atomic import save_png


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quickstart", help="run the default job on a synthetic scene (what `make quickstart` runs)")
    add_model_args(p, default_model="vit_b")
    p.add_argument("--out", default="runs/quickstart", help="output folder (default runs/quickstart)")
    p.add_argument("--size", type=int, default=768, help="height of the synthetic scene; width is 4/3 of it")
    p.set_defaults(run=run)


def point_inside(mask: np.ndarray) -> np.ndarray:
    """The mask pixel nearest to the mask's centroid, as (x, y)."""
    ys, xs = np.nonzero(mask)
    i = np.argmin((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2)
    return np.array([xs[i], ys[i]], dtype=float)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    scene = make_scene(seed=args.seed, image_size=(args.size, args.size * 4 // 3))
    out.mkdir(parents=True, exist_ok=True)
    save_png(scene.image, out / "scene.png")
    target = int(np.argmax(scene.masks.reshape(len(scene.masks), -1).sum(1)))
    point = point_inside(scene.masks[target])
    print(f"synthetic scene {scene.image.shape[1]}x{scene.image.shape[0]} with {len(scene.masks)} objects; "
          f"prompt: a point at ({point[0]:.0f}, {point[1]:.0f}) on its largest object ({scene.shapes[target]})")
    model = load_model(args)
    start = time.perf_counter()
    result = predict_to_folder(
        model, scene.image, out, point[None], np.array([1]),
        box=None, info={"image": str(out / "scene.png"), "model_type": args.model_type, "checkpoint": args.checkpoint},
    )
    seconds = time.perf_counter() - start
    best = result["best"]
    print(f"predicted {len(result['scores'])} masks in {seconds:.1f} s; best score {result['scores'][best]:.3f}")
    if args.checkpoint is None:
        print("(random weights: the mask is noise until a trained checkpoint is given)")
    print(f"true object area {int(scene.masks[target].sum())} px, predicted best mask area {result['areas'][best]} px")
    print(f"wrote {out.resolve()}: scene.png, overlay.png, mask.png, masks/, scores.json")
    return 0
