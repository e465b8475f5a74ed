"""Training checkpoints: model weights, the full config, optimizer, scheduler, step and RNG states, written
atomically (temporary file + ``os.replace``) so a killed run never leaves a half-written file."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from samforge.utils.atomic import atomic_path


def rng_state() -> dict[str, Any]:
    _, key, pos, has_gauss, cached = np.random.get_state()
    numpy_state = {"key": key.tolist(), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": numpy_state}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", np.array(n["key"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_checkpoint(path: Path, **entries: Any) -> None:
    """``torch.save(entries)`` to ``path`` atomically. Entries must be tensors, numbers, strings, lists and
    dicts of those (so the file loads back with ``weights_only=True``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(entries, tmp)


def load_training_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_training_checkpoint` (no arbitrary unpickling)."""
    if not path.is_file():
        raise FileNotFoundError(f"training checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"could not read training checkpoint {path} (truncated or corrupted?): {e}") from e
    missing = {"model", "optimizer", "scheduler", "step", "config", "sam_config"} - set(ckpt)
    if missing:
        raise ValueError(f"{path} is not a samforge training checkpoint: it lacks {sorted(missing)}")
    return ckpt
