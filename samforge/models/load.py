"""One loader for every checkpoint samforge reads: official SAM and SAM 2 files (``.pth``/``.pt``/``.safetensors``)
and samforge training checkpoints of either family, which record the model they hold (a SAM 2 one its config name
and overrides, e.g. a smaller image size)."""

from __future__ import annotations

from pathlib import Path

import torch

from samforge.models.build import sam_from_weights
from samforge.models.checkpoint import load_state_dict_strict, read_checkpoint
from samforge.models.configs import SAM_CONFIGS
from samforge.models.sam import Sam
from samforge.models.sam2 import SAM2_CONFIGS, SAM2Base, build_sam2, guess_sam2_config

SAM2_TRUNK_KEY = "image_encoder.trunk.patch_embed.proj.weight"  # in every SAM 2 state dict


def load_model(checkpoint: str | Path, model_type: str | None = None, *,
               device: str | torch.device | None = None) -> Sam | SAM2Base:
    """The SAM or SAM 2 model of ``checkpoint``, in eval mode (on ``device``, default CPU).

    ``model_type``: a SAM name (``vit_b``, ``default``, ...) or a SAM 2 name (``sam2.1_hiera_t``, ...); not needed
    for samforge checkpoints (they record their model) and, when omitted for official files, guessed from the
    weights' shapes (SAM first, then SAM 2)."""
    names = ("default", *SAM_CONFIGS, *SAM2_CONFIGS)
    if model_type is not None and model_type not in names:
        raise ValueError(f"model_type must be one of {list(names)} or None, got {model_type!r}")
    state_dict, extras = read_checkpoint(checkpoint)
    source = f"checkpoint {checkpoint}"
    record = extras.get("sam_config")
    if isinstance(record, dict) and record.get("family") == "sam2":
        name, overrides = str(record["config_name"]), list(record.get("overrides", []))
        if model_type is not None and model_type != name:
            raise ValueError(f"{source} holds a {name!r} SAM 2 model, but model_type {model_type!r} was given")
        model = _sam2(state_dict, name, overrides, source)
    elif model_type in SAM2_CONFIGS:
        if SAM2_TRUNK_KEY not in state_dict:
            raise ValueError(f"{source} is not a SAM 2 checkpoint (it has no {SAM2_TRUNK_KEY}), but model type "
                             f"{model_type!r} is a SAM 2 model; pass the SAM (v1) model type instead")
        model = _sam2(state_dict, model_type, [], source)
    elif model_type is None and not isinstance(record, dict) and SAM2_TRUNK_KEY in state_dict:
        name = guess_sam2_config(state_dict)
        if name is None:
            raise ValueError(f"{source} is a SAM 2 checkpoint of no known size: pass model_type, one of "
                             f"{list(SAM2_CONFIGS)}")
        model = _sam2(state_dict, name, [], source)
    else:
        model = sam_from_weights(state_dict, extras, model_type, source)
    model.eval()
    return model.to(device or "cpu")


def _sam2(state_dict: dict[str, torch.Tensor], name: str, overrides: list[str], source: str) -> SAM2Base:
    guess = guess_sam2_config(state_dict)
    hint = f"The file looks like a {guess!r} checkpoint." if guess not in (None, name) else ""
    model = build_sam2(name, None, device="cpu", hydra_overrides_extra=overrides)
    load_state_dict_strict(model, state_dict, source=f"{source} (SAM 2 config {name!r})", hint=hint)
    return model
