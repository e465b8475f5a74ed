"""The data engine's retrain between rounds: a short decoder-only fine-tune of a SAM (v1) model on the labels made
so far, with the image embeddings kept in an :class:`~samforge.train.embedding_cache.EmbeddingCache` (the encoder is
frozen, so each labelled image is encoded once over all rounds). The step is the trainer's own
(:func:`samforge.train.step.training_losses`: simulated first prompt, correction clicks, SAM's loss)."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from samforge.data.sample import Sample
from samforge.models.sam import Sam
from samforge.train.batches import TrainingSamples, collate_samples
from samforge.train.config import FinetuneConfig, LossConfig, PromptConfig
from samforge.train.embedding_cache import EmbeddingCache
from samforge.train.finetune import apply_finetune
from samforge.train.losses import SamLoss
from samforge.train.step import training_losses

MAX_OBJECTS = 16  # objects per image in one step (the trainer's data.max_objects default scale)


class _Labelled(torch.utils.data.Dataset):
    """The labelled samples as a dataset (what :class:`TrainingSamples` wraps)."""

    def __init__(self, samples: Sequence[Sample]) -> None:
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]


def retrain_decoder(
    model: Sam,
    samples: Sequence[Sample],
    steps: int,
    cache_dir: str | Path,
    lr: float = 1e-4,
    batch_size: int = 2,
    seed: int = 0,
    train_config: Mapping[str, Any] | None = None,
) -> list[float]:
    """Fine-tune ``model``'s mask decoder in place for ``steps`` AdamW steps on ``samples`` (images with their label
    masks), ``batch_size`` images a step drawn with ``seed``; returns the loss of each step. The model is left in
    eval mode with every weight's ``requires_grad`` as decoder-only fine-tuning sets it. ``train_config``: the
    config a samforge checkpoint records (its ``loss`` and ``prompts`` sections are used, so the fine-tune keeps the
    objective the model was trained with; the defaults without it)."""
    if not isinstance(model, Sam):
        raise TypeError(f"model must be a samforge Sam (SAM v1; SAM 2 retrain is not supported here), got "
                        f"{type(model).__name__}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    samples = list(samples)
    if not samples or not all(isinstance(s, Sample) for s in samples):
        raise ValueError(f"samples must be a non-empty list of Sample (labelled images), got {len(samples)} items")
    apply_finetune(model, FinetuneConfig(mode="decoder", checkpoint_blocks="none"))
    cache = EmbeddingCache(cache_dir, model.image_encoder)
    data = TrainingSamples(_Labelled(samples), model.image_encoder.img_size, MAX_OBJECTS, seed=seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    loss_cfg, prompt_cfg = _objective(train_config)
    loss_fn = SamLoss(loss_cfg.focal, loss_cfg.dice, loss_cfg.iou)
    rng = np.random.default_rng(seed)
    losses = []
    model.train()
    try:
        for step in range(steps):
            chosen = rng.choice(len(data), min(batch_size, len(data)), replace=False)
            batch = collate_samples([data[(int(i), step)] for i in chosen])
            if len(batch["masks"]) == 0:
                continue  # every object vanished at the model's input size
            out = training_losses(model, batch, prompt_cfg, loss_fn, rng, loss_cfg.resolution, embed=cache)["loss"]
            optimizer.zero_grad(set_to_none=True)
            out.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            losses.append(float(out.detach()))
    finally:
        model.eval()
    if not losses:
        raise ValueError("no object of the labelled images survives resizing to the model's input: nothing trained")
    return losses


def _objective(train_config: Mapping[str, Any] | None) -> tuple[LossConfig, PromptConfig]:
    """The loss and (simulated) prompt settings of a recorded training config, else the defaults."""
    if train_config is None:
        return LossConfig(), PromptConfig()
    if not isinstance(train_config, Mapping):
        raise TypeError(f"train_config must be a dict (a checkpoint's recorded config) or None, got "
                        f"{type(train_config).__name__}")

    def section(cls: type, name: str) -> Any:
        given = train_config.get(name) or {}
        if not isinstance(given, Mapping):
            raise ValueError(f"train_config['{name}'] must be a dict, got {type(given).__name__}")
        return cls(**{f.name: given[f.name] for f in fields(cls) if f.name in given})

    loss, prompts = section(LossConfig, "loss"), section(PromptConfig, "prompts")
    prompts.source = "simulated"  # the labels carry no stored prompts
    return loss, prompts
