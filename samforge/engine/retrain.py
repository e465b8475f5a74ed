"""The data engine's retrain between rounds: a short fine-tune of a SAM (v1) model on the labels made so far, in one of
``samforge finetune``'s modes (:func:`samforge.train.finetune.apply_finetune`): ``decoder`` (the default) trains the
mask decoder with the image embeddings kept in an :class:`~samforge.train.embedding_cache.EmbeddingCache` (the encoder
is frozen, so each labelled image is encoded once over all rounds); ``lora`` trains low-rank adapters on the image
encoder's Q and V projections plus the mask decoder, and ``full`` every weight: in both the image encoder runs at
every step (no cache; activation checkpointing as ``finetune`` decides, on its blocks at inputs of 1024 px and more).
A ``lora`` retrain folds its adapters into the weights before it returns, so the model is a plain SAM again: a round's
model is then one ordinary checkpoint that the annotator's hot swap, ``engine auto`` and the next retrain load as
any other (an adapter file beside a base would make every reader of a round apply it, and a round on a round on
an adapter would stack them). The step is the trainer's own
(:func:`samforge.train.step.training_losses`: simulated first prompt, correction clicks, SAM's loss); the prompts
follow the recorded training config or a named recipe (``recipe="sam"``: the SAM paper's 8 correction clicks with the
previous logits as mask input, as the NoC protocol and a person's clicks feed the model). The learning rate warms up
linearly over ``warmup_steps`` (a fresh AdamW's first steps are its largest) and decays on a cosine to
``min_lr_ratio * lr``.

A SAM 2 model (``SAM2Base``) is retrained by :func:`samforge.engine.retrain_sam2.run_retrain_sam2` (same modes and
contract; SAM 2's own training step on one-frame clips; no embedding cache, no SAM v1 ``recipe``): ``run_retrain``
checks the inputs and hands it over."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from samforge.data.recipes import recipe_settings
from samforge.data.sample import Sample
from samforge.engine.keep_best import KeepBest, config_section, keep_best_weights, run_steps
from samforge.engine.retrain_sam2 import run_retrain_sam2
from samforge.models.checkpointing import set_checkpoint_blocks
from samforge.models.lora import has_lora, merge_lora
from samforge.models.sam import Sam
from samforge.models.sam2 import SAM2Base
from samforge.train.batches import TrainingSamples, collate_samples
from samforge.train.config import FinetuneConfig, LossConfig, OptimConfig, PromptConfig
from samforge.train.embedding_cache import EmbeddingCache
from samforge.train.finetune import FINETUNE_MODES, apply_finetune, encoder_blocks_owner
from samforge.train.losses import SamLoss
from samforge.train.optim import build_scheduler
from samforge.train.step import training_losses

MAX_OBJECTS = 16  # objects per image in one step (the trainer's data.max_objects default scale)
RETRAIN_MODES = FINETUNE_MODES  # decoder (embeddings cached), lora (adapters + decoder), full (every weight)


class _Labelled(torch.utils.data.Dataset):
    """The labelled samples as a dataset (what :class:`TrainingSamples` wraps)."""

    def __init__(self, samples: Sequence[Sample]) -> None:
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]


@dataclass
class RetrainResult:
    """What a retrain did: the training loss of each step, the validation loss ``(steps done, loss)`` at the start
    and every ``val_every`` steps (empty without validation images), the steps of the weights kept (``steps_done``
    without validation; 0 when no validation beat the model as it came), the wall-clock seconds, the mode and how
    many parameters it trained."""

    losses: list[float]
    val_losses: list[tuple[int, float]] = field(default_factory=list)
    kept_step: int = 0
    seconds: float = 0.0
    mode: str = "decoder"
    trainable: int = 0

    @property
    def steps_done(self) -> int:
        return len(self.losses)


def retrain_decoder(model: Sam, samples: Sequence[Sample], steps: int, cache_dir: str | Path | None, *args: Any,
                    **kwargs: Any) -> list[float]:
    """Fine-tune ``model``'s mask decoder (or what ``mode=`` says) in place for ``steps`` AdamW steps on ``samples``
    (images with their label masks), ``batch_size`` images a step drawn with ``seed``; returns the loss of each step.
    The further arguments are :func:`run_retrain`'s (``lr``, ``batch_size``, ``seed``, ``train_config``, then
    keyword-only settings). The model is left in eval mode with every weight's ``requires_grad`` as the mode's
    fine-tuning sets it.
    ``train_config``: the config a samforge checkpoint records (its ``loss`` and ``prompts`` sections are used, so
    the fine-tune keeps the objective the model was trained with; the defaults without it)."""
    return run_retrain(model, samples, steps, cache_dir, *args, **kwargs).losses


def _check_number(value: Any, name: str, low: float, high: float | None = None, low_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (high is None or value <= high)
    if not ok:
        bound = f"{'>' if low_open else '>='} {low}" + ("" if high is None else f" and <= {high}")
        raise ValueError(f"{name} must be a number {bound}, got {value!r}")


def run_retrain(
    model: Sam | SAM2Base,
    samples: Sequence[Sample],
    steps: int,
    cache_dir: str | Path | None,
    lr: float = 1e-4,
    batch_size: int = 2,
    seed: int = 0,
    train_config: Mapping[str, Any] | None = None,
    *,
    mode: str = "decoder",
    recipe: str | None = None,
    warmup_steps: int = 0,
    min_lr_ratio: float = 1.0,
    max_seconds: float | None = None,
    val_samples: Sequence[Sample] = (),
    val_every: int = 50,
) -> RetrainResult:
    """:func:`retrain_decoder` with its whole account (:class:`RetrainResult`) and optional validation.

    ``recipe``: a prompt recipe's name (:mod:`samforge.data.recipes`) whose prompt settings replace the recorded
    ones (``"sam"``: clicks from the error region with the previous logits as mask input, as a person's corrections
    reach the model). The learning rate rises linearly over ``warmup_steps`` and follows a cosine from ``lr`` down
    to ``min_lr_ratio * lr`` at the last step (1.0: constant). ``max_seconds``: the retrain stops after the step
    that passes this wall-clock budget (a cap; the schedule stays the one of ``steps``). ``val_samples``: labelled
    images kept out of training; the loss on them (the same prompts each time, drawn from ``seed``) is measured at
    the start and every ``val_every`` steps, and the model keeps the weights of the lowest one (the model as it came
    when no step beat it): a retrain on a few images then never leaves a model worse on unseen ones than it took.

    ``mode``: what trains (module docstring): ``decoder`` needs ``cache_dir`` (the embedding cache), ``lora`` and
    ``full`` ignore it (give None). The weights kept by the validation are those the mode trains (the decoder; the
    adapters and the decoder; every weight). A model that comes with LoRA adapters has them folded in first in
    ``lora`` mode (new adapters train on top); in every mode the model returns without adapters of this retrain.

    A SAM 2 model goes to :func:`~samforge.engine.retrain_sam2.run_retrain_sam2`: ``cache_dir`` is ignored (no
    embedding cache), ``recipe`` must be None (SAM 2 samples its prompts as its trainer does) and ``train_config``'s
    ``loss`` and ``sam2_prompts`` sections are used."""
    if not isinstance(model, (Sam, SAM2Base)):
        raise TypeError(f"model must be a samforge Sam (SAM v1) or SAM2Base (SAM 2), got {type(model).__name__}")
    sam2 = isinstance(model, SAM2Base)
    if mode not in RETRAIN_MODES:
        raise ValueError(f"mode must be one of {', '.join(RETRAIN_MODES)}, got {mode!r}")
    if mode == "decoder" and cache_dir is None and not sam2:
        raise ValueError("mode decoder keeps image embeddings on disk: give cache_dir (a folder), got None")
    for name, value, low in (("steps", steps, 1), ("batch_size", batch_size, 1), ("warmup_steps", warmup_steps, 0),
                             ("val_every", val_every, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    _check_number(lr, "lr", 0.0, low_open=True)
    _check_number(min_lr_ratio, "min_lr_ratio", 0.0, 1.0, low_open=True)
    if max_seconds is not None:
        _check_number(max_seconds, "max_seconds", 0.0, low_open=True)
    samples, val_samples = list(samples), list(val_samples)
    if not samples or not all(isinstance(s, Sample) for s in samples):
        raise ValueError(f"samples must be a non-empty list of Sample (labelled images), got {len(samples)} items")
    if not all(isinstance(s, Sample) for s in val_samples):
        raise ValueError("val_samples must be a list of Sample (labelled images kept out of training)")
    if sam2:
        return run_retrain_sam2(model, samples, lr=lr, batch_size=batch_size, seed=seed, train_config=train_config,
                                mode=mode, warmup_steps=warmup_steps, min_lr_ratio=min_lr_ratio, steps=steps,
                                max_seconds=max_seconds, val_samples=val_samples, val_every=val_every, recipe=recipe)
    start = time.perf_counter()
    if mode == "lora" and has_lora(model):
        merge_lora(model)  # the adapters it came with become base weights; this retrain's train on top
    plan = apply_finetune(model, FinetuneConfig(mode=mode, checkpoint_blocks="none" if mode == "decoder" else "auto"))
    cache = EmbeddingCache(cache_dir, model.image_encoder) if mode == "decoder" else None
    data = TrainingSamples(_Labelled(samples), model.image_encoder.img_size, MAX_OBJECTS, seed=seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    loss_cfg, prompt_cfg = _objective(train_config, recipe)
    loss_fn = SamLoss(loss_cfg.focal, loss_cfg.dice, loss_cfg.iou)
    schedule = build_scheduler(optimizer, steps, OptimConfig(lr=lr, warmup_steps=warmup_steps,
                                                             min_lr_ratio=min_lr_ratio))
    validate = _Validation(model, val_samples, prompt_cfg, loss_fn, loss_cfg.resolution, cache, seed)
    rng = np.random.default_rng(seed)
    result = RetrainResult([], mode=mode, trainable=plan.trainable)
    validate(0, result)
    model.train()

    def step_loss(step: int) -> torch.Tensor | None:
        chosen = rng.choice(len(data), min(batch_size, len(data)), replace=False)
        batch = collate_samples([data[(int(i), step)] for i in chosen])
        if len(batch["masks"]) == 0:
            return None  # every object vanished at the model's input size
        return training_losses(model, batch, prompt_cfg, loss_fn, rng, loss_cfg.resolution, embed=cache)["loss"]

    try:
        run_steps(steps, step_loss, params, optimizer, schedule, result, validate, val_every, start, max_seconds)
    finally:
        model.eval()
        set_checkpoint_blocks(encoder_blocks_owner(model), 0)  # inference as a model loaded from disk runs
    keep_best_weights(result, validate)
    if mode == "lora":
        merge_lora(model)  # a plain SAM again: the round's model is one ordinary checkpoint
    result.seconds = time.perf_counter() - start
    return result


class _Validation:
    """The validation loss of a retrain on its held-out labelled images, and the trained weights (those with
    ``requires_grad``: what the mode trains) that scored best. ``cache``: the embedding cache (decoder mode), else
    None and the image encoder runs."""

    def __init__(self, model: Sam, samples: list[Sample], prompts: PromptConfig, loss_fn: SamLoss, resolution: str,
                 cache: EmbeddingCache | None, seed: int) -> None:
        self.model, self.prompts, self.loss_fn, self.resolution, self.cache = model, prompts, loss_fn, resolution, cache
        data = TrainingSamples(_Labelled(samples), model.image_encoder.img_size, MAX_OBJECTS, seed=seed)
        self.batches = [b for b in (collate_samples([data[(i, 0)]]) for i in range(len(data))) if len(b["masks"])]
        self.seed = seed
        self.keep = KeepBest(model)

    def __call__(self, steps_done: int, result: RetrainResult) -> None:
        if not self.batches:
            return
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():  # each image its own draws, the same at every validation: the same first prompts
            loss = float(np.mean([float(training_losses(self.model, b, self.prompts, self.loss_fn,
                                                        np.random.default_rng([self.seed, 1, i]), self.resolution,
                                                        embed=self.cache)["loss"])
                                  for i, b in enumerate(self.batches)]))
        self.model.train(was_training)
        result.val_losses.append((steps_done, loss))
        self.keep.offer(loss, steps_done)

    def restore_best(self) -> int:
        """Put the best-scoring trained weights back into the model; the steps they had."""
        return self.keep.restore()


def _objective(train_config: Mapping[str, Any] | None, recipe: str | None = None) -> tuple[LossConfig, PromptConfig]:
    """The loss and (simulated) prompt settings of a recorded training config, else the defaults; a named
    ``recipe`` replaces the prompt settings."""
    loss, prompts = _recorded_objective(train_config)
    if recipe is not None:
        prompts = PromptConfig(**{**recipe_settings(recipe), "recipe": recipe})
    return loss, prompts


def _recorded_objective(train_config: Mapping[str, Any] | None) -> tuple[LossConfig, PromptConfig]:
    """The loss and (simulated) prompt settings of a recorded training config, else the defaults."""
    if train_config is None:
        return LossConfig(), PromptConfig()
    loss = config_section(train_config, LossConfig, "loss")
    prompts = config_section(train_config, PromptConfig, "prompts")
    prompts.source = "simulated"  # the labels carry no stored prompts
    return loss, prompts
