"""Optimizer (AdamW, no weight decay on norms, biases and embeddings) and the learning-rate schedule
(linear warmup, then cosine / step / constant), as a ``LambdaLR`` so its state resumes."""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
from torch import nn

from samforge.train.config import OptimConfig


def build_optimizer(model: nn.Module, cfg: OptimConfig, lr_scales: dict[int, float] | None = None) -> torch.optim.AdamW:
    """AdamW over the trainable parameters. ``lr_scales``: ``id(parameter) -> multiplier`` of the learning
    rate (layer-wise decay); parameters are grouped by (weight decay, multiplier)."""
    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_table = p.ndim < 2 or id(p) in tables or "pos_embed" in name or "rel_pos" in name
        scale = 1.0 if lr_scales is None else lr_scales.get(id(p), 1.0)
        groups.setdefault((not is_table, scale), []).append(p)
    if not groups:
        raise ValueError("the model has no trainable parameter")
    param_groups = [
        {"params": params, "weight_decay": cfg.weight_decay if decay else 0.0, "lr": cfg.lr * scale}
        for (decay, scale), params in sorted(groups.items(), key=lambda kv: (not kv[0][0], -kv[0][1]))
    ]
    return torch.optim.AdamW(param_groups, lr=cfg.lr, betas=tuple(cfg.betas))


def lr_factor(step: int, total_steps: int, cfg: OptimConfig | SimpleNamespace) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based); ``cfg``: the schedule's fields of
    an ``OptimConfig``."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        return cfg.step_gamma ** sum(step >= m * total_steps for m in cfg.step_milestones)
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class Schedule:
    """``lr_factor`` over ``total_steps`` as a callable object, so ``LambdaLR.state_dict`` saves its attributes:
    ``total_steps`` may be changed during a run (``fitted`` says it was fitted to a time budget), and a resumed run
    gets the length it was running to. Attributes are plain values (checkpoints load with ``weights_only``)."""

    def __init__(self, total_steps: int, cfg: OptimConfig) -> None:
        self.total_steps = int(total_steps)
        self.fitted = False
        self.optim = {k: getattr(cfg, k) for k in ("warmup_steps", "schedule", "min_lr_ratio", "step_milestones",
                                                    "step_gamma")}

    def __call__(self, step: int) -> float:
        return lr_factor(step, self.total_steps, SimpleNamespace(**self.optim))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, cfg: OptimConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule over ``total_steps``; ``scheduler.lr_lambdas[0]`` is its :class:`Schedule`."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, Schedule(total_steps, cfg))
