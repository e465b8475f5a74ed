"""The int8 copy of SAM 2's image encoder, arranged for a CPU's memory (issue #25).

The same computation as :class:`~samforge.models.sam2.hiera.MultiScaleBlock` and the FPN neck, in a different order:

- **Window blocks run window chunk by window chunk**: a block whose grid divides into its windows (the stride-4 and
  stride-8 stages at 1024 input) partitions its input once and runs norm, attention (queries pooled inside each window
  at a stage change, as the grid pooling does when the window is a multiple of the stride), residual and MLP on a chunk
  of windows at a time (:data:`CHUNK_ELEMENTS`), then unpartitions once. The original runs each step on the whole
  grid: at stride 4 that is 65536 tokens, and every intermediate (the 65536 x 576 qkv output, the 65536 x 384 MLP
  hidden layer) is a fresh 25-150 MB buffer whose first touch costs page faults: in the profile of ``set_image`` the
  GELU of that hidden layer took 0.35 s (0.12 s on a reused buffer) and copying the bias into the qkv output 0.38 s.
- **MLPs run token chunk by token chunk** (every block, the global ones included), and the attention of blocks whose
  windows are padded (the third stage's 14 x 14 windows on a 64 x 64 grid) window chunk by window chunk.
- **The neck's 1x1 lateral convolutions are matrix products on the channels-last trunk output** (the trunk hands out
  ``B x H x W x C`` permuted to ``B x C x H x W``): oneDNN ran the stride-4 one in 0.46-0.54 s, the matrix product and
  its bias 0.17 s, and the neck's outputs come out channels-last, where the decoder's ``conv_s0`` / ``conv_s1`` 1x1
  convolutions run 10x faster than on the contiguous ``B x C x H x W`` layout (0.25 s -> 0.02 s, 256 -> 32 channels
  at 256 x 256).
- **The positional embedding is cached** (:class:`CachedPosEmbed`; its bicubic resize took 0.07-0.11 s a call).

Each int8 activation chunk is quantised with its own scale. Figures: 2026-12-04, AMD EPYC (AVX2 only), 2 cores shared
(load average 9-11), torch.profiler of sam2.1_hiera_t ``set_image`` at 1024; the whole-path figures are in
:mod:`samforge.predict.quantize` (``SAM2_WEIGHT_BITS``). Inference only (no drop path); the exact fp32 path never runs these modules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from samforge.models.common import MLP
from samforge.models.image_encoder import window_partition, window_unpartition
from samforge.models.sam2.hiera import Hiera, MultiScaleAttention, MultiScaleBlock, do_pool

CHUNK_ELEMENTS = 4 << 20
"""Floats in a chunk's widest intermediate (16 MB): under glibc's largest mmap threshold (32 MB), so freed chunks are
reused without page faults; few enough chunks that the per-op cost stays small. On 2 shared cores every op's OpenMP
barrier waits for a descheduled thread: 1 MB chunks (4x the ops) measured 4.90 s against 4.50 s for 16 MB ones
(sam2.1_hiera_t int8 ``set_image``, medians of 3 alternating calls, 2026-12-04, AMD EPYC AVX2, load 8-9)."""


def _adopt(target: nn.Module, source: nn.Module) -> None:
    """Give ``target`` the submodules and plain attributes of ``source`` (shared, not copied), so a subclass instance
    runs with the same layers under the same state-dict names."""
    nn.Module.__init__(target)
    for name, value in vars(source).items():
        if not name.startswith("_") and name != "training":
            setattr(target, name, value)
    for name, child in source.named_children():
        setattr(target, name, child)
    target.train(source.training)


class ChunkedMLP(MLP):
    """An :class:`~samforge.models.common.MLP` run on chunks of tokens (rows), each chunk's widest layer at most
    :data:`CHUNK_ELEMENTS` floats; the same layers (shared) and state-dict names as ``mlp``."""

    def __init__(self, mlp: MLP) -> None:
        if not isinstance(mlp, MLP):
            raise TypeError(f"mlp must be a samforge MLP, got {type(mlp).__name__}")
        _adopt(self, mlp)
        widest = max(max(layer.in_features, layer.out_features) for layer in self.layers)
        self.chunk_rows = max(64, CHUNK_ELEMENTS // widest)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        if rows.shape[0] <= self.chunk_rows:
            return super().forward(x)
        out = rows.new_empty(rows.shape[0], self.layers[-1].out_features)
        for start in range(0, rows.shape[0], self.chunk_rows):
            out[start:start + self.chunk_rows] = super().forward(rows[start:start + self.chunk_rows])
        return out.view(*x.shape[:-1], out.shape[-1])


class ChunkedAttention(MultiScaleAttention):
    """Hiera's attention over a batch of windows run on chunks of windows, each chunk's qkv output at most
    :data:`CHUNK_ELEMENTS` floats (a global block's single grid runs whole); the same layers (shared) and state-dict
    names as ``attn``."""

    def __init__(self, attn: MultiScaleAttention) -> None:
        if not isinstance(attn, MultiScaleAttention):
            raise TypeError(f"attn must be a Hiera MultiScaleAttention, got {type(attn).__name__}")
        _adopt(self, attn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        step = max(1, CHUNK_ELEMENTS // (3 * self.dim_out * x.shape[1] * x.shape[2]))
        if x.shape[0] <= step:
            return super().forward(x)
        out = None
        for start in range(0, x.shape[0], step):
            y = super().forward(x[start:start + step])
            if out is None:
                out = y.new_empty(x.shape[0], *y.shape[1:])
            out[start:start + step] = y
        return out


class ChunkedHieraBlock(MultiScaleBlock):
    """A Hiera block run on chunks of windows when its grid divides into them (see the module docstring), else as
    the original with a :class:`ChunkedAttention` and a :class:`ChunkedMLP`; the same layers (shared) and state-dict
    names as ``block``."""

    def __init__(self, block: MultiScaleBlock) -> None:
        if not isinstance(block, MultiScaleBlock):
            raise TypeError(f"block must be a Hiera MultiScaleBlock, got {type(block).__name__}")
        _adopt(self, block)
        self.mlp = block.mlp if isinstance(block.mlp, ChunkedMLP) else ChunkedMLP(block.mlp)
        self.attn = block.attn if isinstance(block.attn, ChunkedAttention) else ChunkedAttention(block.attn)
        self.drop_path = nn.Identity()  # inference only
        widest = 4 * self.dim_out  # the MLP's hidden layer (qkv is 3x)
        self.chunk_tokens = max(1, CHUNK_ELEMENTS // widest)

    def _windowed(self, x: torch.Tensor) -> bool:
        ws = self.window_size
        if ws <= 0 or x.shape[1] % ws or x.shape[2] % ws:
            return False  # global attention, or padded windows (the original pads after the norm)
        if self.q_stride is None:
            return self.dim == self.dim_out
        return self.dim != self.dim_out and all(ws % s == 0 for s in self.q_stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._windowed(x):
            return super().forward(x)
        b, h, w, _ = x.shape
        ws = self.window_size
        windows, _ = window_partition(x, ws)
        step = max(1, self.chunk_tokens // (ws * ws))
        out = None
        for start in range(0, windows.shape[0], step):
            y = self._windows_forward(windows[start:start + step])
            if out is None:
                out = y.new_empty(windows.shape[0], *y.shape[1:])
            out[start:start + step] = y
        stride = self.q_stride or (1, 1)
        hw = (h // stride[0], w // stride[1])
        return window_unpartition(out, ws // stride[0], hw, hw)

    def _windows_forward(self, windows: torch.Tensor) -> torch.Tensor:
        """The block on ``n x ws x ws x dim`` windows -> ``n x ws' x ws' x dim_out`` (``ws'`` pooled at a stage
        change): :meth:`MultiScaleBlock.forward` without the partition."""
        normed = self.norm1(windows)
        shortcut = windows if self.dim == self.dim_out else do_pool(self.proj(normed), self.pool)
        x = shortcut + self.attn(normed)
        return x + self.mlp(self.norm2(x))


class PointwiseConv(nn.Conv2d):
    """A 1x1 ``nn.Conv2d`` (stride 1, no padding, one group) computed as a matrix product over the channels of a
    channels-last input; output ``B x C x H x W`` in channels-last memory. The same (shared) weight and bias."""

    def __init__(self, conv: nn.Conv2d) -> None:
        if not isinstance(conv, nn.Conv2d) or not is_pointwise(conv):
            raise TypeError(f"conv must be a 1x1 nn.Conv2d with stride 1, no padding, one group, got {conv!r}")
        _adopt(self, conv)
        self.weight, self.bias = conv.weight, conv.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"PointwiseConv expects B x {self.in_channels} x H x W, got shape {tuple(x.shape)}")
        out = F.linear(x.permute(0, 2, 3, 1), self.weight.flatten(1), self.bias)
        return out.permute(0, 3, 1, 2)


def is_pointwise(conv: nn.Conv2d) -> bool:
    """Whether ``conv`` is a plain 1x1 convolution (a per-pixel linear map)."""
    return (tuple(conv.kernel_size) == (1, 1) and tuple(conv.stride) == (1, 1) and conv.groups == 1
            and tuple(conv.dilation) == (1, 1) and (conv.padding in ("valid", (0, 0), "same")))


class CachedPosEmbed:
    """Hiera's positional embedding for a grid (a bicubic resize of ``pos_embed`` plus the tiled window embedding:
    0.1 s at 256 x 256 on this CPU, every call), kept while the size and both parameters are unchanged."""

    def __init__(self, trunk: Hiera) -> None:
        self.trunk = trunk
        self.entry: tuple[tuple, torch.Tensor] | None = None  # (key, embedding), replaced as one (threads share it)

    def __call__(self, hw: tuple[int, int]) -> torch.Tensor:
        params = (self.trunk.pos_embed, self.trunk.pos_embed_window)
        key = (tuple(hw), torch.is_grad_enabled(), *((p.data_ptr(), p._version, p.dtype) for p in params))
        entry = self.entry
        if entry is None or entry[0] != key:
            entry = (key, Hiera._get_pos_embed(self.trunk, hw))
            self.entry = entry
        return entry[1]


def chunk_sam2_encoder(encoder: nn.Module) -> nn.Module:
    """Rearrange (in place) a SAM 2 image encoder *copy* for the CPU: its Hiera blocks as :class:`ChunkedHieraBlock`,
    its neck's 1x1 lateral convolutions as :class:`PointwiseConv`, its positional embedding cached
    (:class:`CachedPosEmbed`). Returns ``encoder``. Meant for the int8 copy of
    :func:`samforge.predict.quantize.int8_encoder`, which shares tensors but not modules with the user's model."""
    trunk = getattr(encoder, "trunk", None)
    if not isinstance(trunk, Hiera):
        raise TypeError(f"expected a SAM 2 image encoder (a Hiera trunk), got {type(encoder).__name__}")
    for i, block in enumerate(trunk.blocks):
        if not isinstance(block, ChunkedHieraBlock):
            trunk.blocks[i] = ChunkedHieraBlock(block)
    if not isinstance(trunk.__dict__.get("_get_pos_embed"), CachedPosEmbed):
        object.__setattr__(trunk, "_get_pos_embed", CachedPosEmbed(trunk))  # a plain attribute, not a submodule
    for lateral in getattr(encoder.neck, "convs", ()):
        conv = getattr(lateral, "conv", None)
        if isinstance(conv, nn.Conv2d) and not isinstance(conv, PointwiseConv) and is_pointwise(conv):
            lateral.conv = PointwiseConv(conv)
    return encoder
