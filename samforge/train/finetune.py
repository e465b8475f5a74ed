"""What a fine-tuning mode trains: ``full`` (everything, optionally with layer-wise learning-rate decay),
``decoder`` (image and prompt encoders frozen: image embeddings can then be cached) or ``lora`` (low-rank
adapters on the image encoder's Q and V projections; the mask decoder trainable or not).

For SAM 2 the "decoder" side is the mask decoder plus the memory (memory attention, memory encoder, object
pointer heads and the small learned embeddings), unless ``freeze_memory``: the tracking parts a clip trains."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from samforge.models.checkpointing import set_checkpoint_blocks
from samforge.models.lora import LoraConfig, add_lora
from samforge.train.config import FinetuneConfig

FINETUNE_MODES = ("full", "decoder", "lora")


@dataclass
class FinetunePlan:
    mode: str
    trainable: int  # parameters the optimizer updates
    total: int  # all parameters of the (possibly adapted) model
    lora: LoraConfig | None  # the adapters' configuration (lora mode)
    lr_scales: dict[int, float] | None  # id(parameter) -> learning-rate multiplier (layer-wise decay)
    trained_prefixes: tuple[str, ...]  # base weights trained along with the adapters (lora mode)
    checkpointed_blocks: int = 0  # image encoder blocks under activation checkpointing

    def describe(self) -> str:
        share = 100.0 * self.trainable / max(1, self.total)
        extra = f", LoRA rank {self.lora.rank} alpha {self.lora.alpha}" if self.lora else ""
        if self.checkpointed_blocks:
            extra += f", activation checkpointing on {self.checkpointed_blocks} encoder blocks"
        return f"fine-tuning mode {self.mode}: {self.trainable:,} of {self.total:,} parameters trainable ({share:.2f}%){extra}"


def apply_finetune(model: nn.Module, cfg: FinetuneConfig) -> FinetunePlan:
    """Prepare ``model`` (a SAM or SAM 2 holding its base weights) for ``cfg.mode``, in place: add adapters, set
    ``requires_grad``. Call before building the optimizer and before loading a resumed run's weights."""
    if cfg.mode not in FINETUNE_MODES:
        raise ValueError(f"finetune.mode must be one of {FINETUNE_MODES}, got {cfg.mode!r}")
    lora, lr_scales, trained_prefixes = None, None, ()
    sam2 = hasattr(model, "sam_mask_decoder")
    if sam2:  # everything but the two encoders (and the memory, when frozen) is the "decoder" side
        frozen = ("image_encoder.", "sam_prompt_encoder.")
        if cfg.freeze_memory:
            frozen += ("memory_attention.", "memory_encoder.", "maskmem_tpos_enc")
        decoder_side = tuple(sorted({n.split(".")[0] + ("." if "." in n else "") for n, _ in model.named_parameters()
                                     if not n.startswith(frozen)}))
    else:
        decoder_side = ("mask_decoder.",)
    if cfg.mode == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        if cfg.layer_decay != 1.0:
            lr_scales = layer_decay_scales(model, cfg.layer_decay)
    elif cfg.mode == "decoder":
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(decoder_side))
    else:
        lora = LoraConfig(rank=cfg.rank, alpha=cfg.alpha, decoder=cfg.lora_decoder)
        add_lora(model, lora)
        trained_prefixes = decoder_side if cfg.train_decoder else ()
        for name, p in model.named_parameters():
            p.requires_grad_("lora_" in name or any(name.startswith(t) for t in trained_prefixes))
    checkpointed = apply_checkpointing(model, cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return FinetunePlan(cfg.mode, trainable, total, lora, lr_scales, trained_prefixes, checkpointed)


def encoder_blocks_owner(model: nn.Module) -> nn.Module:
    """The module holding the image encoder's blocks: SAM's ``ImageEncoderViT``, SAM 2's Hiera trunk."""
    encoder = model.image_encoder
    return getattr(encoder, "trunk", encoder)


def apply_checkpointing(model: nn.Module, cfg: FinetuneConfig) -> int:
    """Set activation checkpointing of ``model``'s image encoder blocks as ``cfg.checkpoint_blocks`` says (all |
    N | none | auto: all for modes full and lora at inputs of 1024 px or more); returns how many blocks."""
    spec = str(cfg.checkpoint_blocks)
    owner = encoder_blocks_owner(model)
    if spec == "auto":
        size = getattr(model, "image_size", None) or model.image_encoder.img_size
        spec = "all" if cfg.mode in ("full", "lora") and size >= 1024 else "none"
    if spec == "all":
        count = len(owner.blocks)
    elif spec == "none":
        count = 0
    elif spec.isdigit():
        count = int(spec)
    else:
        raise ValueError(f"finetune.checkpoint_blocks must be all, none, auto or a number of blocks N >= 0, "
                         f"got {cfg.checkpoint_blocks!r}")
    return set_checkpoint_blocks(owner, count)


def layer_decay_scales(model: nn.Module, decay: float) -> dict[int, float]:
    """Layer-wise learning-rate decay (BEiT/MAE fine-tuning): encoder block ``i`` of ``L`` gets
    ``decay ** (L - i)``, the patch embedding and position embedding ``decay ** (L + 1)``; the neck, prompt
    encoder and mask decoder keep the full rate."""
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"finetune.layer_decay must be in (0, 1], got {decay}")
    trunk = getattr(model.image_encoder, "trunk", None)  # SAM 2's Hiera
    prefix = "image_encoder.trunk." if trunk is not None else "image_encoder."
    depth = len((trunk or model.image_encoder).blocks)
    scales = {}
    for name, p in model.named_parameters():
        if name.startswith(prefix + "blocks."):
            layer = int(name[len(prefix):].split(".")[1]) + 1
        elif name.startswith((prefix + "patch_embed", prefix + "pos_embed")):
            layer = 0
        else:
            layer = depth + 1
        scales[id(p)] = decay ** (depth + 1 - layer)
    return scales
