"""Build the model a round refers to (:class:`samforge.engine.rounds.ModelRef`): its checkpoint, or random weights of
its model type, with its LoRA adapter loaded on top."""

from __future__ import annotations

import torch

from samforge.engine.rounds import ModelRef
from samforge.models.build import build_sam
from samforge.models.load import load_model
from samforge.models.sam import Sam
from samforge.models.sam2 import SAM2_CONFIGS, SAM2Base, build_sam2
from samforge.train.adapter_file import load_adapter
from samforge.weights import model_type_of


def load_model_ref(ref: ModelRef, device: str | torch.device = "cpu", seed: int = 0) -> Sam | SAM2Base:
    """The model of ``ref`` in eval mode on ``device``: its checkpoint (a file or an official name; ``model_type``
    optional where the checkpoint says it), else random weights of ``model_type`` drawn with ``seed``; then its
    adapter (checked against the base weights it was trained on)."""
    if not isinstance(ref, ModelRef):
        raise TypeError(f"ref must be a ModelRef, got {type(ref).__name__}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {seed!r}")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be a torch device such as cpu or cuda:0, got {device!r}") from e
    if ref.checkpoint is not None:
        model = load_model(ref.checkpoint, ref.model_type or model_type_of(ref.checkpoint), device=device)
    else:
        torch.manual_seed(seed)
        build = build_sam2 if ref.model_type in SAM2_CONFIGS else build_sam
        model = build(ref.model_type, device=device)
    if ref.adapter is not None:
        load_adapter(model, ref.adapter)
    return model.eval()
