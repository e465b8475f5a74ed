"""The training loop, top to bottom: data, model, optimizer, resume, steps, validation, checkpoints, and a
final evaluation. Runs as one process or under ``torchrun`` (DistributedDataParallel; gloo on CPU, nccl on GPU).

Run folder: ``config.yaml``, ``checkpoints/{last,best}.pt``, ``metrics.jsonl``, ``curves.png``, ``overlays/``,
``eval/`` (metrics.json, per_image.csv, best_worst.png).

SAM 2 models (``model.type`` a SAM 2 config such as ``sam2.1_hiera_t``) train on clips of ``data.num_frames``
frames (images are one-frame clips) with ``Sam2TrainingForward``; validation tracks each object from a box and
from a point on the first frame; the final evaluation is J&F on clips (or the image protocols for images).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from samforge.data.readers import open_dataset, summarize_bad_samples
from samforge.data.sampler import ResumableSampler
from samforge.models.build import build_sam, resolve_sam_config
from samforge.models.checkpoint import read_checkpoint
from samforge.models.configs import SamConfig
from samforge.models.sam2 import SAM2_CONFIGS, build_sam2
from samforge.train.adapter_file import save_adapter, weights_fingerprint
from samforge.train.embedding_cache import EmbeddingCache
from samforge.train.finetune import apply_finetune
from samforge.train.batches import TrainingSamples, collate_samples
from samforge.train.clip_batches import TrainingClips, collate_clips
from samforge.train.checkpoint import load_training_checkpoint, rng_state, save_training_checkpoint, set_rng_state
from samforge.train.config import TrainConfig, config_to_dict, config_to_yaml
from samforge.train.losses import SamLoss
from samforge.train.optim import build_optimizer, build_scheduler
from samforge.train.plots import plot_curves, read_metrics, save_val_overlays
from samforge.train.sam2_losses import MultiStepMultiMaskLoss
from samforge.train.sam2_step import Sam2TrainingForward
from samforge.train.sam2_validate import save_sam2_val_overlays, validate_sam2
from samforge.train.step import TrainingForward
from samforge.train.validate import validate
from samforge.utils.atomic import atomic_write_bytes

RESUME_MUST_MATCH = ("model", "data", "batch_size", "seed", "finetune")


def resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available here")
    return device


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` picks bf16 where the hardware runs it fast (CUDA with bf16, CPUs with AVX512-BF16/AMX), else fp32."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    fast_cpu_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return "bf16" if fast_cpu_bf16 else "fp32"


def autocast_for(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class MetricsLog:
    """``metrics.jsonl``: one JSON line per logged step and per validation (rank 0 writes)."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines logged after the checkpoint, so the run continues where it was saved."""
        if self.enabled and self.path.is_file():
            kept = [json.dumps(r) for r in read_metrics(self.path) if r["step"] <= step]
            atomic_write_bytes(self.path, ("\n".join(kept) + "\n" if kept else "").encode())

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


@dataclasses.dataclass
class TrainOutcome:
    out: Path  # the run folder
    model: torch.nn.Module  # the trained model (this process's copy)
    step: int  # optimizer steps done (less than cfg.steps when stopped by max_minutes)


