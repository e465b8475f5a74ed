"""The fine-tuning demonstration: a small SAM trained on the default synthetic scenes, adapted to a shifted
"medical-like" domain (``synthetic-medical``: grey, low contrast, touching organ-like shapes, speckle, blur)
with LoRA, decoder-only and full fine-tuning. For each mode: trainable parameters, peak memory, time per step,
and held-out 1-box Dice before and after.

    python benchmarks/finetune_demo.py --base runs/scratch_small/checkpoints/best.pt --out runs/finetune_demo

Writes ``<out>/results.json``, ``<out>/results.md``, the run folders ``<out>/<mode>/`` and
``<out>/before_after_lora.png`` (base vs base + LoRA adapter on the same held-out objects).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from samforge.data.readers import open_dataset
from samforge.evaluate import evaluate_dataset
from samforge.evaluate.compare import before_after_png
from samforge.models.build import load_sam
from samforge.train.adapter_file import load_adapter
from samforge.train.config import FinetuneConfig
from samforge.train.finetune import apply_finetune
from samforge.utils.atomic import atomic_write_bytes

LEARNING_RATES = {"lora": 1e-3, "decoder": 5e-4, "full": 2e-4}


def run_mode(mode: str, args: argparse.Namespace) -> dict:
    out = args.out / mode
    cmd = [sys.executable, "-m", "samforge.cli.main", "finetune", "--base", str(args.base), "--data", args.train,
           "--val", args.val, "--mode", mode, "--config", "finetune_small", "--out", str(out),
           f"steps={args.steps}", f"optim.lr={LEARNING_RATES[mode]}", f"val_images={args.val_images}",
           f"max_minutes={args.max_minutes}", *args.overrides]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in rows if r["split"] == "train"]
    model = load_sam(args.base)
    plan = apply_finetune(model, FinetuneConfig(mode=mode, rank=4, alpha=4.0))
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    return {
        "trainable_parameters": plan.trainable,
        "adapter_parameters": sum(p.numel() for n, p in model.named_parameters() if "lora_" in n),
        "steps": train[-1]["step"],
        "sec_per_step": statistics.median(r["sec_per_step"] for r in train[1:] or train),
        "peak_memory_mb": max(r.get("peak_memory_mb", 0.0) for r in train),
        "box_dice": metrics["box"]["dice"],
        "box_miou": metrics["box"]["miou"],
        "center_point_dice": metrics["center_point"]["dice"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, required=True, help="samforge checkpoint of the base model")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train", default="synthetic-medical:400:256", help="fine-tuning data")
    parser.add_argument("--val", default="synthetic-medical:32:256:500000", help="held-out data")
    parser.add_argument("--val-images", type=int, default=32)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--max-minutes", type=float, default=0.0, help="per mode; 0 = no limit")
    parser.add_argument("--modes", nargs="+", default=["lora", "decoder", "full"], choices=list(LEARNING_RATES))
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="trainer settings for every mode")
    args = parser.parse_args()
    if not args.base.is_file():
        raise SystemExit(f"--base checkpoint not found: {args.base}")
    args.out.mkdir(parents=True, exist_ok=True)

    val = open_dataset(args.val)
    base = load_sam(args.base)
    base_metrics = evaluate_dataset(base, val, seed=0, max_images=args.val_images)
    base_metrics.write(args.out / "base_eval")
    before = base_metrics.to_metrics_dict()
    results = {"base": {"box_dice": before["box"]["dice"], "box_miou": before["box"]["miou"],
                        "center_point_dice": before["center_point"]["dice"]}}
    for mode in args.modes:
        results[mode] = run_mode(mode, args)
        results[mode]["box_dice_gain"] = results[mode]["box_dice"] - results["base"]["box_dice"]
        print(mode, results[mode], flush=True)
    atomic_write_bytes(args.out / "results.json", (json.dumps(results, indent=2) + "\n").encode())

    lines = ["| mode | trainable parameters | peak memory (MB) | s/step | steps | held-out 1-box Dice | gain |",
             "|---|---|---|---|---|---|---|",
             f"| base (no fine-tuning) | - | - | - | - | {results['base']['box_dice']:.3f} | - |"]
    for mode in args.modes:
        r = results[mode]
        lines.append(f"| {mode} | {r['trainable_parameters']:,} | {r['peak_memory_mb']:.0f} | {r['sec_per_step']:.3f} | "
                     f"{r['steps']} | {r['box_dice']:.3f} | {r['box_dice_gain']:+.3f} |")
    table = "\n".join(lines) + "\n"
    atomic_write_bytes(args.out / "results.md", table.encode())
    print(table)

    adapter = args.out / "lora" / "adapter.safetensors"
    if adapter.is_file():
        tuned = load_sam(args.base)
        load_adapter(tuned, adapter)
        with torch.no_grad():
            picture = before_after_png(base, tuned, [val[i] for i in range(min(6, len(val)))], names=("base", "base + LoRA"))
        atomic_write_bytes(args.out / "before_after_lora.png", picture)
    print(f"wrote {args.out.resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
