"""Axial rotary position encoding (RoPE) over a 2D token grid, and the attention layer that applies it
(SAM 2's memory attention). Follows the official order of operations."""

from __future__ import annotations

import math
from functools import partial

import torch

from samforge.models.transformer import Attention


def compute_axial_cis(dim: int, end_x: int | float, end_y: int | float, theta: float = 10000.0) -> torch.Tensor:
    """Complex rotations ``(end_x*end_y) x dim/2`` for a row-major ``end_y x end_x`` grid: the first half of
    the frequencies rotate with x, the second half with y."""
    freqs_x = 1.0 / (theta ** (torch.arange(0, dim, 4)[: (dim // 4)].float() / dim))
    freqs_y = 1.0 / (theta ** (torch.arange(0, dim, 4)[: (dim // 4)].float() / dim))
    t = torch.arange(end_x * end_y, dtype=torch.float32)
    t_x = (t % end_x).float()
    t_y = torch.div(t, end_x, rounding_mode="floor").float()
    freqs_x = torch.outer(t_x, freqs_x)
    freqs_y = torch.outer(t_y, freqs_y)
    cis_x = torch.polar(torch.ones_like(freqs_x), freqs_x)
    cis_y = torch.polar(torch.ones_like(freqs_y), freqs_y)
    return torch.cat([cis_x, cis_y], dim=-1)


def apply_rotary_enc(
    xq: torch.Tensor, xk: torch.Tensor, freqs_cis: torch.Tensor, repeat_freqs_k: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate queries and keys ``B x heads x N x C`` by ``freqs_cis`` (``N x C/2``). With ``repeat_freqs_k``
    the keys are several grids in a row (memories of several frames) and the rotations repeat for each."""
    xq_ = torch.view_as_complex(xq.float().reshape(*xq.shape[:-1], -1, 2))
    xk_ = torch.view_as_complex(xk.float().reshape(*xk.shape[:-1], -1, 2)) if xk.shape[-2] != 0 else None
    if freqs_cis.shape != (xq_.shape[-2], xq_.shape[-1]):
        raise ValueError(f"rotations of shape {tuple(freqs_cis.shape)} do not fit queries {tuple(xq.shape)}")
    freqs_cis = freqs_cis.view(*[d if i >= xq_.ndim - 2 else 1 for i, d in enumerate(xq_.shape)])
    xq_out = torch.view_as_real(xq_ * freqs_cis).flatten(3)
    if xk_ is None:  # no keys to rotate
        return xq_out.type_as(xq).to(xq.device), xk
    if repeat_freqs_k:
        r = xk_.shape[-2] // xq_.shape[-2]
        # expand + flatten rather than repeat: repeat on complex tensors is not supported on every device
        freqs_cis = freqs_cis.unsqueeze(2).expand(-1, -1, r, -1, -1).flatten(2, 3)
    xk_out = torch.view_as_real(xk_ * freqs_cis).flatten(3)
    return xq_out.type_as(xq).to(xq.device), xk_out.type_as(xk).to(xk.device)


class RoPEAttention(Attention):
    """Attention with axial rotary position encoding of queries and keys (queries form a square grid).

    ``rope_k_repeat``: keys hold several grids (cross-attention to memories). The last
    ``num_k_exclude_rope`` keys (object pointers) are not rotated.
    """

    def __init__(
        self,
        *args,
        rope_theta: float = 10000.0,
        rope_k_repeat: bool = False,
        feat_sizes: tuple[int, int] = (64, 64),
        **kwargs,
    ) -> None:
        super().__init__(*args, fused_fp32=True, **kwargs)
        self.compute_cis = partial(compute_axial_cis, dim=self.internal_dim // self.num_heads, theta=rope_theta)
        self.freqs_cis = self.compute_cis(end_x=feat_sizes[0], end_y=feat_sizes[1])  # not a parameter or buffer
        self.rope_k_repeat = rope_k_repeat

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_k_exclude_rope: int = 0
    ) -> torch.Tensor:
        q = self._separate_heads(self.q_proj(q))
        k = self._separate_heads(self.k_proj(k))
        v = self._separate_heads(self.v_proj(v))

        w = h = math.sqrt(q.shape[-2])
        self.freqs_cis = self.freqs_cis.to(q.device)
        if self.freqs_cis.shape[0] != q.shape[-2]:
            self.freqs_cis = self.compute_cis(end_x=w, end_y=h).to(q.device)
        if q.shape[-2] != k.shape[-2] and not self.rope_k_repeat:
            raise ValueError(f"{q.shape[-2]} queries and {k.shape[-2]} keys need rope_k_repeat=True")
        num_k_rope = k.size(-2) - num_k_exclude_rope
        q, k[:, :, :num_k_rope] = apply_rotary_enc(
            q, k[:, :, :num_k_rope], freqs_cis=self.freqs_cis, repeat_freqs_k=self.rope_k_repeat
        )
        return self._attend(q, k, v)
