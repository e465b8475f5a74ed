"""``samforge engine annotate`` and ``samforge engine retrain``: the data engine's human loop on a work folder WORK.

* ``samforge engine annotate IMAGES --out WORK --base TYPE:CKPT [--stage assisted|semi] [--adapter F]``: the
  browser annotator (``samforge annotate``) on WORK's current model; the first run records the base model as round 0
  (``WORK/rounds/0``) and IMAGES in ``WORK/engine.json``. Labels are saved to ``WORK/annotations/<stem>.json`` as the
  person works. ``--stage semi`` opens each image with the model's confident masks as proposals to accept or reject
  (cached in ``WORK/proposals/``). The page's Retrain button fine-tunes the model on the labels into the next round
  and the annotator switches to it without a restart.
* ``samforge engine retrain WORK [--mode decoder|lora|full] [--steps N]``: the same retrain from the command line
  (:func:`samforge.engine.retrain_job.retrain_round`); a running annotator on WORK picks the new round up.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from samforge.cli.annotate import add_server_args, check_server_args
from samforge.cli.common import add_precision_arg, prepare_out_dir
from samforge.cli.finetune import parse_base as finetune_base
from samforge.engine.proposals import PRED_IOU_THRESH, STABILITY_SCORE_THRESH, check_threshold
from samforge.engine.retrain_job import MODES, RetrainBusy, RetrainSettings, retrain_round
from samforge.engine.round_model import load_model_ref
from samforge.engine.rounds import ModelRef, current_round, finish_round, list_rounds, start_round
from samforge.models.configs import SAM_CONFIGS
from samforge.models.sam2 import SAM2_CONFIGS

ENGINE_FILE = "engine.json"  # {"images_dir", "labels"}: written by the annotator (serve/engine_session.py)
DEFAULTS = RetrainSettings()
MODEL_TYPES = ("default", *SAM_CONFIGS, *SAM2_CONFIGS)


def register(jobs: argparse._SubParsersAction) -> None:
    """Add the ``annotate`` and ``retrain`` jobs to ``samforge engine``."""
    p = jobs.add_parser("annotate", help="annotate in the browser with WORK's current model (assisted or semi stage)",
                        description="The browser annotator on the current model of WORK (the base model, recorded as "
                        "round 0, until a retrain). Labels are saved to WORK/annotations/ as you work. --stage semi: "
                        "each image opens with the model's confident masks (predicted IoU >= 0.9, stability >= 0.95, "
                        "none overlapping an accepted object) as proposals: y accepts, x rejects, Y accepts all. The "
                        "Retrain button fine-tunes the model on your labels into the next round, which the page "
                        "switches to without a restart.")
    p.add_argument("images_dir", metavar="IMAGES", help="folder of images (its top level)")
    p.add_argument("--out", required=True, metavar="WORK", help="the engine's work folder (labels, rounds)")
    p.add_argument("--base", default=None, metavar="TYPE:CKPT",
                   help="the base model (round 0): TYPE:CKPT (vit_b:sam_vit_b.pth, sam2.1_hiera_t:sam2.1_hiera_tiny), "
                   "a checkpoint alone (an official name, a samforge checkpoint) or a TYPE alone (random weights); "
                   "needed on the first run only")
    p.add_argument("--adapter", default=None, help="a LoRA adapter file applied on the base model (no merge step)")
    p.add_argument("--stage", default="assisted", choices=("assisted", "semi"),
                   help="assisted: click objects; semi: start from the model's confident proposals (default assisted)")
    add_server_args(p)
    p.add_argument("--steps", type=int, default=DEFAULTS.steps,
                   help=f"steps of a retrain started from the page (default {DEFAULTS.steps})")
    p.add_argument("--retrain-mode", default=DEFAULTS.mode, choices=MODES,
                   help=f"what a retrain started from the page trains, as retrain's --mode (default {DEFAULTS.mode})")
    p.add_argument("--proposal-pred-iou", type=float, default=PRED_IOU_THRESH,
                   help=f"semi stage: proposals have at least this predicted IoU (default {PRED_IOU_THRESH}, the "
                   "strict filter; lower it for a model whose IoU head never predicts that high)")
    p.add_argument("--proposal-stability", type=float, default=STABILITY_SCORE_THRESH,
                   help=f"... and at least this stability score (default {STABILITY_SCORE_THRESH})")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of random weights (a base without checkpoint)")
    add_precision_arg(p)
    p.set_defaults(run=run_annotate)

    r = jobs.add_parser("retrain", help="fine-tune WORK's current model on its labels into the next round",
                        description="Fine-tune the current model of WORK on every labelled image of "
                        "WORK/annotations/ (--mode: decoder-only with image embeddings cached in "
                        "WORK/embedding_cache by default), keep the weights of the step with the lowest loss on a "
                        "held-out share of them (seeded; at least one image once two are labelled) and measure the "
                        "model before and after on it, and write the next round WORK/rounds/<N+1>/ "
                        "(model.pt, snapshot.json, metrics.json). A running `samforge engine annotate` "
                        "on WORK switches to it.")
    r.add_argument("work", metavar="WORK", help="the engine's work folder (made by samforge engine annotate)")
    r.add_argument("--images", default=None, metavar="IMAGES",
                   help=f"the images folder (default: the one WORK/{ENGINE_FILE} records)")
    r.add_argument("--mode", default=DEFAULTS.mode, choices=MODES,
                   help="what trains, as samforge finetune --mode: decoder (the mask decoder; the encoders frozen, "
                   "embeddings cached), lora (adapters on the image encoder's Q and V + the mask decoder; folded into "
                   "the round's weights, so the round is a plain checkpoint) or full (every weight); lora and full run "
                   f"the image encoder every step (default {DEFAULTS.mode})")
    r.add_argument("--steps", type=int, default=DEFAULTS.steps, help=f"AdamW steps (default {DEFAULTS.steps})")
    r.add_argument("--lr", type=float, default=DEFAULTS.lr, help=f"learning rate (default {DEFAULTS.lr})")
    r.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size,
                   help=f"images per step (default {DEFAULTS.batch_size})")
    r.add_argument("--held-out", type=float, default=DEFAULTS.held_out,
                   help=f"share of the labelled images kept for validation (default {DEFAULTS.held_out}; at least "
                   "one once two are labelled)")
    r.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    r.add_argument("--seed", type=int, default=0, help="seed of the split and of the training draws")
    r.set_defaults(run=run_retrain)


def parse_base(spec: str, adapter: str | None = None) -> ModelRef:
    """``TYPE:CKPT``, ``CKPT`` or ``TYPE`` as a :class:`ModelRef` (checkpoint and adapter files made absolute)."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"--base must be TYPE:CKPT, CKPT or TYPE, got {spec!r}")
    if spec in MODEL_TYPES:
        model_type, checkpoint = spec, None
    else:  # as samforge finetune --base reads it; "checkpoint": a samforge checkpoint, which records its model
        kind, checkpoint = finetune_base(spec)
        model_type = None if kind == "checkpoint" else kind
    if os.path.exists(checkpoint or ""):
        checkpoint = str(Path(checkpoint).resolve())
    if adapter is not None:
        if not Path(adapter).is_file():
            raise ValueError(f"--adapter {adapter}: expected a LoRA adapter file (.safetensors), got no such file")
        adapter = str(Path(adapter).resolve())
    return ModelRef(model_type, checkpoint, adapter)


