"""``samforge track``: prompt objects on a frame of a clip (or a slice of a 3D scan) and follow them through it.

Writes to ``--out``: ``masks/<frame>.png`` (one label PNG per frame: 0 background, k the k-th object),
``overlay.gif`` (the clip with each object in its colour; long clips are subsampled to at most 200 frames),
``objects.json`` (per object and frame: box and area), and for a volume ``mask.nii.gz`` (or ``mask.npz``)
with the input's affine (a DICOM series: NIfTI with the series' affine).
"""

from __future__ import annotations

import argparse
import io
import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from samforge.cli.common import add_model_args, add_precision_arg, load_model, parse_floats, prepare_out_dir
from samforge.data.volume_clip import is_volume_path, read_volume_clip, write_volume_mask
from samforge.models.sam2 import SAM2Base
from samforge.predict.checks import check_box, check_points
from samforge.predict.sam2_video_predictor import SAM2VideoPredictor, video_predictor_for
from samforge.utils.atomic import atomic_write_bytes, save_png
from samforge.viz.overlay import draw_overlay

TRACK_LABELS = {1: "foreground", 0: "background"}
MAX_GIF_FRAMES = 200
GIF_SIDE = 320


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "track",
        help="follow objects through a video or a 3D scan from prompts on one frame (SAM 2)",
        description="Prompt one frame of a clip (a folder of JPEG/PNG frames, a video file, or a NIfTI/.npz/DICOM "
        "volume as a clip of slices) and propagate the objects both ways through it. Writes masks/, "
        "overlay.gif, objects.json (and mask.nii.gz for a volume) to --out.",
    )
    add_model_args(p, default_model=None)
    add_precision_arg(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--video", help="a folder of frames or a video file (.mp4, .avi, ...)")
    src.add_argument("--volume", help="a 3-D scan: .nii / .nii.gz (NIfTI), .npz with 'imgs' (MedSAM), or a DICOM "
                     "series folder of .dcm files (slices ordered by position, CT in HU; the mask is NIfTI with the "
                     "series' affine)")
    p.add_argument("--frame", type=int, default=0, help="the frame (slice) the prompts are on (default 0)")
    p.add_argument("--point", action="append", default=[], metavar="X,Y[,LABEL]",
                   help="a point of object 1 on --frame; LABEL 1 foreground (default) or 0; repeat for more")
    p.add_argument("--box", default=None, metavar="X0,Y0,X1,Y1", help="a box around object 1 on --frame")
    p.add_argument("--prompts", default=None, metavar="JSON",
                   help='several objects: a JSON file [{"obj_id": 1, "frame": 0, "points": [[x, y]], '
                   '"labels": [1], "box": [x0, y0, x1, y1]}, ...] (points and/or box per entry)')
    p.add_argument("--direction", choices=["both", "forward", "backward"], default="both",
                   help="propagate from the first prompted frame forwards, backwards, or both (default)")
    p.add_argument("--axis", type=int, default=2, help="volume axis to slice along (default 2)")
    p.add_argument("--window", default=None, metavar="LEVEL,WIDTH", help="CT window for a volume (default: "
                   "0.5-99.5 percentiles of the volume)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(run=run)


def _prompts_from_args(args: argparse.Namespace) -> list[dict]:
    if args.prompts is not None:
        if args.point or args.box:
            raise ValueError("give --prompts or --point/--box, not both")
        try:
            entries = json.loads(Path(args.prompts).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"--prompts {args.prompts}: not a readable JSON file ({e})") from e
        if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
            raise ValueError(f"--prompts {args.prompts}: expected a non-empty JSON list of objects, got {entries!r:.80}")
        return [_prompt_entry(i, e, args.frame, args.prompts) for i, e in enumerate(entries)]
    points = [parse_floats(s, (2, 3), "--point") for s in args.point]
    if not points and args.box is None:
        raise ValueError("give a prompt: --point X,Y[,LABEL], --box X0,Y0,X1,Y1, or --prompts FILE.json")
    return [{
        "obj_id": 1,
        "frame": args.frame,
        "points": [p[:2] for p in points] or None,
        "labels": [p[2] if len(p) == 3 else 1 for p in points] or None,  # 0.5 is refused, not rounded
        "box": parse_floats(args.box, (4,), "--box") if args.box is not None else None,
    }]


def _prompt_entry(i: int, e: dict, default_frame: int, source: str) -> dict:
    """Entry ``i`` of a ``--prompts`` file, each field checked for its type (the field and entry named)."""
    where = f"--prompts {source}: entry {i}"
    unknown = set(e) - {"obj_id", "frame", "points", "labels", "box"}
    if unknown or "obj_id" not in e or not ("points" in e or "box" in e):
        raise ValueError(f"{where}: expected obj_id, frame, points (+labels) and/or box, got {e}")

    def integer(field: str, value: object) -> int:
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or value != int(value)):
            raise ValueError(f"{where}: {field} must be a whole number, got {value!r}")
        return int(value)

    def numbers(value: object, count: int) -> bool:
        return (isinstance(value, list) and len(value) == count
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))

    frame = integer("frame", e.get("frame", default_frame))
    points = e.get("points")
    if points is not None and not (isinstance(points, list) and points and all(numbers(p, 2) for p in points)):
        raise ValueError(f"{where}: points must be a non-empty list of [x, y] numbers, got {points!r:.120}")
    labels = e.get("labels", [1] * len(points) if points is not None else None)
    if labels is not None:
        if points is None or not isinstance(labels, list) or len(labels) != len(points):
            raise ValueError(f"{where}: labels must be a list with one label per point, got {labels!r:.120}")
        labels = [integer("labels", v) for v in labels]
        if not set(labels) <= {0, 1}:
            raise ValueError(f"{where}: labels must be 1 (foreground) or 0 (background), got {labels}")
    box = e.get("box")
    if box is not None and not numbers(box, 4):
        raise ValueError(f"{where}: box must be [x0, y0, x1, y1] (four numbers), got {box!r:.120}")
    return {"obj_id": integer("obj_id", e["obj_id"]), "frame": frame, "points": points, "labels": labels,
            "box": box}


