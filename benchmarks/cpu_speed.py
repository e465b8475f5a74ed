"""Image-encoder speed per precision on the machine that runs it (issue #25), every figure in one command.

    .venv/bin/python benchmarks/cpu_speed.py [--model vit_b | sam2.1_hiera_t | sam2.1_hiera_s | ...]
        [--device cpu|cuda] [--repeats 3] [--quick] [--bf16-anyway] [--precisions fp32,fp32-fast,bf16,int8]

Prints, for this machine: the CPU (model, torch's capability, AVX512-BF16, AMX), threads and load average; GEMM rates
of 4096x768 @ 768x3072 in fp32, bf16 and dynamic int8 (``samforge.predict.quantize.Int8Linear``); the encoder's FLOPs
(counted on the official fp32 call) and its floor (FLOPs over the best rate); then ``set_image`` seconds of the
official predictor in fp32 and under ``torch.autocast(bfloat16)``, and of ours in fp32 / fp32-fast / bf16 / int8,
with official fp32 / this and official bf16 / this, and each path's masks against our fp32 masks (mean and min IoU
over 8 point prompts x 3 masks). Every model holds the same perturbed random weights (the parity tests' builders),
so masks are not trivial. The calls of a repeat alternate between the paths (load from elsewhere hits all alike);
medians of ``--repeats`` (``--quick``: one call each, no warm-up). Our "bf16" row is what ``precision="bf16"`` runs
here: on a CPU without native bf16 that is the "fp32-fast" fallback; the official bf16 autocast row is emulated
there (10-100x slower) and skipped unless ``--bf16-anyway``. int8 is CPU only (skipped with ``--device cuda``);
its one-off quantisation time is printed apart. ``--precisions`` times only those of ours (fp32 is always run: it is
the masks' reference).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

OURS = ("fp32", "fp32-fast", "bf16", "int8")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_rates(device: torch.device, repeats: int) -> dict[str, float]:
    """GFLOP/s of 4096x768 @ 768x3072 in fp32, bf16 and (CPU) dynamic int8, best of ``repeats``."""
    from samforge.predict.quantize import quantize_linears

    flops = 2 * 4096 * 768 * 3072
    x = torch.randn(4096, 768, device=device)
    lin = nn.Linear(768, 3072).to(device)
    paths: dict[str, Callable[[], object]] = {"fp32": lambda: lin(x)}
    xb, lb = x.bfloat16(), nn.Linear(768, 3072).to(device).bfloat16()
    paths["bf16"] = lambda: lb(xb)
    if device.type == "cpu":
        q = quantize_linears(nn.Sequential(lin))
        paths["int8"] = lambda: q(x)
    rates = {}
    with torch.no_grad():
        for name, fn in paths.items():
            fn()
            best = float("inf")
            for _ in range(max(repeats, 1)):
                sync(device)
                start = time.perf_counter()
                fn()
                sync(device)
                best = min(best, time.perf_counter() - start)
            rates[name] = flops / best / 1e9
    return rates


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def build(model_name: str, device: torch.device):
    """(official model, our model, official predictor class, our predictor class), same perturbed weights."""
    if model_name.startswith("sam2"):
        from sam2.sam2_image_predictor import SAM2ImagePredictor as Official
        from sam2_oracle import make_sam2_pair

        from samforge import SAM2ImagePredictor

        official, ours = make_sam2_pair(model_name, seed=0)
        return official.to(device).eval(), ours.to(device).eval(), Official, SAM2ImagePredictor
    from conftest import make_pair
    from segment_anything import SamPredictor as Official

    from samforge import SamPredictor

    official, ours = make_pair(model_name, seed=0)
    return official.to(device).eval(), ours.to(device).eval(), Official, SamPredictor


def masks_of(predictor, prompts: list[np.ndarray]) -> list[np.ndarray]:
    out = []
    for point in prompts:
        masks, _, _ = predictor.predict(point_coords=point[None], point_labels=np.array([1]), multimask_output=True)
        out.extend(np.asarray(m) > 0 for m in masks)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vit_b", help="vit_b, vit_l, vit_h, vit_small, sam2.1_hiera_t, ...")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per path (median; default 3)")
    parser.add_argument("--quick", action="store_true", help="one call per path, no warm-up")
    parser.add_argument("--bf16-anyway", action="store_true",
                        help="also time the official bf16 autocast on a CPU without native bf16 (emulated, slow)")
    parser.add_argument("--image", default="768x1024", help="HxW of the random image (default 768x1024)")
    parser.add_argument("--precisions", default=",".join(OURS),
                        help=f"ours to time, comma-separated, from {','.join(OURS)} (default all; fp32 always runs)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be >= 1, got {args.repeats}")
    try:
        h, w = (int(v) for v in args.image.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--image must be HxW, e.g. 768x1024, got {args.image!r}") from None
    repeats = 1 if args.quick else args.repeats
    chosen = {"fp32", *(p.strip() for p in args.precisions.split(",") if p.strip())}
    if chosen - set(OURS):
        raise SystemExit(f"--precisions must be from {','.join(OURS)}, got {args.precisions!r}")
    device = torch.device(args.device)
    warnings.simplefilter("ignore", DeprecationWarning)

    from samforge.predict.precision import auto_precision, native_cpu_bf16
    from samforge.predict.quantize import int8_encoder

    native = native_cpu_bf16() if device.type == "cpu" else True
    print(f"{datetime.date.today()}  {cpu_name()}  capability {torch.backends.cpu.get_cpu_capability()}  "
          f"AVX512-BF16 {torch.cpu._is_avx512_bf16_supported()}  AMX {torch.cpu._is_amx_tile_supported()}  "
          f"{torch.get_num_threads()} threads  load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}  "
          f"torch {torch.__version__}  device {device}"
          f"{' ' + torch.cuda.get_device_name(device) if device.type == 'cuda' else ''}  auto -> "
          f"{auto_precision(device)}")
    rates = gemm_rates(device, repeats=3 if not args.quick else 1)
    print("GEMM 4096x768 @ 768x3072 GFLOP/s: " + ", ".join(f"{k} {v:.0f}" for k, v in rates.items()))

    official, ours, Official, Ours = build(args.model, device)
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    grid = [(x, y) for y in (0.3, 0.7) for x in (0.2, 0.4, 0.6, 0.8)]
    prompts = [np.array([x * w, y * h]) for x, y in grid]
    p_off = Official(official)
    p_ours = {name: Ours(ours, precision=name) for name in OURS
              if name in chosen and not (name == "int8" and device.type != "cpu")}

    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        p_off.set_image(image)  # also the official path's warm-up
    flops = counter.get_total_flops()
    best_rate = max(rates.values())
    print(f"{args.model} set_image FLOPs {flops / 1e12:.3f} T; floor at the best GEMM rate ({best_rate:.0f} "
          f"GFLOP/s): {flops / best_rate / 1e9:.1f} s")
    if "int8" in p_ours:
        encoder = ours.image_encoder
        start = time.perf_counter()
        int8_encoder(encoder)
        print(f"int8: quantising the encoder's linear layers (once per model): {time.perf_counter() - start:.2f} s")

    def autocast_bf16(fn):
        def call():
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                fn()
        return call

    paths: dict[str, Callable[[], None]] = {"official fp32": lambda: p_off.set_image(image)}
    if native or args.bf16_anyway:
        paths["official bf16 autocast"] = autocast_bf16(lambda: p_off.set_image(image))
    for name, predictor in p_ours.items():
        label = f"ours {name}" + (f" (runs {predictor.precision})" if predictor.precision != name else "")
        paths[label] = (lambda p: lambda: p.set_image(image))(predictor)
    if not args.quick:
        for label, fn in paths.items():
            if label != "official fp32":
                fn()  # warm-up
    times: dict[str, list[float]] = {label: [] for label in paths}
    for _ in range(repeats):
        for label, fn in paths.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[label].append(time.perf_counter() - start)

    reference = masks_of(p_ours["fp32"], prompts)
    masks = {"official fp32": masks_of(p_off, prompts)}
    for name, predictor in p_ours.items():
        masks[f"ours {name}"] = masks_of(predictor, prompts)
    if "official bf16 autocast" in paths:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            masks["official bf16 autocast"] = masks_of(p_off, prompts)
    seconds = {label: statistics.median(t) for label, t in times.items()}
    off32, off16 = seconds["official fp32"], seconds.get("official bf16 autocast")
    nontrivial = sum(0.02 < m.mean() < 0.98 for m in reference)
    print(f"set_image, {w}x{h} image, median of {repeats}; IoU against ours fp32 over {len(reference)} masks "
          f"({nontrivial} neither empty nor full)")
    print(f"| path | s | official fp32 / this | official bf16 / this | mean IoU | min IoU |")
    print("|---|---|---|---|---|---|")
    for label, s in seconds.items():
        key = label.split(" (runs")[0]
        ious = [mask_iou(a, b) for a, b in zip(masks[key], reference)]
        vs16 = f"{off16 / s:.2f}x" if off16 else "n/a"
        print(f"| {label} | {s:.2f} | {off32 / s:.2f}x | {vs16} | {np.mean(ious):.4f} | {min(ious):.4f} |")


if __name__ == "__main__":
    main()
