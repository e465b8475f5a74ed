"""TF32 on CUDA: Ampere and newer GPUs run fp32 matrix products and convolutions on tensor cores with a 10-bit
mantissa (TF32), several times faster; the MedSAM2 and SAM 2 trainers turn it on for fp32 training. ``fp32-strict``
keeps true fp32 (both flags off). Nothing is set on other devices."""

from __future__ import annotations

import torch

TF32_MIN_CAPABILITY = 8  # Ampere (sm_80) and newer


def set_tf32(device: torch.device | str, strict: bool) -> bool:
    """On a CUDA ``device``: allow TF32 matmuls and cuDNN convolutions (``torch.backends.cuda.matmul.allow_tf32``,
    ``torch.backends.cudnn.allow_tf32``) on Ampere or newer unless ``strict``, else turn both off; returns whether
    TF32 is on. On any other device nothing is changed and it returns False."""
    device = torch.device(device)
    if device.type != "cuda":
        return False
    enable = not strict and torch.cuda.get_device_capability(device)[0] >= TF32_MIN_CAPABILITY
    torch.backends.cuda.matmul.allow_tf32 = enable
    torch.backends.cudnn.allow_tf32 = enable
    return enable