def check_prompts_in_frame(prompts: list[dict], num_frames: int, frame_hw: tuple[int, int]) -> None:
    """The command line's rule: a prompt's frame exists, no point lies outside the frame, no box is inverted or
    past it (the Python API accepts out-of-image prompts, as the official predictor does)."""
    for i, p in enumerate(prompts):
        where = f"prompt {i} (object {p['obj_id']})"
        if not 0 <= p["frame"] < num_frames:
            raise ValueError(f"{where}: frame {p['frame']} is out of range: expected 0 to {num_frames - 1} (the clip "
                             f"has {num_frames} frames)")
        if p["points"] is not None:
            _, labels = check_points(p["points"], p["labels"], frame_hw, outside="refuse", allowed=TRACK_LABELS,
                                     names=(f"{where}: points", f"{where}: labels"))
            p["labels"] = labels.tolist()
        if p["box"] is not None:
            check_box(p["box"], frame_hw, outside="refuse", name=f"{where}: box")


def run(args: argparse.Namespace) -> int:
    prompts = _prompts_from_args(args)
    out = prepare_out_dir(args.out)
    clip = None
    if args.volume is not None:
        if not is_volume_path(args.volume):
            raise ValueError(f"--volume {args.volume}: expected a .nii, .nii.gz or .npz file, or a folder of "
                             f".dcm files (one DICOM series)")
        window = tuple(parse_floats(args.window, (2,), "--window")) if args.window else None
        clip = read_volume_clip(args.volume, axis=args.axis, window=window)
        source = clip.frames
    else:
        source = args.video
    model = load_model(args)
    if not isinstance(model, SAM2Base):
        raise ValueError(f"tracking needs a SAM 2 model (--model sam2.1_hiera_t, ...), got {args.model_type}")
    predictor = video_predictor_for(model, precision=args.precision)  # the official video build's post-processing
    # one pass each way from the prompts: releasing memory that left the window changes no result here
    state = predictor.init_state(source, release_old_memory=True)
    check_prompts_in_frame(prompts, state["num_frames"], (state["video_height"], state["video_width"]))
    for p in prompts:
        predictor.add_new_points_or_box(state, p["frame"], p["obj_id"], points=p["points"], labels=p["labels"],
                                        box=p["box"])
    labels_per_frame = track_clip(predictor, state, args.direction)
    summary = write_outputs(out, state, labels_per_frame, clip)
    n = len(labels_per_frame)
    print(f"tracked {len(state['obj_ids'])} object(s) over {n} of {state['num_frames']} frames; "
          f"present on {summary['frames_with_objects']} frames")
    print(f"wrote {out.resolve()}")
    return 0


