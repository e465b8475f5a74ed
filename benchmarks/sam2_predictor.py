"""SAM2ImagePredictor speed, ours vs the official sam2, side by side in one process, fp32 and bf16 autocast.

    .venv/bin/python benchmarks/sam2_predictor.py [--model sam2.1_hiera_t] [--repeats 3]

Both predictors hold the same random weights; timings interleave ours and official and report medians.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from sam2.sam2_image_predictor import SAM2ImagePredictor as OfficialPredictor  # noqa: E402
from sam2_oracle import make_sam2_pair  # noqa: E402  (the same oracle builder the parity tests use)

from samforge import SAM2ImagePredictor  # noqa: E402


def timed_pair(fn_official, fn_ours, repeats: int) -> tuple[float, float]:
    """Median seconds of each, the calls alternating so that load from elsewhere hits both alike."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, out in zip((fn_official, fn_ours), times):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def precision_context(precision: str):
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sam2.1_hiera_t")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--predict-repeats", type=int, default=10)
    parser.add_argument("--precisions", default="fp32,bf16")
    args = parser.parse_args()

    official, ours = make_sam2_pair(args.model, seed=0)
    image = np.random.default_rng(0).integers(0, 256, (768, 1024, 3), dtype=np.uint8)
    point = dict(point_coords=np.array([[500.0, 375.0]]), point_labels=np.array([1]))
    p_off, p_ours = OfficialPredictor(official), SAM2ImagePredictor(ours)

    print(f"{args.model}, 1024x768 image, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'':24s} {'official':>10s} {'samforge':>10s} {'speed-up':>9s}  masks equal")
    for precision in args.precisions.split(","):
        with precision_context(precision):
            p_off.set_image(image)  # warm-up
            p_ours.set_image(image)
            set_times = timed_pair(lambda: p_off.set_image(image), lambda: p_ours.set_image(image), args.repeats)
            predict_times = timed_pair(
                lambda: p_off.predict(**point), lambda: p_ours.predict(**point), args.predict_repeats
            )
            same = np.array_equal(p_off.predict(**point)[0], p_ours.predict(**point)[0])
        rows = [(f"set_image {precision}", *set_times), (f"predict 1 point {precision}", *predict_times)]
        for name, t_off, t_ours in rows:
            print(f"{name:24s} {t_off * 1e3:8.1f}ms {t_ours * 1e3:8.1f}ms {t_off / t_ours:8.2f}x  {same}")


if __name__ == "__main__":
    main()