def base_round(work: Path, base: ModelRef | None) -> int:
    """The current round of ``work``, recording ``base`` as round 0 on the first run; returns its number."""
    current = current_round(work) if work.is_dir() else None
    if current is None:
        if base is None:
            raise ValueError(f"{work} has no round yet: give the base model with --base TYPE:CKPT")
        rounds = list_rounds(work) if work.is_dir() else []
        if rounds and rounds[0].index != 0 or len(rounds) > 1:
            raise ValueError(f"{work} holds rounds but no complete round 0 ({rounds[-1].describe()}): use another "
                             "--out or repair it (samforge engine status)")
        start_round(work, base, [])
        finish_round(work, 0, {"round": 0, "stage": "base"})
        return 0
    first = list_rounds(work)[0]
    if base is not None and first.model != base:
        raise ValueError(f"{work} records another base model as round 0 ({json.dumps(first.model.to_json())}); drop "
                         "--base/--adapter to go on with it, or use another --out")
    return current.index


def run_annotate(args: argparse.Namespace) -> int:
    try:  # the web stack is imported here, so that other jobs do not need it installed
        from samforge.serve.app import create_app
        from samforge.serve.engine_session import EngineSession
        from samforge.serve.images import ImageFolder
        from samforge.serve.server import allowed_hosts, serve
        from samforge.serve.store import check_labels
    except ImportError as e:
        raise ValueError(f"samforge engine annotate needs FastAPI and uvicorn ({e}): pip install "
                         "'samforge[annotate]'") from e
    labels = check_labels(args.labels.split(","))
    warning = check_server_args(args)
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    check_threshold(args.proposal_pred_iou, "--proposal-pred-iou")
    check_threshold(args.proposal_stability, "--proposal-stability")
    if args.adapter is not None and args.base is None:
        raise ValueError("--adapter applies to the base model: give --base with it (first run of WORK)")
    folder = ImageFolder(args.images_dir)  # a bad folder fails before the model load
    work = prepare_out_dir(args.out)
    base = parse_base(args.base, args.adapter) if args.base is not None else None
    index = base_round(work, base)
    current = current_round(work)
    ref = current.model.resolved(current.folder)
    if ref.checkpoint is None:
        print(f"WARNING: no checkpoint: {ref.model_type} has RANDOM weights (seed {args.seed}); its masks show the "
              "pipeline working, not a trained model")
    model = load_model_ref(ref, args.device, args.seed)
    retrain = RetrainSettings(mode=args.retrain_mode, steps=args.steps, device=args.device, seed=args.seed)
    session = EngineSession(work, args.stage, retrain=retrain, points_per_side=args.points_per_side,
                            precision=args.precision, device=args.device, seed=args.seed,
                            proposal_pred_iou=args.proposal_pred_iou, proposal_stability=args.proposal_stability)
    app = create_app(model, folder.root, work, labels, model_name=session.model_ref_of(current),
                     cache_size=args.cache_size, everything={"points_per_side": args.points_per_side},
                     allowed_hosts=allowed_hosts(args.host), precision=args.precision, engine=session)
    print(f"{work}: round {index} ({args.stage} stage), labels saved to {work / 'annotations'}")
    if warning:
        print(warning, flush=True)
    serve(app, args.host, args.port, allow_remote=args.allow_remote)
    return 0