def track_clip(predictor: SAM2VideoPredictor, state: dict, direction: str) -> dict[int, np.ndarray]:
    """Propagate and return ``{frame_idx: H x W uint16 label image}`` (label k = the k-th object)."""
    labels: dict[int, np.ndarray] = {}
    passes = {"forward": [False], "backward": [True], "both": [False, True]}[direction]
    for reverse in passes:
        for frame_idx, _, masks in predictor.propagate_in_video(state, reverse=reverse):
            labels[frame_idx] = masks_to_labels(masks)
    return dict(sorted(labels.items()))


def masks_to_labels(masks: torch.Tensor) -> np.ndarray:
    """``K x 1 x H x W`` logits -> ``H x W`` uint16 labels: at each pixel the highest-scoring object above 0."""
    logits = masks[:, 0].float()
    best = logits.argmax(dim=0)
    fg = logits.max(dim=0).values > 0
    return torch.where(fg, best + 1, 0).to(torch.int32).cpu().numpy().astype(np.uint16)


def write_outputs(out: Path, state: dict, labels: dict[int, np.ndarray], clip=None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    obj_ids = list(state["obj_ids"])
    frames = state["images"]
    objects: dict[str, dict] = {str(o): {"frames": {}} for o in obj_ids}
    stride = max(1, -(-len(labels) // MAX_GIF_FRAMES))
    gif = []
    for i, (t, lab) in enumerate(labels.items()):
        name = Path(frames.names[t]).stem
        save_png(lab.astype(np.uint8) if lab.max() < 256 else lab, out / "masks" / f"{name}.png")
        for k, oid in enumerate(obj_ids, start=1):
            ys, xs = np.nonzero(lab == k)
            if xs.size:
                objects[str(oid)]["frames"][str(t)] = {
                    "box": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1],
                    "area": int(xs.size),
                }
        if i % stride == 0:
            rgb = frames.rgb(t)
            overlay = draw_overlay(rgb, [lab == k for k in range(1, len(obj_ids) + 1)])
            img = Image.fromarray(overlay)
            img.thumbnail((GIF_SIDE, GIF_SIDE))
            gif.append(img)
    if gif:
        buf = io.BytesIO()
        gif[0].save(buf, format="GIF", save_all=True, append_images=gif[1:], duration=100, loop=0)
        atomic_write_bytes(out / "overlay.gif", buf.getvalue())
    summary = {
        "obj_ids": obj_ids,
        "num_frames": state["num_frames"],
        "frames_tracked": sorted(labels),
        "frames_with_objects": sum(1 for lab in labels.values() if lab.any()),
        "objects": objects,
    }
    atomic_write_bytes(out / "objects.json", json.dumps(summary, indent=1).encode())
    if clip is not None:
        stack = np.zeros(clip.frames.shape[:3], dtype=np.uint16)
        for t, lab in labels.items():
            stack[t] = lab
        suffix = ".npz" if clip.affine is None else ".nii.gz"
        write_volume_mask(stack, clip, out / f"mask{suffix}")
    return summary
