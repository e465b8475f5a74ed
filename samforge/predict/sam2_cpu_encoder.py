"""SAM 2's image encoder in float32 arranged for a CPU's memory: what ``precision="fp32-fast"`` runs there.

The same copy as the int8 path's (:func:`samforge.predict.hiera_int8.chunk_sam2_encoder`: window blocks run a chunk
of windows at a time, MLPs token chunk by token chunk, the neck's 1x1 lateral convolutions as matrix products on
the channels-last trunk output, the positional embedding cached) without quantising anything: the same arithmetic
as the model's own encoder in another order, so its outputs agree with the exact path's to float32 rounding
(relative 1e-6 on the FPN levels). The copy shares every parameter and buffer with the model (no memory doubled,
and weights trained or loaded in place are seen at once); it is rebuilt when a tensor is replaced.

Measured 2026-12-04, AMD EPYC (AVX2 only), 2 threads, load average 1-1.3, the parity tests' perturbed random weights,
1024x1024 input, the encoder alone, three alternating calls each (official / this copy): sam2.1_hiera_t 2.85 /
2.35 s, 3.61 / 2.41 s, 3.58 / 2.48 s (1.21-1.50x); sam2.1_hiera_s 3.53 / 3.14, 4.01 / 3.55, 4.48 / 3.57 s
(1.12-1.25x). The model's own encoder (the exact path) ran 2.77-4.23 s and 3.48-4.14 s in the same runs.
"""

from __future__ import annotations

import copy
import threading
import weakref

from torch import nn

from samforge.models.sam2.hiera import Hiera
from samforge.predict.hiera_int8 import chunk_sam2_encoder

_CACHE: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple[int, ...], nn.Module]]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def _tensor_ids(module: nn.Module) -> tuple[int, ...]:
    """The identity of every parameter and buffer: a copy sharing them is stale once one is replaced."""
    return tuple(id(t) for t in (*module.parameters(), *module.buffers()))


def fast_sam2_encoder(encoder: nn.Module) -> nn.Module:
    """The CPU float32 copy of SAM 2's image ``encoder`` (module docstring), in eval mode, built on first use and
    rebuilt when one of its tensors is replaced. Thread-safe; shared by every predictor of the same model. Inference
    only (no drop path)."""
    if not isinstance(getattr(encoder, "trunk", None), Hiera):
        raise TypeError(f"expected a SAM 2 image encoder (a Hiera trunk), got {type(encoder).__name__}")
    devices = {t.device.type for t in (*encoder.parameters(), *encoder.buffers())}
    if devices - {"cpu"}:
        raise ValueError(f"the chunked float32 encoder is for the CPU; the encoder's tensors are on {sorted(devices)}")
    key = _tensor_ids(encoder)
    with _LOCK:
        cached = _CACHE.get(encoder)
        if cached is not None and cached[0] == key:
            return cached[1]
        tensors = [*encoder.parameters(), *encoder.buffers()]
        fast = chunk_sam2_encoder(copy.deepcopy(encoder, memo={id(t): t for t in tensors})).eval()
        _CACHE[encoder] = (key, fast)
        return fast
