"""A start for the mask decoder's attention that lets a model trained from scratch use its prompts sooner.

The mask decoder learns where a prompt is only through its attention: a pixel (its features plus its positional
encoding) attends to the prompt tokens (theirs plus the prompt's positional encoding) by ``(W_q a) . (W_k b)``. At
a random start ``W_q^T W_k`` is a random bilinear form, so a pixel is no more drawn to a click beside it than to
one across the image, and the masks hardly depend on the prompt: from scratch, the small quickstart model predicts
nearly the same map for every click (correlation 0.7-0.99 between two objects' clicks after 700 steps) and stays on
an "all background" plateau for 300 to 700+ steps, by chance of the seed (benchmarks/README.md).

Starting each attention with its key projection equal to its query projection makes ``W_q^T W_k = W^T W``, a
similarity: a pixel attends most to the tokens whose features and positional encoding resemble its own, so the
click's place reaches the mask from the first step. Only the start changes: the two projections still train
apart, the architecture is the official one, and weights loaded from a checkpoint are never touched.
"""

from __future__ import annotations

import torch
from torch import nn

from samforge.models.transformer import Attention


@torch.no_grad()
def align_query_key(module: nn.Module) -> int:
    """Copy the query projection of every decoder :class:`Attention` inside ``module`` into its key projection
    (weight and bias) where the two have the same shape; returns how many were aligned (0: none found)."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module: expected a torch.nn.Module, got {type(module).__name__}")
    aligned = 0
    for m in module.modules():
        if isinstance(m, Attention) and m.q_proj.weight.shape == m.k_proj.weight.shape:
            m.k_proj.weight.copy_(m.q_proj.weight)
            m.k_proj.bias.copy_(m.q_proj.bias)
            aligned += 1
    return aligned
