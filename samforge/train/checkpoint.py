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


def load_resume_checkpoint(ckpt_dir: Path) -> tuple[dict[str, Any] | None, str]:
    """The checkpoint a rerun resumes from, and a note to print: ``last.pt``; when it is unreadable (truncated,
    damaged), ``best.pt`` if readable (an earlier step), with a note saying so; (None, "") without ``last.pt``.
    ``ValueError`` naming both files when neither is readable."""
    last, best = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    if not last.is_file():
        return None, ""
    try:
        return load_training_checkpoint(last), ""
    except ValueError as e:
        last_error = e
    try:
        ckpt = load_training_checkpoint(best)
    except (ValueError, FileNotFoundError) as e:
        raise ValueError(f"cannot resume: {last_error}; and the fallback {best} is not usable either ({e}). "
                         f"Delete {ckpt_dir} to start the run over, or give another out folder") from last_error
    note = (f"WARNING: {last_error}; resuming from {best.name} instead (step {int(ckpt['step'])}): the steps "
            "after it are run again")
    return ckpt, note


def load_training_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_training_checkpoint` (no arbitrary unpickling)."""
    if not path.is_file():
        raise FileNotFoundError(f"training checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"could not read training checkpoint {path} (truncated or corrupted?): {e}") from e
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path} is not a samforge training checkpoint: it holds a {type(ckpt).__name__}")
    missing = {"model", "optimizer", "scheduler", "step", "config", "sam_config"} - set(ckpt)
    if missing:
        raise ValueError(f"{path} is not a samforge training checkpoint: it lacks {sorted(missing)}")
    return ckpt
