"""Pretrained SAM 2 weights by name, as the official ``*_hf`` builders and ``from_pretrained`` take them, but local.

``build_sam2_hf(model_id)`` and friends take a local checkpoint file, or a local folder holding exactly one
checkpoint (a downloaded model repository). An official Hugging Face id (``facebook/sam2.1-hiera-tiny``, ...)
that is not a local path is refused with a message naming the file to download: samforge does not download
weights here. The configuration is ``config_file`` when given, else the official one of the file's name
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
        if name in HF_MODELS:
            config, filename = HF_MODELS[name]
            raise ValueError(f"samforge does not download weights: get {filename} from the Hugging Face repository "
                             f"{name} (https://huggingface.co/{name}) and pass its local path (its config is {config!r})")
        if HUB_ID.match(name):
            raise ValueError(f"{name!r} is not a local file or folder, and samforge does not download from the "
                             f"Hugging Face hub: download the checkpoint and pass its path")
        raise FileNotFoundError(f"SAM 2 checkpoint not found: {name} (expected a checkpoint file or a folder holding one)")
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
