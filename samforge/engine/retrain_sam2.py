"""The data engine's retrain for SAM 2 models: :func:`samforge.engine.retrain.run_retrain` hands a ``SAM2Base`` here.

The labelled images become one-frame clips (:class:`~samforge.data.clip_dataset.ImageClipDataset` +
:class:`~samforge.train.clip_batches.TrainingClips`: SAM 2's resize and normalisation) and each step is SAM 2's own
training step (:class:`~samforge.train.sam2_step.Sam2TrainingForward` with
:class:`~samforge.train.sam2_losses.MultiStepMultiMaskLoss`): a one-frame clip is SAM 2 training on an image, a
first click or (noisy) box then ``num_correction_points`` correction clicks on the prediction's errors, every
prediction supervised. Loss weights and prompt sampling follow the recorded training config (its ``loss`` and
``sam2_prompts`` sections) or the official defaults. SAM (v1) prompt recipes do not apply: an explicit ``recipe``
is refused (the data engine's callers pass none for a SAM 2 model).

Modes, as :func:`samforge.train.finetune.apply_finetune` defines them for SAM 2: ``decoder`` trains everything but
the image and prompt encoders (the mask decoder, object-pointer heads and memory parts; on one-frame clips only
the first two get gradients); ``lora`` low-rank adapters on the Hiera trunk plus that decoder side, folded into the
weights before returning (a round's model is one plain checkpoint, as for SAM v1); ``full`` every weight. In
``decoder`` mode the frozen image encoder runs at every step (no embedding cache: SAM 2's decoder takes the
multi-level features of the FPN neck, which :class:`~samforge.train.embedding_cache.EmbeddingCache` does not
hold); with its weights frozen no activation of it is kept for the backward, so the cost is its forward only.
Validation and keep-best, the warmup/cosine schedule and ``max_seconds`` are those of ``run_retrain``."""

from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from samforge.data.clip_dataset import ImageClipDataset
from samforge.data.sample import Sample
from samforge.engine.keep_best import KeepBest, config_section, keep_best_weights, run_steps
from samforge.models.checkpointing import set_checkpoint_blocks
from samforge.models.lora import has_lora, merge_lora
from samforge.models.sam2 import SAM2Base
from samforge.train.clip_batches import TrainingClips, collate_clips
from samforge.train.config import FinetuneConfig, LossConfig, OptimConfig
from samforge.train.finetune import apply_finetune, encoder_blocks_owner
from samforge.train.optim import build_scheduler
from samforge.train.sam2_losses import MultiStepMultiMaskLoss
from samforge.train.sam2_step import Sam2PromptConfig, Sam2TrainingForward

MAX_OBJECTS = 16  # objects per image in one step, as the SAM v1 retrain