def train(cfg: TrainConfig) -> TrainOutcome:
    """Train as ``cfg`` says; resume from ``<out>/checkpoints/last.pt`` when it exists."""
    # -- processes and devices
    distributed = "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(cfg.device, local_rank)
    if distributed:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    main_process = rank == 0
    precision = resolve_precision(cfg.precision, device)
    autocast = autocast_for(precision, device)
    out = Path(cfg.out)
    ckpt_dir = out / "checkpoints"
    if main_process:
        (out / "overlays").mkdir(parents=True, exist_ok=True)
        ckpt_dir.mkdir(parents=True, exist_ok=True)

    # -- data
    sam2 = model_family(cfg) == "sam2"
    if sam2:
        from samforge.data.clip_dataset import open_clip_dataset

        train_data = open_clip_dataset(cfg.data.train, images=cfg.data.images)
        val_data = open_clip_dataset(cfg.data.val, images=cfg.data.images)
    else:
        train_data = open_dataset(cfg.data.train, cfg.data.images)
        val_data = open_dataset(cfg.data.val, cfg.data.images)
    if main_process:
        for name, data in (("train", train_data), ("val", val_data)):
            print(f"{name} data: {cfg.data.train if name == 'train' else cfg.data.val}: {len(data)} images")
            if data.bad_samples or getattr(data, "dropped_objects", 0) or getattr(data, "skipped_empty_slices", 0):
                print(summarize_bad_samples(data))

    # -- model, optimizer, schedule
    torch.manual_seed(cfg.seed)
    if sam2:
        model_name, overrides = resolve_sam2_model(cfg)
        model = build_sam2(model_name, cfg.model.checkpoint, device=device, mode="train",
                           hydra_overrides_extra=overrides, apply_postprocessing=False)
        model_record = {"family": "sam2", "config_name": model_name, "overrides": list(overrides)}
        image_size = model.image_size
    else:
        model_name, sam_config = resolve_model_config(cfg)
        model = build_sam(sam_config, cfg.model.checkpoint, device=device)
        model_record = sam_config.to_dict()
        image_size = sam_config.image_size
    model.train()
    base_fingerprint = weights_fingerprint(model) if cfg.finetune.mode == "lora" else ""
    plan = apply_finetune(model, cfg.finetune)
    embed = None
    if cfg.finetune.mode == "decoder" and cfg.finetune.cache_embeddings and not sam2:
        embed = EmbeddingCache(cfg.finetune.cache_dir or out / "embedding_cache", model.image_encoder, precision)
    if sam2:
        loss_fn = MultiStepMultiMaskLoss(cfg.loss.focal, cfg.loss.dice, cfg.loss.iou, cfg.loss.object_score).to(device)
        forward = forward_module = Sam2TrainingForward(model, loss_fn, cfg.sam2_prompts)
        model.gate_masks_in_training = cfg.loss.gate_masks_by_object_score
    else:
        loss_fn = SamLoss(cfg.loss.focal, cfg.loss.dice, cfg.loss.iou, cfg.loss.learned_weighting).to(device)
        forward = forward_module = TrainingForward(model, loss_fn, embed)  # the model and the loss's own weights
    optimizer = build_optimizer(forward, cfg.optim, plan.lr_scales)
    scheduler = build_scheduler(optimizer, cfg.steps, cfg.optim)
    step, best = 0, -1.0

    # -- resume
    last = ckpt_dir / "last.pt"
    metrics = MetricsLog(out / "metrics.jsonl", main_process)
    if last.is_file():
        ckpt = load_training_checkpoint(last)
        saved = ckpt["config"]
        now = config_to_dict(cfg)
        changed = [k for k in RESUME_MUST_MATCH if saved.get(k) != now.get(k)]
        if changed:
            raise ValueError(f"{out} holds a run with different {changed}; use another out folder to start a new run")
        model.load_state_dict(ckpt["model"])
        loss_fn.load_state_dict(ckpt.get("loss", {}))
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        step, best = int(ckpt["step"]), float(ckpt["best"])
        set_rng_state(ckpt["rng"])
        metrics.truncate_after(step)
        if main_process:
            print(f"resuming {out} from step {step}")
    elif main_process:
        atomic_write_bytes(out / "config.yaml", config_to_yaml(cfg).encode())

    if distributed:
        forward = torch.nn.parallel.DistributedDataParallel(forward, find_unused_parameters=True)

    samples_per_step = cfg.batch_size * cfg.optim.accumulate * world
    sampler = ResumableSampler(len(train_data), cfg.seed, start=step * samples_per_step, rank=rank, world_size=world)
    if sam2:
        train_samples = TrainingClips(train_data, image_size, cfg.data.num_frames, cfg.data.max_objects, cfg.seed,
                                      short_clips=cfg.data.short_clips)
    else:
        train_samples = TrainingSamples(train_data, image_size, cfg.data.max_objects, cfg.seed)
    collate = collate_clips if sam2 else collate_samples
    loader = torch.utils.data.DataLoader(
        train_samples,
        batch_size=cfg.batch_size,
        sampler=sampler,
        collate_fn=collate,
        num_workers=cfg.data.num_workers,
        persistent_workers=cfg.data.num_workers > 0,
        prefetch_factor=4 if cfg.data.num_workers > 0 else None,
    )
    batches = iter(loader)
    val_batches, overlay_samples = [], []
    if main_process:  # validation runs on rank 0 only
        if sam2:
            val_samples = TrainingClips(val_data, image_size, cfg.data.num_frames, max_objects=10_000, seed=cfg.seed,
                                        short_clips="pad")
        else:
            val_samples = TrainingSamples(val_data, image_size, max_objects=10_000, seed=cfg.seed)
        val_count = min(cfg.val_images, len(val_data))
        val_batches = [collate([val_samples[i] for i in range(j, min(j + cfg.batch_size, val_count))])
                       for j in range(0, val_count, cfg.batch_size)]
        overlay_samples = val_batches[0] if sam2 else [val_data[i] for i in range(min(4, len(val_data)))]

    if main_process:
        print(f"model {model_name} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters) on {device}, "
              f"{precision}, {world} process(es), {samples_per_step} images per step")
        print(plan.describe())
    progress = tqdm(total=cfg.steps, initial=step, desc="train", disable=not main_process, dynamic_ncols=True)
    start_time = time.perf_counter()
    data_time = compute_time = 0.0
    clips_skipped = clips_padded = 0  # SAM 2 clips: too short or without an object on the first frame / padded
    steps_since_log = 0
    while step < cfg.steps:
        t0 = time.perf_counter()
        stats: dict[str, float] = {}
        for micro in range(cfg.optim.accumulate):
            t_data = time.perf_counter()
            batch = next(batches)
            data_time += time.perf_counter() - t_data
            clips_skipped += len(batch.get("skipped", ()))
            clips_padded += len(batch.get("padded", ()))
            rng = np.random.default_rng([cfg.seed, step, micro, rank])
            last_micro = micro == cfg.optim.accumulate - 1
            sync = contextlib.nullcontext() if (not distributed or last_micro) else forward.no_sync()
            with sync:
                with autocast:
                    if sam2:
                        out_step = forward(batch, rng, cfg.loss.resolution)
                    else:
                        out_step = forward(batch, cfg.prompts, rng, cfg.loss.resolution)
                (out_step["loss"] / cfg.optim.accumulate).backward()
            for k, v in out_step.items():
                stats[k] = stats.get(k, 0.0) + float(v.detach()) / cfg.optim.accumulate
        if cfg.optim.grad_clip > 0:
            stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        compute_time += time.perf_counter() - t0
        progress.update(1)
        progress.set_postfix(loss=f"{stats['loss']:.3f}", miou=f"{stats['miou_last_round']:.2f}")

        steps_since_log += 1
        out_of_time = cfg.max_minutes > 0 and (time.perf_counter() - start_time) / 60 > cfg.max_minutes
        if distributed:  # every rank must agree to stop
            flag = torch.tensor([float(out_of_time)])
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            out_of_time = bool(flag.item())
        if step % cfg.log_every == 0 or step == cfg.steps or out_of_time:
            metrics.write({"step": step, "split": "train", **{k: round(v, 6) for k, v in stats.items()},
                           "lr": scheduler.get_last_lr()[0], "sec_per_step": round(compute_time / steps_since_log, 4),
                           "data_frac": round(data_time / max(compute_time, 1e-9), 4),
                           "peak_memory_mb": round(peak_memory_mb(device), 1),
                           **({"clips_skipped": clips_skipped, "clips_padded": clips_padded} if sam2 else {})})
            data_time = compute_time = 0.0
            steps_since_log = 0
        finished = step == cfg.steps or out_of_time
        if main_process and (step % cfg.val_every == 0 or finished):
            overlay_path = out / "overlays" / f"val_step{step:06d}.png"
            if sam2:
                val = validate_sam2(forward_module, val_batches, autocast)
                save_sam2_val_overlays(model, overlay_samples, overlay_path)
            else:
                val = validate(model, val_batches, loss_fn, autocast)
                save_val_overlays(model, overlay_samples, overlay_path)
            metrics.write({"step": step, "split": "val", **{k: round(v, 6) for k, v in val.items()}})
            plot_curves(out / "metrics.jsonl", out / "curves.png")
            progress.write(f"step {step}: val loss {val['loss']:.4f}, box mIoU {val['box_miou']:.3f}, "
                           f"centre-point mIoU {val['point_miou']:.3f}")
            if val["box_miou"] > best:
                best = val["box_miou"]
                save_checkpoint(ckpt_dir / "best.pt", forward_module, optimizer, scheduler, step, best, cfg, model_name,
                                model_record)
        if main_process and (step % cfg.checkpoint_every == 0 or finished):
            save_checkpoint(last, forward_module, optimizer, scheduler, step, best, cfg, model_name, model_record)
            if plan.lora is not None:  # the shippable adapter, always the latest weights
                save_adapter(out / "adapter.safetensors", model, plan.lora, base_fingerprint, model_name,
                             plan.trained_prefixes)
        if out_of_time:
            if main_process:
                progress.write(f"stopping after {cfg.max_minutes} minutes at step {step}; rerun to continue")
            break
    progress.close()
    if main_process and embed is not None:
        print(f"embedding cache {embed.directory}: {embed.hits} hits, {embed.misses} misses")

    if main_process and cfg.eval_at_end:  # also after a max_minutes stop: eval/ shows the latest weights
        from samforge.evaluate.evaluator import evaluate_dataset
        from samforge.evaluate.report import format_table

        model.eval()
        if sam2 and cfg.data.num_frames > 1 and getattr(val_data, "is_volume", False):
            from samforge.evaluate.volume_metrics import evaluate_volumes  # volumes: 3D Dice from the largest slice
            from samforge.predict.sam2_video_predictor import video_predictor_for

            volumes = evaluate_volumes(video_predictor_for(model), val_data, prompt="box", max_volumes=cfg.val_images)
            volumes.write(out / "eval")
            summary = volumes.to_metrics_dict()
            print(f"val volumes: 3D Dice {summary['dice_3d']:.3f}, 3D IoU {summary['iou_3d']:.3f} "
                  f"({summary['num_objects']} objects)")
        elif sam2 and cfg.data.num_frames > 1:  # clips: DAVIS J&F, each object tracked from its first box
            from samforge.evaluate.video_metrics import evaluate_video
            from samforge.predict.sam2_video_predictor import video_predictor_for

            video = evaluate_video(video_predictor_for(model), _VideoClips(val_data), prompt="box",
                                   max_clips=cfg.val_images)
            video.write(out / "eval")
            summary = video.to_metrics_dict()
            print(f"val clips: J {summary['J']:.3f}, F {summary['F']:.3f}, J&F {summary['J&F']:.3f}")
        else:
            eval_data = open_dataset(cfg.data.val, cfg.data.images) if sam2 else val_data
            result = evaluate_dataset(model, eval_data, seed=cfg.seed, max_images=cfg.val_images)
            result.write(out / "eval")
            print(format_table(result.to_metrics_dict()))
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    return TrainOutcome(out, model, step)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: allocated on the GPU for CUDA, else this process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def resolve_model_config(cfg: TrainConfig) -> tuple[str, SamConfig]:
    """The registry config ``model.type`` names (or the one a samforge checkpoint records, for
    ``model.type=checkpoint``), with ``model.arch`` fields replaced."""
    if cfg.model.type == "checkpoint":
        extras = checkpoint_record(cfg.model.checkpoint)
        if not isinstance(extras.get("sam_config"), dict):
            raise ValueError(f"model.type=checkpoint: {cfg.model.checkpoint} does not record its model (not a samforge "
                             "checkpoint); name the model type instead, e.g. model.type=vit_b")
        model_name, sam_config = str(extras.get("model_type", "checkpoint")), SamConfig.from_dict(extras["sam_config"])
    else:
        model_name, sam_config = resolve_sam_config(cfg.model.type)
    if cfg.model.arch:
        try:
            sam_config = dataclasses.replace(sam_config, **cfg.model.arch)
        except TypeError as e:
            raise ValueError(f"model.arch has a field SamConfig does not know: {e}") from e
        model_name = f"{model_name}+arch"
    return model_name, sam_config


