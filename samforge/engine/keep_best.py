"""What the data engine's retrains (SAM, :mod:`samforge.engine.retrain`; SAM 2, :mod:`samforge.engine.retrain_sam2`)
share: the weights that validated best, put back at the end, and the sections of a recorded training config."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Mapping

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
