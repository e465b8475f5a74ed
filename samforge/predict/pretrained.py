"""Pretrained SAM 2 weights by name, as the official ``*_hf`` builders and ``from_pretrained`` take them, but local.

``build_sam2_hf(model_id)`` and friends take a local checkpoint file, a local folder holding exactly one
checkpoint (a downloaded model repository), or an official Hugging Face id (``facebook/sam2.1-hiera-tiny``, ...),
which is fetched, verified and cached by :func:`samforge.weights.resolve_checkpoint` (through ``huggingface_hub``,
or by the official name's own URL; offline, a missing file is an error naming where to put it). The configuration is ``config_file`` when given, else the official one of the file's name
(``sam2.1_hiera_tiny.pt`` -> ``sam2.1_hiera_t``), else the one the weights' shapes match.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from samforge.models.checkpoint import read_state_dict
from samforge.models.sam2 import SAM2Base, build_sam2, guess_sam2_config
from samforge.predict.sam2_predictor import HF_MODELS
from samforge.weights import resolve_checkpoint

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# the official table: model id -> (config file, checkpoint file name)
HF_MODEL_ID_TO_FILENAMES = {
    model_id: (f"configs/{config.split('_')[0]}/{config}.yaml", filename)
    for model_id, (config, filename) in HF_MODELS.items()
}
CONFIG_BY_FILENAME = {filename: config for config, filename in HF_MODELS.values()}


def resolve_sam2_pretrained(model_id: str | os.PathLike, config_file: str | None = None) -> tuple[str, Path]:
    """(config name, checkpoint file) of a local SAM 2 checkpoint file or folder (see the module docstring)."""
    if not isinstance(model_id, (str, os.PathLike)):
        raise TypeError(f"model_id must be a local checkpoint path or folder (str or os.PathLike), "
                        f"got {type(model_id).__name__}")
    if config_file is not None and not isinstance(config_file, (str, os.PathLike)):
        raise TypeError(f"config_file must be None or a config name or path, got {type(config_file).__name__}")
    path = Path(model_id)
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)
        if len(found) != 1:
            raise ValueError(f"model folder {path} must hold exactly one checkpoint ({', '.join(CHECKPOINT_SUFFIXES)}), "
                             f"found {[p.name for p in found]}")
        path = found[0]
    elif not path.is_file():
        name = str(model_id)
        if name in HF_MODELS:  # an official id: downloaded (or found in the cache) and verified
            path = resolve_checkpoint(name, what="SAM 2 checkpoint")
            if config_file is None:
                return HF_MODELS[name][0], path
        elif HUB_ID.match(name):
            raise ValueError(f"{name!r} is neither a local file or folder nor an official SAM 2 model id "
                             f"({', '.join(sorted(HF_MODELS))}): download its checkpoint and pass the path")
        else:
            raise FileNotFoundError(f"SAM 2 checkpoint not found: {name} (expected a checkpoint file, a folder "
                                    "holding one, or an official model id such as facebook/sam2.1-hiera-tiny)")
    if config_file is not None:
        return str(config_file), path
    config = CONFIG_BY_FILENAME.get(path.name) or guess_sam2_config(read_state_dict(path))
    if config is None:
        raise ValueError(f"{path} does not look like a SAM 2 checkpoint of a known size; pass config_file=...")
    return config, path


def build_sam2_hf(model_id: str | os.PathLike, **kwargs: Any) -> SAM2Base:
    """The official ``build_sam2_hf`` on local weights: ``build_sam2(config, checkpoint, **kwargs)`` for the
    config and checkpoint :func:`resolve_sam2_pretrained` finds (``config_file=`` picks the config)."""
    config, path = resolve_sam2_pretrained(model_id, kwargs.pop("config_file", None))
    return build_sam2(config, path, **kwargs)
