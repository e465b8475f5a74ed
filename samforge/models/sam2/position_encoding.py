"""SAM 2's sine positional encoding of feature maps (DETR style), used by the FPN neck and the memory encoder."""

from __future__ import annotations

import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """Sine/cosine encoding of the (row, column) of every cell of a ``B x C x H x W`` map -> ``B x C' x H x W``.

    ``num_pos_feats`` is the output width C' (half for y, half for x). It has no parameters; encodings are
    cached per grid size and device.
    """

    def __init__(
        self, num_pos_feats: int, temperature: int = 10000, normalize: bool = True, scale: float | None = None
    ) -> None:
        super().__init__()
        if num_pos_feats % 2 != 0:
            raise ValueError(f"num_pos_feats must be even (half for y, half for x), got {num_pos_feats}")
        if scale is not None and not normalize:
            raise ValueError("scale is only used with normalize=True")
        self.num_pos_feats = num_pos_feats // 2
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale
        self._cache: dict[tuple[int, int, torch.device], torch.Tensor] = {}

    def _frequencies(self, device: torch.device) -> torch.Tensor:
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=device)
        return self.temperature ** (2 * (dim_t // 2) / self.num_pos_feats)

    @torch.no_grad()
    def _encode_grid(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        """``1 x C' x h x w``, in the official order of operations."""
        y_embed = torch.arange(1, h + 1, dtype=torch.float32, device=device).view(1, -1, 1).repeat(1, 1, w)
        x_embed = torch.arange(1, w + 1, dtype=torch.float32, device=device).view(1, 1, -1).repeat(1, h, 1)
        if self.normalize:
            eps = 1e-6
            y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale
        dim_t = self._frequencies(device)
        pos_x = x_embed[:, :, :, None] / dim_t
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        key = (h, w, x.device)
        if key not in self._cache:
            self._cache[key] = self._encode_grid(h, w, x.device).contiguous()
        return self._cache[key].repeat(x.shape[0], 1, 1, 1)