def checkpoint_record(path: str | Path) -> dict:
    """What a checkpoint records about its model (``sam_config``, ``model_type``), read once per file version:
    resolving a ``model.type=checkpoint`` run asks several times, and the file may be large."""
    st = Path(path).stat() if Path(path).is_file() else None
    return _read_record(str(path), st.st_mtime_ns if st else 0, st.st_size if st else 0)


@functools.lru_cache(maxsize=4)
def _read_record(path: str, mtime_ns: int, size: int) -> dict:
    extras = read_checkpoint(path)[1]
    return {k: extras[k] for k in ("sam_config", "model_type") if k in extras}


def model_family(cfg: TrainConfig) -> str:
    """``"sam2"`` for a SAM 2 config name (or a samforge checkpoint of one), else ``"sam"``."""
    if cfg.model.type in SAM2_CONFIGS:
        return "sam2"
    if cfg.model.type == "checkpoint":
        record = checkpoint_record(cfg.model.checkpoint).get("sam_config")
        if isinstance(record, dict) and record.get("family") == "sam2":
            return "sam2"
    return "sam"


def resolve_sam2_model(cfg: TrainConfig) -> tuple[str, list[str]]:
    """(SAM 2 config name, config overrides): ``model.type`` and ``model.overrides``, or what a samforge SAM 2
    checkpoint records (for ``model.type=checkpoint``), its overrides first."""
    if cfg.model.arch:
        raise ValueError("model.arch applies to SAM (v1) models; give SAM 2 changes as model.overrides, e.g. "
                         "['++model.image_size=512']")
    if cfg.model.type == "checkpoint":
        record = checkpoint_record(cfg.model.checkpoint)["sam_config"]
        return str(record["config_name"]), [*record.get("overrides", []), *cfg.model.overrides]
    return cfg.model.type, list(cfg.model.overrides)


class _VideoClips:
    """Clips of a clip dataset as the video evaluation reads them (label maps, frames as an array)."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        from samforge.data.davis_dataset import VideoClip

        clip = self.dataset[i]
        masks = clip.masks
        labels = np.zeros(masks.shape[:1] + masks.shape[2:], dtype=np.int64)
        for k, obj_id in enumerate(clip.obj_ids):
            labels[masks[:, k]] = obj_id
        frames = clip.frames
        if frames.ndim == 3:
            frames = np.repeat(frames[..., None], 3, axis=-1)
        return VideoClip(clip.name, np.ascontiguousarray(frames), labels, list(clip.obj_ids), list(clip.frame_names))


def save_checkpoint(path: Path, forward: TrainingForward | Sam2TrainingForward, optimizer, scheduler, step: int,
                    best: float, cfg: TrainConfig, model_name: str, model_record: dict) -> None:
    save_training_checkpoint(
        path,
        model=forward.sam.state_dict(),
        loss=forward.loss_fn.state_dict(),
        sam_config=model_record,
        model_type=model_name,
        optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict(),
        step=step,
        best=best,
        rng=rng_state(),
        config=config_to_dict(cfg),
    )
