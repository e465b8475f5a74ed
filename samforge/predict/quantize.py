"""int8 image encoders: a copy of an image encoder whose ``nn.Linear`` layers are dynamically quantised.

Each linear layer becomes an :class:`Int8Linear`: weights int8 per output channel in 7 bits ([-64, 63]),
activations quantised per tensor to 8 bits (uint8) at run time, by ``torch.ao``'s fbgemm / x86 kernels
(``quantized::linear_dynamic``); everything else (attention, norms, convolutions, positional terms) stays float32.

Why 7-bit weights and 8-bit activations: on AVX2 fbgemm multiplies uint8 activations by int8 weights with
``vpmaddubsw``, which sums pairs of products into int16 and saturates past 32767. ``torch.ao``'s own dynamic
``Linear`` avoids that by giving the activations 7 bits (``reduce_range=True``); the activations, one scale for a
whole tensor, are the coarser side, so here the weights (one scale per channel) give up the bit instead: 255 * 64 * 2
< 32768, no saturation, at the same speed. Measured (2026-12-04, AMD EPYC, AVX2 only, 2 threads, 4096x768 @
768x3072): relative output error 0.014 against 0.023 on Gaussian inputs, 0.044 against 0.087 with an outlier token.

Speed (same machine and date): int8 ``quantized::linear_dynamic`` 1.5-2x fp32's GEMM rate at vit_b's shapes, about
1x on SAM 2 Hiera's first stage (K = 96: memory bound). torchao 0.18's ``Int8DynamicActivationInt8WeightConfig``
ran at 3 GFLOP/s in eager mode (no eager CPU int8 GEMM, only ``torch.compile`` lowers it) and ``torch._int_mm`` at
1 GFLOP/s on this CPU, so ``torch.ao``'s kernels are used and torchao is not a dependency.

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

from samforge.models.sam2.hiera import Hiera
from samforge.predict.hiera_int8 import chunk_sam2_encoder

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


WEIGHT_QMAX = 63  # weights in [-64, 63]: uint8 x int8 pair sums stay inside int16 (see the module docstring)
WEIGHT_QMAXES = {7: WEIGHT_QMAX, 8: 127}  # weight bits -> largest level; 8-bit weights take 7-bit activations


class Int8Linear(nn.Module):
    """A dynamically quantised ``nn.Linear``: int8 weights per output channel (7 bits), uint8 activations per tensor
    (8 bits, scale and zero point from each input's range), float32 bias and output. Inference only.

    ``weight_bits=8``: the other split of the same 15 bits, 8-bit weights and 7-bit activations (``torch.ao``'s
    choice). Its output error is larger on Gaussian inputs, but the error that moves masks is the weights': a weight
    error is the same systematic change for every token, an activation's rounding is noise that differs token to
    token. SAM 2's Hiera takes it (see :func:`int8_encoder`).

    ``mean_correction``: add back the part of the weights' rounding error that every token of a call shares, the
    mean input times ``(W - Wq)^T`` (one matrix-vector product per call; SAM 2's chunked blocks call once per chunk,
    so per chunk of windows or tokens). Since the rounding error is the same for every token, its effect on the
    mean of the inputs is a systematic shift of every output, and that shift is what moved masks. It never adds
    error over a call: with ``R = W - Wq``, the sum over its N tokens of ``|(x_t - x̄) R^T|^2`` is that of
    ``|x_t R^T|^2`` minus ``N |x̄ R^T|^2``. Measured
    2026-12-04 (AMD EPYC, AVX2 only, 2 threads, benchmarks/cpu_speed.py's 24 masks on perturbed random weights, mean
    / min IoU against our fp32): vit_b 0.975 / 0.962 -> 0.986 / 0.978 (all blocks int8: 0.968 -> 0.977);
    sam2.1_hiera_t 0.960 -> 0.969, sam2.1_hiera_s 0.952 -> 0.953. Cost: none measurable (vit_b ``set_image``
    alternating in one process, 5 calls each, medians 8.62 s without, 8.52 s with)."""

    def __init__(self, linear: nn.Linear, weight_bits: int = 7, mean_correction: bool = False) -> None:
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
        if weight_bits not in WEIGHT_QMAXES:
            raise ValueError(f"weight_bits must be one of {sorted(WEIGHT_QMAXES)}, got {weight_bits!r}")
        if not isinstance(mean_correction, bool):
            raise TypeError(f"mean_correction must be a bool, got {mean_correction!r}")
        weight = linear.weight.detach().float()
        if weight.device.type != "cpu":
            raise ValueError(f"int8 linear layers run on the CPU only, the weight is on {weight.device}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight_bits = weight_bits
        qmax = WEIGHT_QMAXES[weight_bits]
        scale = (weight.abs().amax(dim=1) / qmax).clamp_min(torch.finfo(torch.float32).tiny).double()
        qweight = torch.quantize_per_channel(weight, scale, torch.zeros_like(scale, dtype=torch.long), 0, torch.qint8)
        bias = None if linear.bias is None else linear.bias.detach().float()
        self._packed = torch.ops.quantized.linear_prepack(qweight, bias)
        # the weights' rounding error, transposed (in x out), for the mean correction
        self._rounding = (weight - qweight.dequantize()).t().contiguous() if mean_correction else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Int8Linear expects inputs of last size {self.in_features}, got shape {tuple(x.shape)}")
        reduce_range = self.weight_bits == 8  # 8-bit weights: 7-bit activations (no int16 saturation either way)
        x32 = x.float()
        y = torch.ops.quantized.linear_dynamic(x32, self._packed, reduce_range=reduce_range)
        if self._rounding is not None:  # the part of x (W - Wq)^T every token shares: the mean input's
            y.add_(x32.reshape(-1, self.in_features).mean(0) @ self._rounding)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        activation_bits = 15 - self.weight_bits
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"int8 w{self.weight_bits}/a{activation_bits}")


def quantize_linears(module: nn.Module, *, keep_float: tuple[str, ...] = (), weight_bits: int = 7,
                     mean_correction: bool = True) -> nn.Module:
    """A copy of ``module`` with each ``nn.Linear`` replaced by an :class:`Int8Linear` (``weight_bits`` 7 or 8,
    ``mean_correction`` as there),
    sharing all other parameters and buffers with ``module``. ``keep_float``: qualified names of linear layers left in
    float32 (e.g. the ones quantisation hurts most). ``module`` must be on the CPU."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    tensors = [*module.parameters(), *module.buffers()]
    devices = {t.device.type for t in tensors}
    if devices - {"cpu"}:
        raise ValueError(f"int8 quantisation runs on the CPU only; the module's tensors are on {sorted(devices)} "
                         "(use precision='bf16' on CUDA)")
    linears = {name for name, sub in module.named_modules() if isinstance(sub, nn.Linear)}
    if not linears:
        raise ValueError(f"{type(module).__name__} has no nn.Linear layers to quantise")
    unknown = sorted(set(keep_float) - linears)
    if unknown:
        raise ValueError(f"keep_float names linear layers of {type(module).__name__}; these are not: {unknown}")
    if weight_bits not in WEIGHT_QMAXES:
        raise ValueError(f"weight_bits must be one of {sorted(WEIGHT_QMAXES)}, got {weight_bits!r}")
    shared = copy.deepcopy(module, memo={id(t): t for t in tensors})  # new modules, the same tensors
    shared.eval()
    with warnings.catch_warnings():  # torch.ao's deprecation notices: the kernels are the fastest here (see above)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_(tensor|channel).*")
        for name in sorted(linears - set(keep_float)):
            parent_name, _, child = name.rpartition(".")
            parent = shared.get_submodule(parent_name)
            setattr(parent, child, Int8Linear(getattr(parent, child), weight_bits=weight_bits,
                                              mean_correction=mean_correction))
    return shared


FLOAT_BLOCKS = 2
"""The first transformer blocks of an encoder keep float32 linear layers in :func:`int8_encoder`: an error made there
passes through every later block. Measured on vit_b with perturbed random weights (2026-12-04, mean mask IoU against
our fp32 over benchmarks/cpu_speed.py's 24 masks, one block's linears float at a time or one kind in every block):
all int8 0.968; the first block float 0.971, the first two 0.975 (their linears are 1/6 of the FLOPs), the first
three 0.978, the last three 0.970; every qkv float 0.970, every proj 0.969, every mlp.lin1 0.973, every mlp.lin2
0.972. In SAM 2's Hiera the first two blocks read the stride-4 grid (K = 96), where int8 measured no faster than
float32 anyway."""


SAM2_WEIGHT_BITS = 8
"""SAM 2's image encoder is quantised with 8-bit weights and 7-bit activations (``Int8Linear(weight_bits=8)``) and run
chunked (:mod:`samforge.predict.hiera_int8`). Measured 2026-12-04 (AMD EPYC, AVX2 only, 2 cores shared, load 6-10;
benchmarks/cpu_speed.py's 24 masks on perturbed random weights, mean IoU against our fp32): what moves Hiera's masks is
the weights' rounding, a change every token sees alike, not the activations', which differs token to token. With float
activations and only the weights rounded per channel, sam2.1_hiera_t gives 0.940 at 7 bits (as w7/a8 int8 does: 0.940),
0.969 at 8 bits, 0.988 at 9, 0.995 for bf16 weights; 1% Gaussian noise on the weights gives 0.969. w8/a7: hiera_t 0.960
(0.956-0.966 as chunking and threads change the rounding: the metric's own noise), hiera_s 0.952 (both 0.940 with
w7/a8); with the mean correction (:class:`Int8Linear`) 0.969 and 0.953. No single block kept float moves it by more than
that noise. Speed (``cpu_speed.py --repeats 2 --precisions int8``, two runs, load 8-10): hiera_t 1.48x / 1.54x the
official fp32 ``set_image``, hiera_s 1.53x / 1.54x (before: 1.03x / 1.02x at load 10); alternating in one process with
the previous int8 copy (w7/a8, unchunked): hiera_t 1.22x -> 1.51x, hiera_s 1.30x -> 1.44x (1 thread: 1.21x -> 1.55x)."""


def float_linears(encoder: nn.Module, blocks: int = FLOAT_BLOCKS) -> tuple[str, ...]:
    """Qualified names of the linear layers of ``encoder``'s first ``blocks`` transformer blocks (``blocks.i`` of
    SAM's ViT, ``trunk.blocks.i`` of SAM 2's image encoder; none for other modules)."""
    if not isinstance(encoder, nn.Module):
        raise TypeError(f"encoder must be a torch.nn.Module, got {type(encoder).__name__}")
    if not isinstance(blocks, int) or blocks < 0:
        raise ValueError(f"blocks must be an int >= 0, got {blocks!r}")
    prefixes = tuple(f"{root}.{i}." for root in ("blocks", "trunk.blocks") for i in range(blocks))
    return tuple(name for name, sub in encoder.named_modules()
                 if isinstance(sub, nn.Linear) and name.startswith(prefixes))


def int8_encoder(encoder: nn.Module) -> nn.Module:
    """The int8 copy of ``encoder`` (see the module docstring; the linear layers of its first :data:`FLOAT_BLOCKS`
    blocks stay float32), built on first use and rebuilt when the encoder's linear weights change. Thread-safe;
    shared by every predictor of the same model."""
    if not isinstance(encoder, nn.Module):
        raise TypeError(f"encoder must be a torch.nn.Module, got {type(encoder).__name__}")
    key = _linear_fingerprint(encoder)
    with _LOCK:
        cached = _CACHE.get(encoder)
        if cached is not None and cached[0] == key:
            return cached[1]
        if isinstance(getattr(encoder, "trunk", None), Hiera):  # SAM 2: see SAM2_WEIGHT_BITS and hiera_int8.py
            quantized = quantize_linears(encoder, keep_float=float_linears(encoder), weight_bits=SAM2_WEIGHT_BITS)
            chunk_sam2_encoder(quantized)
        else:
            quantized = quantize_linears(encoder, keep_float=float_linears(encoder))
        _CACHE[encoder] = (key, quantized)
        return quantized
