"""Low-rank adapters (LoRA, Hu et al. 2021) for SAM: ``W x + (alpha / r) B A x`` on chosen output slices of a
linear layer, with ``B`` zero-initialised so an adapted model starts exactly where its base was.

In the image encoder the query, key and value projections are one fused ``qkv`` linear; only its Q and V
thirds are adapted (as in the LoRA paper and SAM fine-tuning practice), K is untouched. Optionally the mask
decoder's attention layers get adapters on ``q_proj`` and ``v_proj``.

``LoRALinear`` subclasses ``nn.Linear`` and keeps its ``weight`` / ``bias`` names, so a base checkpoint loads
into an adapted model unchanged and the adapter's own tensors are the ``lora_`` keys. ``merge_lora`` folds the
adapters into the weights and puts plain ``nn.Linear`` layers back.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

LORA_KEY = "lora_"


@dataclass(frozen=True)
class LoraConfig:
    rank: int = 4
    alpha: float = 4.0
    decoder: bool = False  # also adapt the mask decoder's attention (q_proj, v_proj)

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0:
            raise ValueError(f"LoRA rank must be a positive integer, got {self.rank!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not self.alpha > 0:
            raise ValueError(f"LoRA alpha must be a positive number, got {self.alpha!r}")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict:
        return asdict(self)


class LoRALinear(nn.Linear):
    """``nn.Linear`` plus a rank-``r`` update on each output slice in ``slices`` (``(start, stop)`` pairs)."""

    def __init__(self, base: nn.Linear, slices: list[tuple[int, int]], rank: int, scaling: float) -> None:
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None,
                         device=base.weight.device, dtype=base.weight.dtype)
        self.weight = base.weight  # shares the base parameters: same names, same tensors
        self.bias = base.bias
        for start, stop in slices:
            if not 0 <= start < stop <= base.out_features:
                raise ValueError(f"slice ({start}, {stop}) outside the layer's {base.out_features} outputs")
        self.slices = [tuple(s) for s in slices]
        self.rank = rank
        self.scaling = scaling
        kw = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.ParameterList(nn.Parameter(torch.empty(rank, base.in_features, **kw)) for _ in slices)
        self.lora_B = nn.ParameterList(nn.Parameter(torch.zeros(stop - start, rank, **kw)) for start, stop in slices)
        for a in self.lora_A:
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # as nn.Linear's own weights (and the LoRA paper)

    def delta_weight(self) -> torch.Tensor:
        """The adapters as a dense ``out x in`` update (zero outside the adapted slices)."""
        delta = torch.zeros_like(self.weight)
        for (start, stop), a, b in zip(self.slices, self.lora_A, self.lora_B):
            delta[start:stop] = (b @ a) * self.scaling
        return delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        updates = []
        for (start, stop), a, b in zip(self.slices, self.lora_A, self.lora_B):
            updates.append((start, stop, F.linear(F.linear(x, a.to(x.dtype)), b.to(x.dtype)) * self.scaling))
        if len(updates) == 1 and updates[0][:2] == (0, self.out_features):
            return out + updates[0][2]
        pieces, pos = [], 0
        for start, stop, update in sorted(updates, key=lambda u: u[0]):
            if start > pos:
                pieces.append(out[..., pos:start])
            pieces.append(out[..., start:stop] + update)
            pos = stop
        if pos < self.out_features:
            pieces.append(out[..., pos:])
        return torch.cat(pieces, dim=-1)

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` holding ``W + delta``."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.weight + self.delta_weight())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, lora_rank={self.rank}, slices={self.slices}"


def _lora_targets(model: nn.Module, decoder: bool) -> list[tuple[nn.Module, str, list[tuple[int, int]]]]:
    """(parent module, attribute, output slices) of every layer LoRA adapts: the fused ``qkv`` of each image
    encoder block (SAM's ViT ``image_encoder.blocks``, SAM 2's Hiera ``image_encoder.trunk.blocks``, whose
    ``qkv`` maps ``dim -> 3 * dim_out``), and optionally the mask decoder's attention ``q_proj`` / ``v_proj``."""
    targets = []
    encoder = getattr(model, "image_encoder", None)
    trunk = getattr(encoder, "trunk", None)
    blocks = getattr(encoder, "blocks", None) if trunk is None else getattr(trunk, "blocks", None)
    if blocks is None:
        raise ValueError(f"expected a SAM model (image_encoder.blocks) or a SAM 2 model (image_encoder.trunk.blocks), "
                         f"got {type(model).__name__}")
    for block in blocks:
        qkv = block.attn.qkv
        if qkv.out_features % 3:
            raise ValueError(f"expected a fused qkv linear with 3 x dim outputs, got {qkv.out_features} outputs")
        dim_out = qkv.out_features // 3
        targets.append((block.attn, "qkv", [(0, dim_out), (2 * dim_out, 3 * dim_out)]))  # Q and V, not K
    if decoder:
        mask_decoder = getattr(model, "mask_decoder", None) or getattr(model, "sam_mask_decoder")
        for module in mask_decoder.transformer.modules():
            if all(hasattr(module, n) for n in ("q_proj", "k_proj", "v_proj", "out_proj")):
                for name in ("q_proj", "v_proj"):
                    targets.append((module, name, [(0, getattr(module, name).out_features)]))
    return targets


def add_lora(model: nn.Module, config: LoraConfig) -> int:
    """Put adapters into ``model`` in place (its weights untouched); returns how many parameters they add.
    Freezing the rest is the caller's choice (see ``samforge.train.finetune``)."""
    if not isinstance(config, LoraConfig):
        raise TypeError(f"config must be a LoraConfig, got {type(config).__name__}")
    if has_lora(model):
        raise ValueError("this model already has LoRA adapters")
    added = 0
    for parent, name, slices in _lora_targets(model, config.decoder):
        layer = LoRALinear(getattr(parent, name), slices, config.rank, config.scaling)
        setattr(parent, name, layer)
        added += sum(p.numel() for p in (*layer.lora_A, *layer.lora_B))
    return added


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' tensors only (names as in ``model.state_dict()``)."""
    out = {k: v.detach().clone() for k, v in model.state_dict().items() if LORA_KEY in k}
    if not out:
        raise ValueError("the model has no LoRA adapter")
    return out


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its layer's weight, in place; the model becomes a plain SAM again."""
    if not has_lora(model):
        raise ValueError("the model has no LoRA adapter to merge")
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                setattr(parent, name, child.merged())
    return model
