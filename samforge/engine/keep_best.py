"""What the data engine's retrains (SAM, :mod:`samforge.engine.retrain`; SAM 2, :mod:`samforge.engine.retrain_sam2`)
share: the step loop, the weights that validated best (put back at the end), and the sections of a recorded training
config."""

from __future__ import annotations

import time
from dataclasses import fields
from typing import Any, Callable, Mapping

import torch


class KeepBest:
    """The trained weights of ``model`` (those with ``requires_grad``: what the retrain's mode trains) at the lowest
    validation loss offered so far, and the steps they had."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.best: tuple[float, int, dict[str, torch.Tensor]] | None = None

    def offer(self, loss: float, steps_done: int) -> None:
        """Keep a copy of the trained weights when ``loss`` is the lowest yet (the first offer always)."""
        if self.best is None or loss < self.best[0]:
            weights = {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}
            self.best = (loss, steps_done, weights)

    def restore(self) -> int:
        """Put the best-scoring trained weights back into the model; the steps they had (0 when none was offered)."""
        if self.best is None:
            return 0
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in self.best[2].items():
                params[name].copy_(value)
        return self.best[1]


def config_section(train_config: Mapping[str, Any], cls: type, name: str) -> Any:
    """``cls`` (a dataclass) built from section ``name`` of a recorded training config: the keys it knows, the
    defaults for the others (none recorded: all defaults)."""
    if not isinstance(train_config, Mapping):
        raise TypeError(f"train_config must be a dict (a checkpoint's recorded config) or None, got "
                        f"{type(train_config).__name__}")
    given = train_config.get(name) or {}
    if not isinstance(given, Mapping):
        raise ValueError(f"train_config['{name}'] must be a dict, got {type(given).__name__}")
    return cls(**{f.name: given[f.name] for f in fields(cls) if f.name in given})


def run_steps(steps: int, step_loss: Callable[[int], torch.Tensor | None], params: list[torch.nn.Parameter],
              optimizer: torch.optim.Optimizer, schedule: Any, result: Any, validate: Any, val_every: int,
              start: float, max_seconds: float | None) -> None:
    """The retrain's AdamW steps: ``step_loss(step)`` is the step's loss (None: no object in the draw, skipped),
    gradients clipped to norm 1, the loss appended to ``result.losses``, ``validate`` every ``val_every`` steps; stops
    after the step that passes ``max_seconds`` since ``start``."""
    for step in range(steps):
        if max_seconds is not None and result.losses and time.perf_counter() - start > max_seconds:
            break
        out = step_loss(step)
        if out is None:
            continue
        optimizer.zero_grad(set_to_none=True)
        out.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        result.losses.append(float(out.detach()))
        if len(result.losses) % val_every == 0:
            validate(len(result.losses), result)


def keep_best_weights(result: Any, validate: Any) -> None:
    """After the steps: refuse a retrain that trained nothing, validate the last step if it was not, and put back the
    weights that validated best (``result.kept_step``; the last step's without validation images)."""
    if not result.losses:
        raise ValueError("no object of the labelled images survives resizing to the model's input: nothing trained")
    if result.val_losses and result.val_losses[-1][0] != len(result.losses):
        validate(len(result.losses), result)
    result.kept_step = validate.restore_best() if validate.batches else len(result.losses)
