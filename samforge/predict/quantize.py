"""int8 image encoders: a copy of an image encoder whose ``nn.Linear`` layers are dynamically quantised.

Weights are int8 per output channel, activations are quantised per tensor at run time (``torch.ao``'s dynamic
quantisation, fbgemm / x86 kernels); everything else (attention, norms, convolutions, positional terms) stays
float32. Measured on an AMD EPYC with AVX2 only, 2 threads (2026-12-03): ``torch.ao`` dynamic int8 ``nn.Linear``
125 GFLOP/s against fp32's 86, torchao 0.18's ``Int8DynamicActivationInt8WeightConfig`` 3 GFLOP/s in eager mode
(it has no eager CPU int8 GEMM, only ``torch.compile`` lowers it), so ``torch.ao`` is used and torchao is not a
dependency.

The copy never changes the user's model: it shares every float tensor with the original (no memory doubled, later
changes to norms and positional terms are seen) and holds its own int8 linear weights, rebuilt when the original's
linear weights change (in place or replaced). One copy is kept per encoder (weakly: it goes with the model), so a
predictor and an automatic mask generator on the same model share it; the exact fp32 path keeps running the original
encoder, bit for bit the official one.
"""

from __future__ import annotations

import copy
import threading
import warnings
import weakref

import torch
from torch import nn

_CACHE: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, nn.Module]]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def _linear_fingerprint(module: nn.Module) -> tuple:
    """Identity and version of every linear weight and bias: changes when one is trained, loaded or replaced."""
    out = []
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            for t in (sub.weight, sub.bias):
                if t is not None:
                    out.append((id(t), t.data_ptr(), t._version, tuple(t.shape)))
    return tuple(out)


def quantize_linears(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with each ``nn.Linear`` dynamically quantised to int8 (per-channel weights, per-tensor
    activations), sharing all other parameters and buffers with ``module``. ``module`` must be on the CPU."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    tensors = [*module.parameters(), *module.buffers()]
    devices = {t.device.type for t in tensors}
    if devices - {"cpu"}:
        raise ValueError(f"int8 quantisation runs on the CPU only; the module's tensors are on {sorted(devices)} "
                         "(use precision='bf16' on CUDA)")
    if not any(isinstance(sub, nn.Linear) for sub in module.modules()):
        raise ValueError(f"{type(module).__name__} has no nn.Linear layers to quantise")
    shared = copy.deepcopy(module, memo={id(t): t for t in tensors})  # new modules, the same tensors
    shared.eval()
    with warnings.catch_warnings():  # torch.ao's deprecation notices: the kernels are the fastest here (see above)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_(tensor|channel).*")
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        return quantize_dynamic(shared, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)


def int8_encoder(encoder: nn.Module) -> nn.Module:
    """The int8 copy of ``encoder`` (see the module docstring), built on first use and rebuilt when the encoder's
    linear weights change. Thread-safe; shared by every predictor of the same model."""
    if not isinstance(encoder, nn.Module):
        raise TypeError(f"encoder must be a torch.nn.Module, got {type(encoder).__name__}")
    key = _linear_fingerprint(encoder)
    with _LOCK:
        cached = _CACHE.get(encoder)
        if cached is not None and cached[0] == key:
            return cached[1]
        quantized = quantize_linears(encoder)
        _CACHE[encoder] = (key, quantized)
        return quantized
