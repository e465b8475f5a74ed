"""Reading checkpoint files safely and loading them strictly, with messages that name the problem."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from samforge.weights import resolve_checkpoint

MAX_KEYS_SHOWN = 12
ZIP_MAGIC, PICKLE_MAGIC = b"PK", b"\x80"  # torch.save's zip format; the legacy format starts with a pickle


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a ``.pt``/``.pth`` file (never unpickling arbitrary objects) or ``.safetensors``.

    Accepts a raw state dict (official SAM) or a dict holding it under ``"model"`` (SAM 2, samforge).
    """
    return read_checkpoint(path)[0]


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Like :func:`read_state_dict`, and also return the file's other entries (e.g. samforge's
    ``sam_config``, ``config``, ``step``); empty for a raw state dict. ``path`` may also be an official name
    (``sam_vit_b``), an http(s) URL or a Hugging Face id: see :func:`samforge.weights.resolve_checkpoint`."""
    if not isinstance(path, (str, Path)):
        raise TypeError(f"checkpoint must be a path (str or Path), got {type(path).__name__}")
    path = resolve_checkpoint(path)  # an official name, URL or Hugging Face id -> its verified file in the cache
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"checkpoint file is empty: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"could not read safetensors checkpoint {path} (truncated or corrupted?): {e}") from e
    else:
        with open(path, "rb") as f:
            head = f.read(16)
        if not head.startswith((ZIP_MAGIC, PICKLE_MAGIC)):
            raise ValueError(f"could not read checkpoint {path}: it is not a checkpoint: expected a PyTorch weights "
                             f"file (.pt/.pth, a zip archive or a pickle) or .safetensors, got a file starting with "
                             f"{head!r}" + (" (text)" if head.isascii() else ""))
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise ValueError(
                f"could not read checkpoint {path}: it is not a PyTorch weights file, or it holds objects other "
                f"than tensors, which samforge refuses to unpickle ({str(e).splitlines()[0]})"
            ) from e
        except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
            raise ValueError(f"could not read checkpoint {path} (truncated or corrupted?): {e}") from e
        except (IndexError, KeyError, TypeError, AttributeError, ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"could not read checkpoint {path}: it is not a checkpoint: expected a PyTorch weights "
                             f"file, and reading it as one failed ({type(e).__name__}: {e})") from e
    extras: dict = {}
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        extras = {k: v for k, v in obj.items() if k != "model"}
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            f"checkpoint {path} does not hold a state dict (a dict of tensors, or one under 'model'); "
            f"got {type(obj).__name__}"
        )
    return obj, extras


def _shown(keys: list[str]) -> str:
    more = f" ... and {len(keys) - MAX_KEYS_SHOWN} more" if len(keys) > MAX_KEYS_SHOWN else ""
    return ", ".join(keys[:MAX_KEYS_SHOWN]) + more


def load_state_dict_strict(
    model: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "state dict", hint: str = ""
) -> None:
    """Load ``state_dict`` into ``model``; any missing, unexpected or mis-shaped key is a ``ValueError``
    naming the keys (``hint`` is appended, e.g. what the file looks like instead)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = sorted(
        f"{k} (file {tuple(state_dict[k].shape)}, model {tuple(expected[k].shape)})"
        for k in set(expected) & set(state_dict)
        if state_dict[k].shape != expected[k].shape
    )
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_shown(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_shown(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches ({len(mismatched)}): {_shown(mismatched)}")
    if problems:
        raise ValueError(f"{source} does not match the model: " + "; ".join(problems) + (f". {hint}" if hint else ""))
    check_finite(state_dict, source)
    model.load_state_dict(state_dict, strict=True)


def check_finite(state_dict: dict[str, torch.Tensor], source: str = "state dict") -> None:
    """``ValueError`` naming the floating-point tensors of ``state_dict`` that hold NaN or inf (one pass)."""
    bad = sorted(k for k, v in state_dict.items()
                 if v.is_floating_point() and v.numel() and not bool(torch.isfinite(v).all()))
    if bad:
        raise ValueError(f"{source} holds NaN or inf weights in {len(bad)} tensors, expected finite numbers: "
                         f"{_shown(bad)} (a diverged training run, or a damaged file)")
