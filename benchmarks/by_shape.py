"""Where a SAM trained on synthetic scenes fails: held-out box and centre-point IoU per object, by shape kind and
by object area, with the ceiling of the 256-px model's 64x64 low-res mask for each kind (the true mask
area-downsampled to the low-res grid, upsampled bilinearly and thresholded, as the model's logits are).

    python benchmarks/by_shape.py runs/scratch_small/checkpoints/best.pt [--images 64] [--seed 1000000]

Prints a table and writes ``by_shape.json`` beside the checkpoint (or to ``--out``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from samforge.data.prompts import interior_point, mask_to_box
from samforge.data.synthetic import SHAPE_KINDS, make_scene
from samforge.evaluate.metrics import mask_iou
from samforge.models.load import load_model
from samforge.models.sam import Sam
from samforge.predict.predictor import SamPredictor

AREA_BINS = ((0, 300), (300, 1000), (1000, 3000), (3000, None))


def low_res_ceiling(gt: np.ndarray, low_res: int) -> float:
    """IoU of the true mask after a round trip through the low-res grid (area down, bilinear up, > 0.5)."""
    t = torch.from_numpy(gt.astype(np.float32))[None, None]
    down = F.interpolate(t, (low_res, low_res), mode="area")
    up = F.interpolate(down, gt.shape, mode="bilinear", align_corners=False)[0, 0].numpy()
    return mask_iou(up > 0.5, gt)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="a SAM (v1) checkpoint: samforge training or official")
    parser.add_argument("--model-type", default=None, help="for official files that do not record their model")
    parser.add_argument("--images", type=int, default=64, help="held-out scenes (default 64)")
    parser.add_argument("--seed", type=int, default=1_000_000, help="seed of the first scene (default: the "
                        "held-out seeds of the scratch_small preset)")
    parser.add_argument("--size", type=int, default=256, help="scene size in pixels (default 256)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default: by_shape.json beside the checkpoint)")
    args = parser.parse_args()
    if args.images < 1 or args.size < 32:
        raise SystemExit(f"--images must be >= 1 and --size >= 32, got {args.images} and {args.size}")
    model = load_model(args.checkpoint, args.model_type)
    if not isinstance(model, Sam):
        raise SystemExit(f"{args.checkpoint} holds a SAM 2 model; this script reads SAM (v1) models")
    predictor = SamPredictor(model)
    low_res = model.prompt_encoder.mask_input_size[0]
    rows = []
    for seed in range(args.seed, args.seed + args.images):
        scene = make_scene(seed, image_size=(args.size, args.size))
        predictor.set_image(scene.image)
        for gt, kind in zip(scene.masks, scene.shapes):
            box_mask = predictor.predict(box=mask_to_box(gt).astype(float), multimask_output=False)[0][0]
            masks, scores, _ = predictor.predict(interior_point(gt)[None].astype(float), np.array([1]))
            rows.append({"seed": seed, "kind": kind, "area": int(gt.sum()), "box_iou": mask_iou(box_mask, gt),
                         "point_iou": mask_iou(masks[int(np.argmax(scores))], gt),
                         "ceiling": low_res_ceiling(gt, low_res)})

    def summary(sel: list[dict]) -> dict:
        return {"objects": len(sel), **{k: round(float(np.mean([r[k] for r in sel])), 4)
                                        for k in ("box_iou", "point_iou", "ceiling")},
                "box_below_0.5": round(float(np.mean([r["box_iou"] < 0.5 for r in sel])), 3)}

    result = {"checkpoint": str(args.checkpoint), "images": args.images, "all": summary(rows),
              "by_kind": {k: summary([r for r in rows if r["kind"] == k]) for k in SHAPE_KINDS
                          if any(r["kind"] == k for r in rows)},
              "by_area": {f"{lo}-{hi or 'inf'}": summary([r for r in rows if r["area"] >= lo
                                                          and (hi is None or r["area"] < hi)])
                          for lo, hi in AREA_BINS if any(r["area"] >= lo and (hi is None or r["area"] < hi)
                                                         for r in rows)}}
    print(f"{'':12s} {'objects':>7s} {'box IoU':>8s} {'point IoU':>9s} {'ceiling':>8s} {'box<0.5':>8s}")
    for name, s in [("all", result["all"]), *result["by_kind"].items(), *result["by_area"].items()]:
        print(f"{name:12s} {s['objects']:7d} {s['box_iou']:8.3f} {s['point_iou']:9.3f} {s['ceiling']:8.3f} "
              f"{s['box_below_0.5']:8.2f}")
    out = args.out or args.checkpoint.parent / "by_shape.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
