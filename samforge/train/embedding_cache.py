"""Image embeddings kept on disk while the image encoder is frozen (decoder-only fine-tuning), so each epoch
after the first costs only the decoder.

One ``.safetensors`` file per image under ``<dir>/<model key>/``, named by the SHA-1 of the preprocessed image
tensor (what the encoder sees). The model key is a fingerprint of the encoder's weights, input size and
precision: another model, other weights or another image never hit an old entry. Files are written atomically
and read memory-mapped.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from samforge.train.adapter_file import weights_fingerprint
from samforge.utils.atomic import atomic_path


def image_key(image: torch.Tensor) -> str:
    """SHA-1 of one preprocessed image (``3 x S x S``), its shape and dtype."""
    data = image.detach().to("cpu", torch.float32).contiguous()
    digest = hashlib.sha1(f"{tuple(data.shape)}".encode())
    digest.update(data.numpy().tobytes())
    return digest.hexdigest()


class EmbeddingCache:
    """``cache(images) -> embeddings``: the frozen ``encoder``'s output for a batch ``B x 3 x S x S``, from disk
    where present, else computed (without gradients) and stored. ``hits`` / ``misses`` count images."""

    def __init__(self, directory: str | Path, encoder: nn.Module, precision: str = "fp32") -> None:
        if any(p.requires_grad for p in encoder.parameters()):
            raise ValueError("the embedding cache needs a frozen encoder (requires_grad=False on all its weights)")
        self.encoder = encoder
        key = weights_fingerprint(encoder)[:16]
        size = getattr(encoder, "img_size", "na")
        self.directory = Path(directory) / f"{type(encoder).__name__}-{size}-{precision}-{key}"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.hits = self.misses = 0

    def path_for(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.safetensors"

    def _read(self, path: Path) -> torch.Tensor | None:
        if not path.is_file():
            return None
        try:
            return load_file(str(path))["embedding"]
        except (SafetensorError, OSError, KeyError, ValueError):
            return None  # a damaged entry is recomputed and rewritten

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4:
            raise ValueError(f"expected images B x 3 x S x S, got shape {tuple(images.shape)}")
        keys = [image_key(im) for im in images]
        found = [self._read(self.path_for(k)) for k in keys]
        missing = [i for i, f in enumerate(found) if f is None]
        if missing:
            was_training = self.encoder.training
            self.encoder.eval()
            computed = self.encoder(images[missing])
            self.encoder.train(was_training)
            for i, emb in zip(missing, computed):
                path = self.path_for(keys[i])
                path.parent.mkdir(exist_ok=True)
                with atomic_path(path) as tmp:
                    save_file({"embedding": emb.detach().float().cpu().contiguous()}, str(tmp))
                found[i] = emb.detach()
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        return torch.stack([f.to(images.device, torch.float32) for f in found])
