"""``samforge engine``: the data engine's jobs on a work folder WORK (``samforge.engine``).

* ``samforge engine status WORK``: each round of WORK (model, labelled images, metrics) and what a half-written
  round lacks.
* ``samforge engine auto IMAGES --out WORK``: the fully automatic stage. The current round's model (the latest
  complete round of WORK; without rounds, the model of ``--model-type`` / ``--checkpoint`` / ``--adapter``) segments
  every image of IMAGES not in that round's labelled snapshot with a grid of prompts and strict filters (predicted
  IoU >= 0.9, stability >= 0.95), into ``WORK/auto/<round-N | base>/``: ``masks/<stem>.json`` per image (its
  records; written last, so a rerun skips images done) and ``annotations.json`` (COCO instances of the
  pseudo-labels, each with ``predicted_iou``, ``stability_score`` and ``score``), ``report.json`` (masks per image,
  score histograms: ``samforge.engine.auto_report``), ``overlays/<stem>.png`` of the first images, ``settings.json``.
  Under ``torchrun --nproc_per_node N`` the images are shared out among N processes and rank 0 merges the same
  files one process writes (``samforge.cli.folder_masks``).
* ``samforge engine annotate IMAGES --out WORK --base TYPE:CKPT [--stage semi]`` and ``samforge engine retrain
  WORK``: the human loop, the annotator on WORK's current model and the retrain into the next round
  (:mod:`samforge.cli.engine_annotate`).
* ``samforge engine simulate --data DATA --rounds R --images-per-round K --out WORK``: the whole loop with a
  simulated annotator on data with ground truth (``samforge.engine.simulate``): ``rounds.json``, ``rounds.png``
  (per round: clicks per object, objects finished by hand and from accepted proposals, seconds per part, and on the
  held-out images the model's mIoU and the automatic stage's pseudo-label precision / recall against the truth).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from samforge.cli import engine_annotate
from samforge.cli.common import add_precision_arg, prepare_out_dir
from samforge.cli.folder_masks import GENERATOR_FLAGS, check_generator_flags, check_settings, overlay_image
from samforge.cli.folder_masks import plan_folder, read_image, scan_folder, segment_pending
from samforge.data.readers import open_dataset
from samforge.data.recipes import RECIPES
from samforge.engine.auto_report import auto_report
from samforge.engine.proposals import PRED_IOU_THRESH, STABILITY_SCORE_THRESH
from samforge.engine.retrain import RETRAIN_MODES
from samforge.engine.round_model import load_model_ref
from samforge.engine.rounds import ModelRef, current_round, list_rounds, pending_round
from samforge.engine.simulate import SimulateSettings, simulate
from samforge.models.configs import SAM_CONFIGS
from samforge.models.sam2 import SAM2_CONFIGS, SAM2Base
from samforge.predict.amg_outputs import coco_instances
from samforge.predict.automatic_mask_generator import SamAutomaticMaskGenerator
from samforge.predict.sam2_automatic_mask_generator import SAM2AutomaticMaskGenerator
from samforge.utils.atomic import atomic_write_bytes, remove_stale_temporaries, save_png
from samforge.utils.distributed import processes_from_env

STRICT = {"pred_iou_thresh": PRED_IOU_THRESH, "stability_score_thresh": STABILITY_SCORE_THRESH}
OVERLAY_SAMPLES = 4  # images drawn with their pseudo-labels in overlays/


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("engine", help="the data engine: annotation rounds, the model retrained between them",
                       description="The data engine of the SAM paper on your images, in a work folder WORK: "
                       "WORK/rounds/<N>/ holds each round's model, labelled-image snapshot and metrics.")
    jobs = p.add_subparsers(dest="job", required=True, metavar="JOB")
    status = jobs.add_parser("status", help="the rounds of a work folder", description="List the rounds of WORK: "
                             "model, labelled images, metrics; a half-written round is said with what it lacks.")
    status.add_argument("work", metavar="WORK", help="the engine's work folder")
    status.set_defaults(run=run_status)
    engine_annotate.register(jobs)  # annotate, retrain: the human loop

    auto = jobs.add_parser("auto", help="fully automatic stage: pseudo-labels for the images not yet labelled",
                           description="The fully automatic stage: the current round's model of WORK (without "
                           "rounds, the model of --model-type / --checkpoint / --adapter) segments every image of "
                           "IMAGES not labelled in that round with strict filters, writing WORK/auto/<round-N|base>/"
                           "annotations.json (COCO pseudo-labels with predicted_iou and stability_score) and "
                           "masks/<stem>.json per image; a rerun skips images done.")
    auto.add_argument("images_dir", metavar="IMAGES", help="folder of images (its top level)")
    auto.add_argument("--out", required=True, metavar="WORK", help="the engine's work folder")
    auto.add_argument("--model-type", "--model", dest="model_type", default=None, metavar="MODEL",
                      choices=["default", *SAM_CONFIGS, *SAM2_CONFIGS],
                      help="without rounds in WORK: the model configuration (SAM or SAM 2)")
    auto.add_argument("--checkpoint", default=None,
                      help="without rounds in WORK: the weights (a file or an official name)")
    auto.add_argument("--adapter", default=None, help="without rounds in WORK: a LoRA adapter file for the model")
    auto.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    auto.add_argument("--seed", type=int, default=0, help="seed of random weights (a model without checkpoint)")
    add_precision_arg(auto)
    for dest, (flag, default, kind, lo, hi) in GENERATOR_FLAGS.items():
        default = STRICT.get(dest, default)
        bounds = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        auto.add_argument(flag, dest=dest, type=kind, default=default,
                          help=f"{dest} of the generator, {bounds} (default {default})")
    auto.set_defaults(run=run_auto)

    sim = jobs.add_parser("simulate", help="the whole loop with a simulated annotator, measured round by round",
                          description="The data engine on data with ground truth, a simulated person clicking (the "
                          "NoC rule) and judging proposals, the model retrained between rounds (--retrain-mode). "
                          "Each round (and the base, round 0) is measured on the held-out images: mIoU (box, centre "
                          "point, after k clicks), NoC@85, and the automatic stage's pseudo-labels (strict filters) "
                          "scored against the truth (precision and recall at IoU 0.5 and 0.75). Writes "
                          "WORK/rounds/<N>/ (model.pt, metrics.json), rounds.json and rounds.png; a rerun continues after the last "
                          "complete round.")
    sim.add_argument("--data", default="synthetic:64:256", help="dataset spec with ground-truth masks (see "
                     "samforge train --help; default synthetic:64:256)")
    sim.add_argument("--rounds", type=int, required=True, help="annotation rounds after the base model (>= 1)")
    sim.add_argument("--images-per-round", type=int, required=True, help="new images labelled per round (>= 1)")
    sim.add_argument("--out", required=True, metavar="WORK", help="the engine's work folder")
    sim.add_argument("--model-type", "--model", dest="model_type", default=None, metavar="MODEL",
                     choices=["default", *SAM_CONFIGS, *SAM2_CONFIGS],
                     help="the base model's configuration (SAM or SAM 2)")
    sim.add_argument("--checkpoint", default=None, help="the base model's weights (a file or an official name)")
    defaults = SimulateSettings(rounds=1, images_per_round=1)
    sim.add_argument("--held-out", type=int, default=defaults.held_out,
                     help=f"the last images of DATA kept for each round's validation (default {defaults.held_out})")
    sim.add_argument("--semi-from", type=int, default=defaults.semi_from,
                     help=f"first round of the semi-automatic stage (default {defaults.semi_from})")
    sim.add_argument("--retrain-steps", type=int, default=defaults.retrain_steps,
                     help=f"fine-tuning steps between rounds (default {defaults.retrain_steps})")
    sim.add_argument("--retrain-mode", default=defaults.retrain_mode, choices=list(RETRAIN_MODES),
                     help="what the retrain trains: decoder (the mask decoder, image embeddings cached), lora "
                     "(adapters on the image encoder + the decoder, folded into the round's weights) or full (every "
                     f"weight); lora and full run the image encoder every step (default {defaults.retrain_mode})")
    sim.add_argument("--lr", type=float, default=defaults.lr,
                     help=f"retrain peak learning rate (warm-up, cosine decay; default {defaults.lr})")
    sim.add_argument("--retrain-recipe", default=defaults.retrain_recipe, choices=list(RECIPES),
                     help=f"prompt recipe of the retrain (default {defaults.retrain_recipe}: correction clicks from "
                     "the error region with the previous mask fed back, as the simulated person clicks)")
    sim.add_argument("--retrain-val-share", type=float, default=defaults.retrain_val_share,
                     help="share of the labelled images kept out of each retrain to validate it; the weights with "
                     f"the lowest validation loss are kept (default {defaults.retrain_val_share}; 0: none)")
    sim.add_argument("--retrain-val-every", type=int, default=defaults.retrain_val_every,
                     help=f"retrain steps between validations (default {defaults.retrain_val_every})")
    sim.add_argument("--points-per-side", type=int, default=defaults.points_per_side,
                     help=f"grid of the automatic masks proposed (default {defaults.points_per_side})")
    sim.add_argument("--target-iou", type=float, default=defaults.target_iou,
                     help="the simulated person clicks an object until its mask reaches this IoU, else finishes it "
                     f"by hand (default {defaults.target_iou}, the SAM paper's; lower for a model that cannot "
                     "reach it)")
    sim.add_argument("--accept-iou", type=float, default=defaults.accept_iou,
                     help=f"a proposal is accepted when it matches a true object at this IoU (default "
                     f"{defaults.accept_iou})")
    sim.add_argument("--proposal-pred-iou", type=float, default=defaults.proposal_pred_iou,
                     help="proposals and pseudo-labels: automatic masks with at least this predicted IoU (default "
                     f"{defaults.proposal_pred_iou}, the strict filter)")
    sim.add_argument("--proposal-stability", type=float, default=defaults.proposal_stability,
                     help=f"... and at least this stability score (default {defaults.proposal_stability})")
    sim.add_argument("--seed", type=int, default=0, help="seed of random weights and of the retrain draws")
    sim.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    sim.set_defaults(run=run_simulate)


def run_simulate(args: argparse.Namespace) -> int:
    settings = SimulateSettings(rounds=args.rounds, images_per_round=args.images_per_round, held_out=args.held_out,
                                semi_from=args.semi_from, retrain_steps=args.retrain_steps, lr=args.lr,
                                points_per_side=args.points_per_side, seed=args.seed,
                                retrain_recipe=args.retrain_recipe, retrain_val_share=args.retrain_val_share,
                                retrain_val_every=args.retrain_val_every, retrain_mode=args.retrain_mode,
                                target_iou=args.target_iou, accept_iou=args.accept_iou,
                                proposal_pred_iou=args.proposal_pred_iou, proposal_stability=args.proposal_stability)
    if args.model_type is None and args.checkpoint is None:
        raise ValueError("give the base model with --model-type and/or --checkpoint")
    work = prepare_out_dir(args.out)
    base = ModelRef(args.model_type, args.checkpoint)
    if args.checkpoint is None:
        print(f"WARNING: no checkpoint: {args.model_type} starts from RANDOM weights (seed {args.seed})")
    try:
        data = open_dataset(args.data)
    except ValueError as e:
        raise ValueError(f"--data {args.data}: the simulation needs images with ground-truth masks: {e}") from e
    table = simulate(data, args.data, work, base, settings, device=args.device)
    print(f"{len(table) - 1} rounds: wrote {work.resolve()} (rounds.json, rounds.png, rounds/)")
    return 0


def run_status(args: argparse.Namespace) -> int:
    work = Path(args.work)
    if not work.is_dir():
        raise FileNotFoundError(f"work folder not found: {work}")
    rounds = list_rounds(work)
    if not rounds:
        print(f"{work}: no rounds yet")
        return 0
    for r in rounds:
        print(r.describe())
        if r.model is not None:
            print(f"  model: {json.dumps(r.model.to_json())}")
        if r.images is not None:
            print(f"  labelled images: {len(r.images)}")
        if r.metrics:
            print(f"  metrics: {json.dumps(r.metrics)}")
    current = current_round(work)
    print(f"current round: {current.index if current else 'none (no complete round)'}")
    return 0


def _model_of(args: argparse.Namespace, work: Path) -> tuple[ModelRef, str, frozenset[str]]:
    """(the model, the output folder's name, the labelled image names): the current round's, or the flags'."""
    pending = pending_round(work) if work.is_dir() else None
    if pending is not None:
        print(f"note: {pending.describe()}; it is not used")
    current = current_round(work) if work.is_dir() else None
    flags = {k: getattr(args, k) for k in ("model_type", "checkpoint", "adapter") if getattr(args, k) is not None}
    if current is None:
        if not flags.keys() & {"model_type", "checkpoint"}:
            raise ValueError(f"{work} has no complete round: give the model with --model-type and/or --checkpoint")
        return ModelRef(args.model_type, args.checkpoint, args.adapter), "base", frozenset()
    if flags:
        said = ", ".join(f"--{k.replace('_', '-')}" for k in flags)
        raise ValueError(f"{work} has round {current.index}, whose model the automatic stage uses; drop {said}")
    return current.model.resolved(current.folder), f"round-{current.index}", frozenset(current.images)


def run_auto(args: argparse.Namespace) -> int:
    images_dir = Path(args.images_dir)
    images, skipped = scan_folder(images_dir)
    work = prepare_out_dir(args.out)
    ref, name, labelled = _model_of(args, work)
    sam2 = ref.model_type in SAM2_CONFIGS
    kwargs = check_generator_flags(argparse.Namespace(**{**vars(args), "use_m2m": False,
                                                         "model_type": ref.model_type if sam2 else "vit_b"}))
    todo = [p for p in images if p.name not in labelled]
    if not todo:
        raise ValueError(f"every image of {images_dir} is labelled in {work}'s current round: nothing to do")
    out = work / "auto" / name
    settings = {"model": ref.to_json(), "seed": args.seed if ref.checkpoint is None else None,
                "precision": args.precision, **kwargs}

    def prepare() -> None:  # rank 0, before any rank writes
        (out / "masks").mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries([out, out / "masks"])
        check_settings(out, settings)

    def make_generator() -> SamAutomaticMaskGenerator | SAM2AutomaticMaskGenerator:
        if ref.checkpoint is None and procs.main:
            print(f"WARNING: no checkpoint: {ref.model_type} has RANDOM weights (seed {args.seed}); its pseudo-labels "
                  "show the pipeline working, not a trained model")
        model = load_model_ref(ref, device, args.seed)
        make = SAM2AutomaticMaskGenerator if isinstance(model, SAM2Base) else SamAutomaticMaskGenerator
        return make(model, output_mode="coco_rle", precision=args.precision, **kwargs)

    with processes_from_env(args.device) as procs:
        device = procs.device(args.device)
        plan = plan_folder(todo, out / "masks", procs, prepare)
        if procs.main:
            print(f"{len(images)} images in {images_dir}: {len(labelled & {p.name for p in images})} labelled, "
                  f"{len(plan.done)} already done, {len(plan.pending)} to segment with the {name} model"
                  + (f", shared out among {procs.world_size} processes" if procs.distributed else ""))
        segment_pending(plan, procs, make_generator, "engine auto")
        if not procs.main:
            return 0
    skipped += plan.skipped
    entries = [{"file_name": p.relative_to(images_dir).as_posix(), "height": plan.sizes[p][0],
                "width": plan.sizes[p][1], "records": plan.done[p]} for p in plan.in_order()]
    coco = coco_instances(entries, category="object", info={"description": "samforge engine auto (pseudo-labels)",
                                                             "images_dir": str(images_dir), **settings})
    atomic_write_bytes(out / "annotations.json", json.dumps(coco).encode())
    atomic_write_bytes(out / "report.json", json.dumps(auto_report(coco), indent=2).encode())
    (out / "overlays").mkdir(exist_ok=True)
    for p in plan.in_order()[:OVERLAY_SAMPLES]:
        save_png(overlay_image(read_image(p)[0], plan.done[p]), out / "overlays" / f"{p.stem}.png")
    n = len(coco["annotations"])
    print(f"{len(entries)} images, {n} pseudo-labels ({n / max(len(entries), 1):.1f} per image): wrote "
          f"{out.resolve()} (annotations.json, report.json, masks/, overlays/ of {OVERLAY_SAMPLES} images)")
    for file_name, why in skipped:
        print(f"  skipped {file_name}: {why}")
    return 0
