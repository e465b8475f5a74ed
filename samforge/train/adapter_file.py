"""A LoRA adapter as its own small ``.safetensors`` file: the adapter tensors, plus metadata recording the LoRA
configuration, the base model's configuration and a fingerprint of the base weights, so an adapter is never
silently applied to another model.

    save_adapter("adapter.safetensors", model, lora_config, base_fingerprint)
    model = build_sam("vit_b", "sam_vit_b_01ec64.pth")
    load_adapter(model, "adapter.safetensors")     # checks the base, adds the adapters, loads them
    merge_lora(model)                               # a plain SAM again
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from samforge.models.lora import LORA_KEY, LoraConfig, add_lora, has_lora, lora_state_dict
from samforge.utils.atomic import atomic_path

ADAPTER_FORMAT = "samforge-lora"
ADAPTER_VERSION = "1"


def weights_fingerprint(model_or_state: nn.Module | dict[str, torch.Tensor]) -> str:
    """SHA-256 of a model's base weights (adapter tensors excluded): names, dtypes, shapes and bytes in name
    order. The same weights give the same fingerprint whatever file format they came from."""
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    digest = hashlib.sha256()
    for name in sorted(k for k in state if LORA_KEY not in k):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def save_adapter(path: str | Path, model: nn.Module, config: LoraConfig, base_fingerprint: str,
                 model_type: str = "custom", trained_prefixes: tuple[str, ...] = ()) -> Path:
    """Write ``model``'s adapters to ``path`` atomically. ``base_fingerprint``: ``weights_fingerprint`` of the
    base model before training. ``trained_prefixes``: parts of the base trained along with the adapters (e.g.
    ``("mask_decoder.",)``), whose weights the file then carries whole and replaces on loading."""
    if not isinstance(config, LoraConfig):
        raise TypeError(f"config must be a LoraConfig, got {type(config).__name__}")
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"an adapter file must end in .safetensors, got {path}")
    tensors = {k: v.contiguous() for k, v in lora_state_dict(model).items()}
    state = model.state_dict()
    replaced = sorted(k for k in state if LORA_KEY not in k and any(k.startswith(p) for p in trained_prefixes))
    if trained_prefixes and not replaced:
        raise ValueError(f"no weight of the model starts with {trained_prefixes}")
    tensors.update({k: state[k].detach().contiguous().clone() for k in replaced})
    metadata = {
        "format": ADAPTER_FORMAT,
        "version": ADAPTER_VERSION,
        "lora": json.dumps(config.to_dict()),
        "base_fingerprint": base_fingerprint,
        "model_type": model_type,
        "replaces": json.dumps(replaced),
    }
    sam_config = getattr(model, "config", None)
    if sam_config is not None and hasattr(sam_config, "to_dict"):
        metadata["sam_config"] = json.dumps(sam_config.to_dict())
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def read_adapter(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The adapter tensors and metadata (with ``lora`` parsed into a ``LoraConfig``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"adapter file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"could not read adapter {path}: not a safetensors file, or truncated ({e})") from e
    if metadata.get("format") != ADAPTER_FORMAT:
        raise ValueError(f"{path} is not a samforge LoRA adapter (metadata format {metadata.get('format')!r}, "
                         f"expected {ADAPTER_FORMAT!r})")
    try:
        metadata["lora"] = LoraConfig(**json.loads(metadata["lora"]))
        metadata["replaces"] = list(json.loads(metadata.get("replaces", "[]")))
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: bad LoRA configuration in the metadata: {e}") from e
    return tensors, metadata


def load_adapter(model: nn.Module, path: str | Path, check_base: bool = True) -> LoraConfig:
    """Add the adapters of ``path`` to ``model`` (a plain SAM holding the base weights) and load them.
    With ``check_base`` the model's weights must be the base the adapter was trained on."""
    tensors, metadata = read_adapter(path)
    if has_lora(model):
        raise ValueError(f"the model already has LoRA adapters; load {path} into a plain base model")
    if check_base:
        found = weights_fingerprint(model)
        if found != metadata.get("base_fingerprint"):
            raise ValueError(
                f"adapter {path} was trained on another base model (model type {metadata.get('model_type')!r}, "
                f"weights fingerprint {str(metadata.get('base_fingerprint'))[:12]}...), but this model's weights have "
                f"fingerprint {found[:12]}...; load the adapter onto the checkpoint it was trained from")
    config: LoraConfig = metadata["lora"]
    try:
        add_lora(model, config)
    except ValueError as e:
        raise ValueError(f"adapter {path} does not fit this model: {e}") from e
    shapes = model.state_dict()
    expected = {k for k in shapes if LORA_KEY in k} | set(metadata["replaces"])
    if set(tensors) != expected:
        missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise ValueError(f"adapter {path} does not fit this model: missing {missing[:6]}, unexpected {unexpected[:6]}")
    wrong = [k for k, v in tensors.items() if v.shape != shapes[k].shape]
    if wrong:
        raise ValueError(f"adapter {path} does not fit this model: shapes differ for {wrong[:6]}")
    model.load_state_dict(tensors, strict=False)
    return config
