"""Peak memory and time of one full fine-tuning step of SAM with and without activation checkpointing of the image
encoder blocks (``finetune.checkpoint_blocks``).

Each configuration runs in its own subprocess (a fresh allocator, so one run's freed memory cannot hide the other's
peak). The step is the trainer's: ``TrainingForward`` (encoder, prompts, decoder rounds, loss) on a batch of
synthetic scenes, backward, AdamW step. Memory is the process's peak resident set (``resource.getrusage``
``ru_maxrss``) after the step minus its resident set just before it; on CUDA also
``torch.cuda.max_memory_allocated`` of the step.

    .venv/bin/python benchmarks/checkpoint_memory.py                       # vit_b, 1024, batch 2 (needs ~RAM)
    .venv/bin/python benchmarks/checkpoint_memory.py --image-size 512      # the same at a 512 input
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from video_memory import rss_mb  # noqa: E402  (the resident set now, MB; this script's folder is on sys.path)


def child(args: argparse.Namespace) -> dict:
    """One configuration: build, then time and measure one training step; the figures as a dict."""
    import numpy as np
    import torch

    from samforge.data.readers import open_dataset
    from samforge.models.build import build_sam
    from samforge.models.configs import SAM_CONFIGS
    from samforge.train.batches import TrainingSamples, collate_samples
    from samforge.train.config import FinetuneConfig, PromptConfig
    from samforge.train.finetune import apply_finetune
    from samforge.train.losses import SamLoss
    from samforge.train.step import TrainingForward

    torch.set_num_threads(args.threads)
    if args.memory_limit_gb:  # a step needing more fails with an allocation error instead of waking the OOM killer
        limit = int(args.memory_limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = build_sam(dataclasses.replace(SAM_CONFIGS[args.model], image_size=args.image_size), device=device)
    model.train()
    plan = apply_finetune(model, FinetuneConfig(mode="full", checkpoint_blocks=args.checkpoint_blocks))
    forward = TrainingForward(model, SamLoss())
    optimizer = torch.optim.AdamW([p for p in forward.parameters() if p.requires_grad], lr=1e-5)
    samples = TrainingSamples(open_dataset(f"synthetic:{args.batch}:256"), args.image_size, max_objects=4)
    batch = collate_samples([samples[i] for i in range(args.batch)])
    prompts = PromptConfig(correction_rounds=1, mask_only_rounds=0)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = rss_mb()
    start = time.perf_counter()
    out = forward(batch, prompts, np.random.default_rng(0), "low_res")
    out["loss"].backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux
    record = {"checkpoint_blocks": plan.checkpointed_blocks, "rss_before_mb": before, "peak_rss_mb": peak,
              "growth_mb": peak - before, "step_s": seconds, "loss": float(out["loss"])}
    if device.type == "cuda":
        record["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_b")
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--configs", default="none,all", help="checkpoint_blocks settings to compare, in order")
    parser.add_argument("--memory-limit-gb", type=float, default=0.0,
                        help="cap each configuration's data segment (RLIMIT_DATA) at this many GB: one that needs more "
                        "is reported as exceeding it (0: no cap)")
    parser.add_argument("--checkpoint-blocks", default=None, help=argparse.SUPPRESS)  # the child's one setting
    args = parser.parse_args()
    if args.batch < 1 or args.image_size < 64 or args.threads < 1:
        raise SystemExit(f"--batch, --threads >= 1 and --image-size >= 64 expected, got {args.batch}, "
                         f"{args.threads}, {args.image_size}")
    if args.checkpoint_blocks is not None:
        print(json.dumps(child(args)))
        return

    import torch

    print(f"{args.model} at {args.image_size}, batch {args.batch}, full fine-tuning, {args.device}, "
          f"{args.threads} threads; CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"torch {torch.__version__}")
    records = []
    for spec in args.configs.split(","):
        load = os.getloadavg()[0]
        cmd = [sys.executable, __file__, "--model", args.model, "--image-size", str(args.image_size), "--batch",
               str(args.batch), "--threads", str(args.threads), "--device", args.device, "--checkpoint-blocks", spec,
               "--memory-limit-gb", str(args.memory_limit_gb)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 and "can't allocate memory" in done.stderr:
            print(f"checkpoint_blocks={spec}: the step needs more than --memory-limit-gb {args.memory_limit_gb:g} GB "
                  f"(allocation refused; load average {load:.1f})")
            continue
        if done.returncode != 0:
            print(f"checkpoint_blocks={spec}: failed (exit {done.returncode}): {done.stderr[-2000:]}")
            continue
        record = {"spec": spec, "load_before": load, **json.loads(done.stdout.strip().splitlines()[-1])}
        records.append(record)
        cuda = f", CUDA peak {record['cuda_peak_mb']:.0f} MB" if "cuda_peak_mb" in record else ""
        print(f"checkpoint_blocks={spec} ({record['checkpoint_blocks']} blocks): RSS growth {record['growth_mb']:.0f} "
              f"MB (peak {record['peak_rss_mb']:.0f} MB){cuda}, step {record['step_s']:.1f} s, load average "
              f"{load:.1f}, loss {record['loss']:.5f}")
    base = min(records, key=lambda r: r["checkpoint_blocks"], default=None)  # the fewest blocks checkpointed
    for r in records:
        if r is not base:
            print(f"{r['spec']} vs {base['spec']}: RSS growth {100 * (1 - r['growth_mb'] / base['growth_mb']):.0f}% "
                  f"less, step time x{r['step_s'] / base['step_s']:.2f}, same loss: {r['loss'] == base['loss']}")


if __name__ == "__main__":
    main()
