"""Decoder-only fine-tuning: one epoch with the frozen image encoder recomputed at every step (the common practice)
against the same epoch with samforge's embedding cache, cold (first epoch: the cache is filled) and warm (later
epochs), side by side in one process.

    .venv/bin/python benchmarks/decoder_epoch.py [--model vit_b] [--data synthetic:6:1024] [--batch-size 2]
        [--config finetune_small] [--threads N] [--profile] [key=value ...]

Every epoch uses the library's pieces as ``samforge train finetune.mode=decoder`` does: ``TrainingSamples`` /
``collate_samples`` batches, ``apply_finetune`` (decoder trainable, encoders frozen), ``TrainingForward`` (prompt
simulation, interactive rounds, ``SamLoss``), ``build_optimizer`` / ``build_scheduler``, gradient clipping. The only
difference is the ``embed`` it is given: the image encoder under ``torch.no_grad()`` (common practice) or an
``EmbeddingCache`` in a temporary folder. Each epoch starts from the same weights and optimizer state with the same
prompt seeds, so all three must give the same losses (printed: max abs difference); random weights (no checkpoint
is needed). ``--config`` is a preset or YAML file of the trainer (default ``finetune_small``: what a CPU fine-tuning
run uses, 8 objects per image, 2 rounds, loss at low resolution); ``key=value`` overrides follow the trainer's (e.g.
``loss.resolution=input prompts.correction_rounds=2 prompts.mask_only_rounds=1`` for the trainer's defaults).
Batches are prepared (synthetic scenes drawn, resized, normalised) once before the epochs and that time is printed
apart: it is the same for every variant. ``--profile`` prints torch.profiler's top ops of one warm epoch.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from samforge.data.readers import open_dataset  # noqa: E402
from samforge.models.build import build_sam, resolve_sam_config  # noqa: E402
from samforge.train.batches import TrainingSamples, collate_samples  # noqa: E402
from samforge.train.config import TrainConfig, load_config  # noqa: E402
from samforge.train.embedding_cache import EmbeddingCache  # noqa: E402
from samforge.train.finetune import apply_finetune  # noqa: E402
from samforge.train.losses import SamLoss  # noqa: E402
from samforge.train.optim import build_optimizer, build_scheduler  # noqa: E402
from samforge.train.step import TrainingForward  # noqa: E402


class RecomputedEncoder:
    """The common practice: the frozen encoder run at every step, without gradients."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        self.encoder = encoder

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.encoder(images)


def run_epoch(forward: TrainingForward, batches: list[dict], cfg: TrainConfig, start_state: dict) -> tuple[float, list]:
    """One epoch over ``batches`` from ``start_state`` (the decoder's weights) with a fresh optimizer: seconds and
    the per-step losses."""
    model = forward.sam
    model.load_state_dict(start_state)
    optimizer = build_optimizer(forward, cfg.optim)
    scheduler = build_scheduler(optimizer, max(cfg.steps, len(batches)), cfg.optim)
    losses = []
    start = time.perf_counter()
    for step, batch in enumerate(batches):
        rng = np.random.default_rng([cfg.seed, step, 0, 0])  # the trainer's seeding of a step's prompts
        out = forward(batch, cfg.prompts, rng, cfg.loss.resolution)
        out["loss"].backward()
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(out["loss"].detach()))
    return time.perf_counter() - start, losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_b", help="registry name (random weights)")
    parser.add_argument("--data", default="synthetic:6:1024", help="training data, as data.train of the trainer")
    parser.add_argument("--batch-size", type=int, default=2, help="images per step")
    parser.add_argument("--config", default="finetune_small", help="trainer preset or YAML file")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--profile", action="store_true", help="torch.profiler top ops of a warm cached epoch")
    parser.add_argument("overrides", nargs="*", help="trainer key=value overrides")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, [*args.overrides, f"model.type={args.model}", f"data.train={args.data}",
                                    f"batch_size={args.batch_size}", "finetune.mode=decoder", "precision=fp32"])

    t0 = time.perf_counter()
    data = open_dataset(cfg.data.train)
    _, sam_config = resolve_sam_config(cfg.model.type)
    samples = TrainingSamples(data, sam_config.image_size, cfg.data.max_objects, cfg.seed)
    batches = [collate_samples([samples[(i, 0)] for i in range(j, min(j + cfg.batch_size, len(samples)))])
               for j in range(0, len(samples), cfg.batch_size)]
    prep = time.perf_counter() - t0
    objects = sum(len(b["masks"]) for b in batches)

    torch.manual_seed(cfg.seed)
    model = build_sam(sam_config)
    model.train()
    plan = apply_finetune(model, cfg.finetune)
    start_state = {k: v.clone() for k, v in model.state_dict().items()}
    loss_fn = SamLoss(cfg.loss.focal, cfg.loss.dice, cfg.loss.iou, cfg.loss.learned_weighting)
    rounds = 1 + cfg.prompts.correction_rounds + cfg.prompts.mask_only_rounds
    print(f"{cfg.model.type} ({plan.describe()}), {cfg.data.train}: {len(samples)} images in {len(batches)} steps of "
          f"{cfg.batch_size}, {objects} objects (max {cfg.data.max_objects} per image), {rounds} decoding rounds per "
          f"step, loss at {cfg.loss.resolution} resolution, fp32, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}; batches prepared in {prep:.1f} s (not in the epochs below); load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    sys.stdout.flush()

    results = {}
    common = TrainingForward(model, loss_fn, RecomputedEncoder(model.image_encoder))
    results["common practice (encoder every step)"] = run_epoch(common, batches, cfg, start_state)
    print(f"  common practice done: {results['common practice (encoder every step)'][0]:.1f} s", flush=True)
    with tempfile.TemporaryDirectory(prefix="samforge-embcache-") as cache_dir:
        cache = EmbeddingCache(cache_dir, model.image_encoder, "fp32")
        cached = TrainingForward(model, loss_fn, cache)
        results["samforge, cache cold (epoch 1)"] = run_epoch(cached, batches, cfg, start_state)
        print(f"  cold epoch done: {results['samforge, cache cold (epoch 1)'][0]:.1f} s", flush=True)
        results["samforge, cache warm (epoch 2+)"] = run_epoch(cached, batches, cfg, start_state)
        warm_repeat = run_epoch(cached, batches, cfg, start_state)[0]
        hits, misses = cache.hits, cache.misses
        if args.profile:
            with torch.profiler.profile() as prof:
                run_epoch(cached, batches, cfg, start_state)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))

    base_time, base_losses = results["common practice (encoder every step)"]
    print(f"\n{'':38s} {'s/epoch':>9s} {'s/image':>8s} {'speed-up':>9s} {'max |dloss|':>11s}")
    for name, (seconds, losses) in results.items():
        if name.endswith("(epoch 2+)"):
            seconds = min(seconds, warm_repeat)  # the better of two warm epochs
        dloss = max(abs(a - b) for a, b in zip(losses, base_losses))
        print(f"{name:38s} {seconds:9.2f} {seconds / len(samples):8.3f} {base_time / seconds:8.2f}x {dloss:11.2e}")
    print(f"embedding cache: {hits} hits, {misses} misses; load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
