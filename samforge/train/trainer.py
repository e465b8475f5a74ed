"""The training loop, top to bottom: data, model, optimizer, resume, steps, validation, checkpoints, and a
final evaluation. Runs as one process or under ``torchrun`` (DistributedDataParallel; gloo on CPU, nccl on GPU).

Run folder: ``config.yaml``, ``checkpoints/{last,best}.pt``, ``metrics.jsonl``, ``curves.png``, ``overlays/``,
``eval/`` (metrics.json, per_image.csv, best_worst.png; for SAM 2 clips video_metrics.json, for volumes
volume_metrics.json).

The loop is the same for SAM and SAM 2: what differs (data, model, training forward, validation, final
evaluation) is a task from ``samforge.train.task`` (``SamTask``, ``Sam2Task``), chosen by ``model.type``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from samforge.data.readers import summarize_bad_samples
from samforge.data.sampler import ResumableSampler
from samforge.data.split import describe_split, held_out_split, split_datasets
from samforge.train.adapter_file import save_adapter, weights_fingerprint
from samforge.train.checkpoint import load_resume_checkpoint, rng_state, save_training_checkpoint, set_rng_state
from samforge.train.config import TrainConfig, config_to_dict, config_to_yaml
from samforge.train.finetune import apply_finetune
from samforge.train.optim import build_optimizer, build_scheduler
from samforge.train.plots import plot_curves, read_metrics
from samforge.train.sam2_step import Sam2TrainingForward
from samforge.train.step import TrainingForward
from samforge.train.task import task_for
from samforge.train.time_budget import TimeBudget
from samforge.utils.atomic import atomic_write_bytes, remove_stale_temporaries
from samforge.utils.tf32 import set_tf32

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
            kept = [json.dumps(r) for r in self.read() if r["step"] <= step]
            atomic_write_bytes(self.path, ("\n".join(kept) + "\n" if kept else "").encode())

    def read(self) -> list[dict]:
        """The records (see :func:`read_metrics`: a torn last line is skipped with a message)."""
        return read_metrics(self.path)

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


@dataclasses.dataclass
class TrainOutcome:
    out: Path  # the run folder
    model: torch.nn.Module  # the trained model (this process's copy)
    step: int  # optimizer steps done (less than cfg.steps when stopped by max_minutes or fitted to it)
    planned_steps: int  # the schedule's length: cfg.steps, or what fit_steps_to_time fitted in max_minutes


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
    strict = cfg.precision == "fp32-strict"  # fp32 without TF32 on CUDA
    precision = resolve_precision("fp32" if strict else cfg.precision, device)
    tf32 = set_tf32(device, strict) and precision == "fp32"  # fp32 matmuls on tensor cores (Ampere+)
    autocast = autocast_for(precision, device)
    out = Path(cfg.out)
    ckpt_dir = out / "checkpoints"
    if main_process:
        (out / "overlays").mkdir(parents=True, exist_ok=True)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        for removed in remove_run_temporaries(out):
            print(f"removed {removed}, a temporary file left by a killed run")

    # -- data
    task = task_for(cfg)
    train_data, val_data = task.open_data()
    val_name = cfg.data.val
    if val_data is None:  # no validation data named: hold out cases of data.train (split.json, kept on resume)
        split, split_file = held_out_split(train_data, cfg.data.train, cfg.data.val_split, cfg.seed, out,
                                           cfg.data.split, write=main_process)
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, split=str(split_file)))
        train_data, val_data = split_datasets(train_data, split, cfg.data.train)
        task.split = split
        val_name = f"{len(split.val_cases)} held-out cases of {cfg.data.train}"
        if main_process:
            print(describe_split(split, split_file, train_data, cfg.data.train))
    if main_process:
        for name, data in (("train", train_data), ("val", val_data)):
            print(f"{name} data: {cfg.data.train if name == 'train' else val_name}: {len(data)} images")
            if data.bad_samples or getattr(data, "dropped_objects", 0) or getattr(data, "skipped_empty_slices", 0):
                print(summarize_bad_samples(data))

    # -- model, optimizer, schedule
    torch.manual_seed(cfg.seed)
    built = task.build_model(device)
    model, model_name, model_record = built.model, built.name, built.record
    model.train()
    base_fingerprint = weights_fingerprint(model) if cfg.finetune.mode == "lora" else ""
    plan = apply_finetune(model, cfg.finetune)
    forward = forward_module = task.training_forward(model, precision, out, device)
    loss_fn = forward_module.loss_fn
    optimizer = build_optimizer(forward, cfg.optim, plan.lr_scales)
    scheduler = build_scheduler(optimizer, cfg.steps, cfg.optim)
    schedule = scheduler.lr_lambdas[0]  # its total_steps: cfg.steps, or fitted to max_minutes (kept on resume)
    step, best = 0, -1.0

    # -- resume
    last = ckpt_dir / "last.pt"
    metrics = MetricsLog(out / "metrics.jsonl", main_process)
    ckpt, note = load_resume_checkpoint(ckpt_dir)
    if note and main_process:
        print(note)
    if ckpt is not None:
        saved = ckpt["config"]
        now = config_to_dict(cfg)
        if isinstance(saved.get("data"), dict):  # data keys added since the run was saved count as their defaults
            defaults = config_to_dict(TrainConfig())["data"]
            saved = {**saved, "data": {**{k: defaults[k] for k in ("val_split", "split")}, **saved["data"]}}
        saved, now = ({**c, "finetune": {k: v for k, v in c["finetune"].items() if k != "checkpoint_blocks"}}
                      if isinstance(c.get("finetune"), dict) else c for c in (saved, now))  # memory, not the run
        changed = [k for k in RESUME_MUST_MATCH if saved.get(k) != now.get(k)]
        if changed:
            fields = ({k: f"{saved['data'].get(k)!r} -> {v!r}" for k, v in now["data"].items()
                       if saved["data"].get(k) != v} if "data" in changed else {})
            raise ValueError(f"{out} holds a run with different {changed}{f' (data: {fields})' if fields else ''}; "
                             "use another out folder to start a new run")
        model.load_state_dict(ckpt["model"])
        loss_fn.load_state_dict(ckpt.get("loss", {}))
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        # a rerun with other `steps` runs to them; a time-fitted length is kept
        schedule.total_steps = min(schedule.total_steps, cfg.steps) if schedule.fitted else cfg.steps
        step, best = int(ckpt["step"]), float(ckpt["best"])
        set_rng_state(ckpt["rng"])
        metrics.truncate_after(step)
        if main_process:
            print(f"resuming {out} from step {step}")
    elif main_process:
        atomic_write_bytes(out / "config.yaml", config_to_yaml(cfg).encode())
        metrics.truncate_after(0)  # lines of a run killed before its first checkpoint: it starts over

    if distributed:
        forward = torch.nn.parallel.DistributedDataParallel(forward, find_unused_parameters=True)

    samples_per_step = cfg.batch_size * cfg.optim.accumulate * world
    sampler = ResumableSampler(len(train_data), cfg.seed, start=step * samples_per_step, rank=rank, world_size=world)
    train_samples = task.samples(train_data, built.image_size)
    collate = task.collate
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
        val_samples = task.samples(val_data, built.image_size, validation=True)
        val_count = min(cfg.val_images, len(val_data))
        val_batches = [collate([val_samples[i] for i in range(j, min(j + cfg.batch_size, val_count))])
                       for j in range(0, val_count, cfg.batch_size)]
        overlay_samples = task.overlay_samples(val_data, val_batches)

    if main_process:
        print(f"model {model_name} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters) on {device}, "
              f"{precision}{' (TF32 matmuls)' if tf32 else ''}, {world} process(es), "
              f"{samples_per_step} images per step")
        print(plan.describe())
    progress = tqdm(total=schedule.total_steps, initial=step, desc="train", disable=not main_process,
                    dynamic_ncols=True)
    start_time = time.perf_counter()
    budget = TimeBudget(schedule, cfg, step, start_time, len(val_batches))
    data_time = compute_time = 0.0
    clips_skipped = clips_padded = 0  # SAM 2 clips: too short or without an object on the first frame / padded
    steps_since_log = 0
    while step < schedule.total_steps:
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
                    out_step = task.run(forward, batch, rng)
                (out_step["loss"] / cfg.optim.accumulate).backward()
            for k, v in out_step.items():
                stats[k] = stats.get(k, 0.0) + float(v.detach()) / cfg.optim.accumulate
        if cfg.optim.grad_clip > 0:
            stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip))
        optimizer.step()
        if budget.due(step + 1):  # before scheduler.step(): the next step's learning rate is the fitted one
            first_fit = not schedule.fitted
            planned = budget.fit(step + 1, distributed)
            progress.total = planned
            progress.refresh()
            if main_process and first_fit:
                progress.write(f"fit_steps_to_time: {planned} steps fit in {cfg.max_minutes} minutes at this pace "
                               f"(steps={cfg.steps} at most); the learning-rate schedule ends there")
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
        if step % cfg.log_every == 0 or step == schedule.total_steps or out_of_time:
            metrics.write({"step": step, "split": "train", **{k: round(v, 6) for k, v in stats.items()},
                           "lr": scheduler.get_last_lr()[0], "sec_per_step": round(compute_time / steps_since_log, 4),
                           "data_frac": round(data_time / max(compute_time, 1e-9), 4),
                           "peak_memory_mb": round(peak_memory_mb(device), 1),
                           **({"clips_skipped": clips_skipped, "clips_padded": clips_padded}
                              if task.family == "sam2" else {})})
            data_time = compute_time = 0.0
            steps_since_log = 0
        finished = step == schedule.total_steps or out_of_time
        if main_process and (step % cfg.val_every == 0 or finished):
            overlay_path = out / "overlays" / f"val_step{step:06d}.png"
            t_val = time.perf_counter()
            val = task.validate(forward_module, val_batches, autocast)
            if finished or (cfg.vis_every and (step // cfg.val_every) % cfg.vis_every == 0):
                task.save_overlays(model, overlay_samples, overlay_path)
            budget.validated(time.perf_counter() - t_val)
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
    if main_process and task.report():
        print(task.report())

    if main_process and cfg.eval_at_end:  # also after a max_minutes stop: eval/ shows the latest weights
        model.eval()
        task.final_eval(model, val_data, out)
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    return TrainOutcome(out, model, step, schedule.total_steps)


# files a run writes with atomic_path, by folder: their temporaries are removed when a run starts
RUN_FILES = {".": ("config.yaml", "metrics.jsonl", "curves.png", "adapter.safetensors", "split.json"),
             "checkpoints": ("last.pt", "best.pt"), "overlays": None, "eval": None}  # None: every file there


def remove_run_temporaries(out: Path) -> list[Path]:
    """Delete the temporaries of the run folder's own files that killed runs left (never those of a process
    still running); returns them."""
    removed = []
    for folder, names in RUN_FILES.items():
        removed += remove_stale_temporaries(out / folder, names)
    return removed


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: allocated on the GPU for CUDA, else this process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


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
