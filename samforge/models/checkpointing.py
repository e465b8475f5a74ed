"""Activation checkpointing of an image encoder's blocks: a checkpointed block keeps only its input for the
backward pass and runs its forward again there (``torch.utils.checkpoint``, non-reentrant), trading about one
more encoder forward per step for the activations of those blocks. Gradients are the same as without.

An encoder (SAM's ``ImageEncoderViT``, SAM 2's ``Hiera``) checkpoints its first ``checkpoint_blocks`` blocks
(0: none) while gradients are being recorded; in inference nothing changes."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def block_forward(block: nn.Module, x: torch.Tensor, checkpointed: bool) -> torch.Tensor:
    """``block(x)``, under activation checkpointing when ``checkpointed`` and gradients are being recorded."""
    if checkpointed and torch.is_grad_enabled():
        return checkpoint(block, x, use_reentrant=False)
    return block(x)


def set_checkpoint_blocks(encoder: nn.Module, count: int) -> int:
    """Checkpoint the first ``count`` blocks of ``encoder`` (a module with ``blocks`` and a
    ``checkpoint_blocks`` attribute; at most all of them, 0 = none); returns the number set."""
    blocks = getattr(encoder, "blocks", None)
    if blocks is None or not hasattr(encoder, "checkpoint_blocks"):
        raise TypeError(f"expected an image encoder with blocks and checkpoint_blocks (ImageEncoderViT, Hiera), "
                        f"got {type(encoder).__name__}")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise ValueError(f"checkpoint_blocks must be an int >= 0, got {count!r}")
    encoder.checkpoint_blocks = min(count, len(blocks))
    return encoder.checkpoint_blocks
