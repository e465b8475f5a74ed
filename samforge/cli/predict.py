"""``samforge predict``: masks for point/box prompts on one image, written as PNGs and JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from samforge.cli.common import add_model_args, add_precision_arg, load_model, parse_floats, prepare_out_dir
from samforge.data.image_io import read_image_rgb
from samforge.models.sam import Sam
from samforge.models.sam2 import SAM2Base
from samforge.predict.checks import check_box, check_points
from samforge.predict.predictor import SamPredictor
from samforge.predict.sam2_predictor import SAM2ImagePredictor
from samforge.utils.atomic import atomic_write_bytes, save_png
from samforge.viz.overlay import draw_overlay


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="segment one image from point and/or box prompts",
        description="Segment one image from prompts. Writes mask.png (best mask), masks/ (every mask), "
        "scores.json and overlay.png to --out.",
    )
    add_model_args(p)
    add_precision_arg(p)
    p.add_argument("--image", required=True, help="image file (PNG, JPEG, TIFF, ...)")
    p.add_argument(
        "--point", action="append", default=[], metavar="X,Y[,LABEL]",
        help="a point prompt in pixels; LABEL 1 foreground (default), 0 background; repeat for more",
    )
    p.add_argument("--box", default=None, metavar="X0,Y0,X1,Y1", help="a box prompt in pixels")
    p.add_argument("--single-mask", action="store_true", help="one mask instead of three (multimask_output=False)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    points = [parse_floats(s, (2, 3), "--point") for s in args.point]
    if not points and args.box is None:
        raise ValueError("give at least one prompt: --point X,Y[,LABEL] or --box X0,Y0,X1,Y1")
    coords = np.array([p[:2] for p in points], dtype=float) if points else None
    labels = np.array([p[2] if len(p) == 3 else 1.0 for p in points]) if points else None
    box = np.array(parse_floats(args.box, (4,), "--box")) if args.box is not None else None
    image = read_image_rgb(args.image)
    # check the prompts against the image before the (slow) model load and image embedding
    if coords is not None:
        # labels: 1, 0 or -1 (not 0.5 -> 0); the command line refuses prompts past the image (the API accepts them)
        coords, labels = check_points(coords, labels, image.shape[:2], outside="refuse")
    if box is not None:
        check_box(box, image.shape[:2], outside="refuse")
    prepare_out_dir(args.out)
    model = load_model(args)
    result = predict_to_folder(
        model, image, Path(args.out), coords, labels, box, multimask_output=not args.single_mask,
        info={"image": str(args.image), "model_type": args.model_type, "checkpoint": args.checkpoint,
              "precision": args.precision},
        precision=args.precision,
    )
    print(f"best mask {result['best']}: score {result['scores'][result['best']]:.3f}, area {result['areas'][result['best']]} px")
    print(f"wrote {Path(args.out).resolve()}")
    return 0


def predict_to_folder(
    model: Sam | SAM2Base,
    image: np.ndarray,
    out: Path,
    point_coords: np.ndarray | None,
    point_labels: np.ndarray | None,
    box: np.ndarray | None,
    multimask_output: bool = True,
    info: dict | None = None,
    precision: str = "fp32",
) -> dict:
    """Predict and write ``mask.png``, ``masks/mask_<i>.png``, ``scores.json`` and ``overlay.png`` to ``out``.
    ``precision``: the predictor's (fp32, fp32-fast, bf16)."""
    make = SAM2ImagePredictor if isinstance(model, SAM2Base) else SamPredictor
    predictor = make(model, precision=precision)
    predictor.set_image(image)
    masks, scores, _ = predictor.predict(point_coords, point_labels, box, multimask_output=multimask_output)
    masks = np.asarray(masks).astype(bool)  # SAM 2 gives float32 0/1 masks, as the official predictor does
    best = int(np.argmax(scores))
    (out / "masks").mkdir(parents=True, exist_ok=True)
    for i, mask in enumerate(masks):
        save_png(mask.astype(np.uint8) * 255, out / "masks" / f"mask_{i}.png")
    save_png(masks[best].astype(np.uint8) * 255, out / "mask.png")
    overlay = draw_overlay(image, masks[best], points=point_coords, point_labels=point_labels,
                           boxes=None if box is None else box[None])
    save_png(overlay, out / "overlay.png")
    result = {
        **(info or {}),
        "points": None if point_coords is None else point_coords.tolist(),
        "point_labels": None if point_labels is None else point_labels.tolist(),
        "box": None if box is None else box.tolist(),
        "scores": [float(s) for s in scores],
        "areas": [int(m.sum()) for m in masks],
        "best": best,
    }
    atomic_write_bytes(out / "scores.json", json.dumps(result, indent=2).encode())
    return result
