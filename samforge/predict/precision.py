"""Which precision runs where: ``precision="auto"`` and the bf16 fallback on CPUs without native bf16.

``auto`` (see :func:`auto_precision`) picks from the device and the CPU's capabilities:

====================================================  ==========  ===========================================
device / CPU                                          picks       why (measured, see benchmarks/README.md)
====================================================  ==========  ===========================================
CUDA                                                  bf16        tensor cores
x86 CPU with AVX512-BF16 or AMX                       bf16        native bf16 GEMM (2.5x fp32's rate)
x86 CPU with AVX-512 but no BF16                      int8        int8 GEMM 2.6x fp32's (issue #25's EPYC);
                                                                  SAM 2 models: fp32 (int8 ~1.1x on Hiera)
x86 CPU with AVX2 only                                int8        vit_b int8 1.78-3.07x the official fp32
                                                                  quiet, 1.72-2.09x shared; fp32-fast 1.47-
                                                                  2.59x (2026-12-04); int8 masks at mean IoU
                                                                  0.986 with fp32's. SAM 2 models: fp32-fast
                                                                  (1.17-1.22x, the chunked copy; int8 1.29-1.55x
                                                                  on Hiera tiny/small, mean IoU 0.953-0.969)
any other CPU (ARM, ...)                              fp32        exact; nothing faster is measured there
====================================================  ==========  ===========================================

``precision="bf16"`` on a CPU without native bf16 is emulated (10-100x slower than fp32): it warns once and runs
"fp32-fast" instead, which agrees with the exact path at least as well as bf16 would (float rounding).
"""

from __future__ import annotations

import platform
import warnings

import torch

X86_MACHINES = ("x86_64", "amd64", "i386", "i686", "x86")
_WARNED: set[str] = set()


def native_cpu_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX512-BF16 or AMX tiles)."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def x86_vector_level() -> str | None:
    """The x86 vector level torch dispatches to, "AVX512" or "AVX2"; None on other CPUs and older x86 ones."""
    capability = torch.backends.cpu.get_cpu_capability().upper()
    if platform.machine().lower() not in X86_MACHINES:
        return None
    return next((level for level in ("AVX512", "AVX2") if capability.startswith(level)), None)


def auto_precision(device: torch.device | str, *, int8: bool = True) -> str:
    """The precision ``"auto"`` picks on ``device`` (see the module docstring's table); ``int8=False`` for models
    whose int8 masks agree with the exact path's less than ``auto`` accepts (mean IoU 0.97; SAM 2's Hiera: 0.953-0.969
    at 1.3-1.5x the official fp32, see ``samforge.predict.quantize.SAM2_WEIGHT_BITS``): ``precision="int8"`` still runs
    it when asked."""
    device = _as_device(device)
    if device.type == "cuda":
        return "bf16"
    if device.type != "cpu":
        return "fp32"
    if native_cpu_bf16():
        return "bf16"
    level = x86_vector_level()
    if level == "AVX512":
        return "int8" if int8 else "fp32"
    if level == "AVX2":
        return "int8" if int8 else "fp32-fast"
    return "fp32"


def resolve_precision(precision: str, device: torch.device | str, *, auto_int8: bool = True) -> str:
    """The precision a predictor runs on ``device`` for a requested (already checked) ``precision``: ``"auto"``
    resolved, ``"bf16"`` on a CPU without native bf16 replaced by ``"fp32-fast"`` (warning once), ``"int8"`` off
    the CPU refused. ``auto_int8``: whether "auto" may pick "int8" (see :func:`auto_precision`)."""
    device = _as_device(device)
    if precision == "auto":
        return auto_precision(device, int8=auto_int8)
    if precision == "bf16" and device.type == "cpu" and not native_cpu_bf16():
        if "bf16" not in _WARNED:
            _WARNED.add("bf16")
            warnings.warn(
                f"precision='bf16': this CPU ({torch.backends.cpu.get_cpu_capability()}) has no native bf16 "
                "(AVX512-BF16 or AMX), where bf16 is emulated and 10-100x slower than fp32; running 'fp32-fast' "
                "instead (it agrees with the exact path at least as well). precision='auto' picks the fastest measured "
                "path for this CPU (int8 for SAM on x86 CPUs without native bf16).",
                RuntimeWarning,
                stacklevel=4,
            )
        return "fp32-fast"
    if precision == "int8" and device.type != "cpu":
        raise ValueError(f"precision='int8' runs on the CPU only, the model is on {device}; use 'bf16' or 'auto' there")
    return precision


def _as_device(device: torch.device | str) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda:0', got {device!r}") from e