def run_retrain(args: argparse.Namespace) -> int:
    try:
        from samforge.serve.images import ImageFolder
        from samforge.serve.labelled import labelled_samples
        from samforge.serve.store import AnnotationStore
    except ImportError as e:
        raise ValueError(f"samforge engine retrain reads the annotator's labels and needs its packages ({e}): pip "
                         "install 'samforge[annotate]'") from e
    work = Path(args.work)
    if not work.is_dir():
        raise FileNotFoundError(f"work folder not found: {work} (samforge engine annotate makes it)")
    settings = RetrainSettings(mode=args.mode, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                               held_out=args.held_out, seed=args.seed, device=args.device)
    recorded = _engine_file(work)
    images = args.images or recorded.get("images_dir")
    if images is None:
        raise ValueError(f"{work}/{ENGINE_FILE} does not say where the images are: give --images IMAGES")
    store = AnnotationStore(work, ImageFolder(images), recorded.get("labels") or ["object"])
    samples = labelled_samples(store)
    print(f"{len(samples)} labelled images ({sum(len(s.masks) for s in samples)} objects) in {work / 'annotations'}")
    try:
        done = retrain_round(work, samples, settings)
    except RetrainBusy as e:
        raise ValueError(str(e)) from None  # a one-line message, as for bad input
    print(f"round {done.index} is WORK's current model: wrote {done.folder.resolve()}")
    return 0


def _engine_file(work: Path) -> dict:
    path = work / ENGINE_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); fix or delete it and give --images") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object with images_dir and labels, got {type(data).__name__}")
    return data
