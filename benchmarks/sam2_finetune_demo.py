"""SAM 2 fine-tuning demonstration (issue #8): a hiera tiny SAM 2 trained briefly by our trainer on synthetic clips
(the base: no official weights can be downloaded here), then fine-tuned on synthetic medical-like volumes (clips of
slices); 3D Dice on held-out volumes before and after, time per step, peak memory; and a bf16 vs fp32 training step
at 1024 on a GPU.

    python benchmarks/sam2_finetune_demo.py --out runs/sam2_demo --image-size 512 --base-minutes 4 --ft-minutes 4

Everything goes through the public pieces: ``samforge.train.trainer.train`` (as ``samforge train`` /
``samforge finetune`` run it) and ``samforge.evaluate.volume_metrics.evaluate_volumes``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from samforge.data.clip_dataset import open_clip_dataset
from samforge.evaluate.volume_metrics import evaluate_volumes
from samforge.models import load_model
from samforge.models.sam2 import build_sam2
from samforge.predict.sam2_video_predictor import video_predictor_for
from samforge.train.clip_batches import TrainingClips, collate_clips
from samforge.train.config import load_config
from samforge.train.sam2_losses import MultiStepMultiMaskLoss
from samforge.train.sam2_step import Sam2TrainingForward
from samforge.train.trainer import train


def last_train_line(run: Path) -> dict:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [x for x in lines if x["split"] == "train"][-1]


def run_training(out: Path, overrides: list[str]) -> dict:
    t0 = time.time()
    outcome = train(load_config(None, [f"out={out}", *overrides]))
    line = last_train_line(out)
    return {"steps": outcome.step, "minutes": round((time.time() - t0) / 60, 2),
            "sec_per_step": line["sec_per_step"], "peak_memory_mb": line["peak_memory_mb"],
            "checkpoint": str(out / "checkpoints" / "last.pt")}


def dice_of(checkpoint: str, data, device: str, volumes: int) -> dict:
    predictor = video_predictor_for(load_model(checkpoint, device=device))  # the checkpoint records its overrides
    result = evaluate_volumes(predictor, data, prompt="box", max_volumes=volumes)
    m = result.to_metrics_dict()
    return {"dice_3d": round(m["dice_3d"], 4), "iou_3d": round(m["iou_3d"], 4), "objects": m["num_objects"]}


def step_timing(device: str, size: int, frames: int, precision: str, repeats: int = 5) -> dict:
    """Seconds per training step (forward + backward + AdamW) of hiera tiny on one clip of ``frames`` frames."""
    torch.manual_seed(0)
    model = build_sam2("sam2.1_hiera_t", device=device, mode="train",
                       hydra_overrides_extra=[f"++model.image_size={size}"], apply_postprocessing=False)
    forward = Sam2TrainingForward(model, MultiStepMultiMaskLoss())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    data = open_clip_dataset("synthetic-medical-volume:2:256:16:7")
    batch = collate_clips([TrainingClips(data, size, frames, 3, seed=0)[0]])
    autocast = torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(repeats + 1):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with autocast:
            loss = forward(batch, np.random.default_rng(i))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    out = {"precision": precision, "image_size": size, "frames": frames, "sec_per_step": round(float(np.median(times[1:])), 4)}
    if device.startswith("cuda"):
        out["peak_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/sam2_demo")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--base-minutes", type=float, default=4.0)
    ap.add_argument("--ft-minutes", type=float, default=4.0)
    ap.add_argument("--ft-mode", default="full", choices=["full", "decoder", "lora"])
    ap.add_argument("--base-checkpoint", default=None, help="skip the base training and start from this")
    ap.add_argument("--eval-volumes", type=int, default=6)
    ap.add_argument("--base-lr", type=float, default=1e-4)
    ap.add_argument("--ft-lr", type=float, default=5e-5)
    ap.add_argument("--workers", type=int, default=4 if torch.cuda.is_available() else 1)
    ap.add_argument("--base-data", default="video", choices=["video", "images"],
                    help="the base's data: synthetic video clips, or synthetic images (one-frame clips: the encoder "
                    "and decoder learn first, several times cheaper per step; memory then learns in the fine-tune)")
    ap.add_argument("--base-frames", type=int, default=4)
    ap.add_argument("--ft-frames", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=0, help="clips per step (default: 4 base / 2 fine-tune)")
    ap.add_argument("--gate-masks", choices=["base", "finetune", "both", "none"], default="finetune",
                    help="where the official object-score gating of masks stays on in training (loss."
                    "gate_masks_by_object_score); a model trained from scratch needs it off")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--timing-size", type=int, default=1024, help="input size of the bf16/fp32 step timing")
    args = ap.parse_args()
    out = Path(args.out)
    size = args.image_size
    common = ["model.type=sam2.1_hiera_t", f"model.overrides=['++model.image_size={size}']", f"device={args.device}",
              f"data.num_workers={args.workers}", "steps=100000", "log_every=20", "val_every=100000",
              "checkpoint_every=100", "val_images=4", "eval_at_end=false", "optim.warmup_steps=50"]
    report: dict = {"image_size": size, "device": args.device}
    base_ckpt = args.base_checkpoint
    d = min(size, 256)  # the synthetic data's size (resized to the model's input)
    gate = {"base": args.gate_masks in ("base", "both"), "finetune": args.gate_masks in ("finetune", "both")}
    report["gate_masks_by_object_score"] = gate
    base_data = ([f"data.train=synthetic-video:200:{d}:8:0", f"data.val=synthetic-video:4:{d}:8:1000"]
                 if args.base_data == "video" else [f"data.train=synthetic:2000:{d}", f"data.val=synthetic:8:{d}:100000"])
    report["base_data"] = base_data[0].split("=", 1)[1]
    if base_ckpt is None:
        report["base"] = run_training(out / "base", [
            *common, *base_data, f"data.num_frames={args.base_frames if args.base_data == 'video' else 1}", f"batch_size={args.batch_size or 4}", f"optim.lr={args.base_lr}",
            f"max_minutes={args.base_minutes}", f"loss.gate_masks_by_object_score={gate['base']}",
        ])
        base_ckpt = report["base"]["checkpoint"]
    report["finetune"] = run_training(out / f"ft_{args.ft_mode}", [
        *common, "model.type=checkpoint", f"model.checkpoint={base_ckpt}",
        f"data.train=synthetic-medical-volume:40:{d}:16:0", f"data.val=synthetic-medical-volume:4:{d}:16:1000",
        f"data.num_frames={args.ft_frames}", f"batch_size={args.batch_size or 2}", f"optim.lr={args.ft_lr}",
        f"finetune.mode={args.ft_mode}", f"max_minutes={args.ft_minutes}",
        f"loss.gate_masks_by_object_score={gate['finetune']}",
    ])
    held_out = open_clip_dataset(f"synthetic-medical-volume:8:{d}:16:5000")
    report["dice_3d_before"] = dice_of(base_ckpt, held_out, args.device, args.eval_volumes)
    report["dice_3d_after"] = dice_of(report["finetune"]["checkpoint"], held_out, args.device, args.eval_volumes)
    if not args.skip_timing:
        report["step_timing"] = [step_timing(args.device, args.timing_size, 8, p) for p in ("fp32", "bf16")]
    print(json.dumps(report, indent=1))
    (out / "report.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