def run_retrain_sam2(model: SAM2Base, samples: Sequence[Sample], *, lr: float, batch_size: int, seed: int,
                     train_config: Mapping[str, Any] | None, mode: str, warmup_steps: int, min_lr_ratio: float,
                     steps: int, max_seconds: float | None, val_samples: Sequence[Sample], val_every: int,
                     recipe: str | None = None) -> Any:
    """Fine-tune the SAM 2 ``model`` in place as ``run_retrain`` does a SAM (its arguments, checked there first);
    returns a :class:`~samforge.engine.retrain.RetrainResult`. ``recipe`` must be None (module docstring)."""
    from samforge.engine.retrain import RetrainResult  # the shared result type (retrain.py imports this module)

    if not isinstance(model, SAM2Base):
        raise TypeError(f"model must be a SAM2Base, got {type(model).__name__}")
    if recipe is not None:
        raise ValueError(f"prompt recipes ({recipe!r}) are SAM (v1) click schedules; a SAM 2 retrain samples its "
                         "prompts as the SAM 2 trainer does (the recorded sam2_prompts): give recipe=None")
    soft = [s.name for s in (*samples, *val_samples) if s.soft_masks is not None]
    if soft:
        raise ValueError(f"SAM 2 trains on binary masks; these labelled images carry soft targets: {soft[:3]}")
    start = time.perf_counter()
    loss_cfg, prompts = sam2_objective(train_config)
    if mode == "lora" and has_lora(model):
        merge_lora(model)  # the adapters it came with become base weights; this retrain's train on top
    plan = apply_finetune(model, FinetuneConfig(mode=mode, checkpoint_blocks="none" if mode == "decoder" else "auto"))
    loss_fn = MultiStepMultiMaskLoss(loss_cfg.focal, loss_cfg.dice, loss_cfg.iou, loss_cfg.object_score)
    loss_fn = loss_fn.to(model.device)
    gate_before = model.gate_masks_in_training
    model.gate_masks_in_training = loss_cfg.gate_masks_by_object_score
    forward = Sam2TrainingForward(model, loss_fn, prompts)
    data = TrainingClips(ImageClipDataset(list(samples)), model.image_size, 1, MAX_OBJECTS, seed=seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = build_scheduler(optimizer, steps, OptimConfig(lr=lr, warmup_steps=warmup_steps,
                                                             min_lr_ratio=min_lr_ratio))
    validate = _Sam2Validation(forward, list(val_samples), loss_cfg.resolution, seed)
    rng = np.random.default_rng(seed)
    result = RetrainResult([], mode=mode, trainable=plan.trainable)
    try:
        validate(0, result)
        model.train()

        def step_loss(step: int) -> torch.Tensor | None:
            chosen = rng.choice(len(data), min(batch_size, len(data)), replace=False)
            try:
                batch = collate_clips([data[(int(i), step)] for i in chosen])
            except ValueError:  # no image of the draw keeps an object at the model's input size
                return None
            return forward(batch, rng, loss_cfg.resolution)["loss"]

        run_steps(steps, step_loss, params, optimizer, schedule, result, validate, val_every, start, max_seconds)
    finally:
        model.eval()
        model.gate_masks_in_training = gate_before
        set_checkpoint_blocks(encoder_blocks_owner(model), 0)  # inference as a model loaded from disk runs
    keep_best_weights(result, validate)
    if mode == "lora":
        merge_lora(model)  # a plain SAM 2 again: the round's model is one ordinary checkpoint
    result.seconds = time.perf_counter() - start
    return result


def sam2_objective(train_config: Mapping[str, Any] | None) -> tuple[LossConfig, Sam2PromptConfig]:
    """The loss settings and SAM 2 prompt sampling of a recorded training config (its ``loss`` and
    ``sam2_prompts`` sections), else the defaults. Learned loss weighting is off (its weights live outside the
    model, so a round could not keep them)."""
    if train_config is None:
        return LossConfig(), Sam2PromptConfig()
    loss = config_section(train_config, LossConfig, "loss")
    loss.learned_weighting = False
    return loss, config_section(train_config, Sam2PromptConfig, "sam2_prompts")


class _Sam2Validation:
    """The SAM 2 retrain's validation loss on its held-out images (each a one-frame clip with all its objects, the
    same prompt draws at every validation) and the trained weights (``requires_grad``) that scored best."""

    def __init__(self, forward: Sam2TrainingForward, samples: list[Sample], resolution: str, seed: int) -> None:
        self.forward, self.resolution, self.seed = forward, resolution, seed
        self.batches = []
        if samples:
            data = TrainingClips(ImageClipDataset(samples), forward.sam.image_size, 1, max_objects=10_000, seed=seed,
                                 max_redraws=1)
            for i in range(len(data)):
                try:
                    self.batches.append(collate_clips([data[(i, 0)]]))
                except ValueError:  # no object survives resizing: nothing to validate on this image
                    pass
        self.keep = KeepBest(forward.sam)

    def __call__(self, steps_done: int, result: Any) -> None:
        if not self.batches:
            return
        model = self.forward.sam
        was_training = model.training
        model.eval()
        with torch.no_grad():
            loss = float(np.mean([float(self.forward(b, np.random.default_rng([self.seed, 1, i]),
                                                     self.resolution)["loss"])
                                  for i, b in enumerate(self.batches)]))
        model.train(was_training)
        result.val_losses.append((steps_done, loss))
        self.keep.offer(loss, steps_done)

    def restore_best(self) -> int:
        """Put the best-scoring trained weights back into the model; the steps they had."""
        return self.keep.restore()
