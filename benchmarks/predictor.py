"""SamPredictor speed, ours vs the official segment_anything, side by side in one process.

    .venv/bin/python benchmarks/predictor.py [--model vit_b] [--repeats 3]

Both predictors hold the same random weights; timings interleave ours and official and report medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import make_pair  # noqa: E402  (the same oracle builder the parity tests use)
from segment_anything import SamPredictor as OfficialPredictor  # noqa: E402

from samforge import SamPredictor  # noqa: E402


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_b")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--predict-repeats", type=int, default=20)
    args = parser.parse_args()

    official, ours = make_pair(args.model, seed=0)
    image = np.random.default_rng(0).integers(0, 256, (768, 1024, 3), dtype=np.uint8)
    point = dict(point_coords=np.array([[500.0, 375.0]]), point_labels=np.array([1]))
    p_off, p_ours = OfficialPredictor(official), SamPredictor(ours)
    p_off.set_image(image)  # warm-up
    p_ours.set_image(image)

    rows = []
    set_off, set_ours = [], []
    for _ in range(args.repeats):
        set_off.append(timed(lambda: p_off.set_image(image), 1))
        set_ours.append(timed(lambda: p_ours.set_image(image), 1))
    rows.append(("set_image", statistics.median(set_off), statistics.median(set_ours)))
    rows.append(
        (
            "predict (1 point)",
            timed(lambda: p_off.predict(**point), args.predict_repeats),
            timed(lambda: p_ours.predict(**point), args.predict_repeats),
        )
    )
    print(f"{args.model} fp32, 1024x768 image, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'':20s} {'official':>10s} {'samforge':>10s} {'speed-up':>9s}")
    for name, t_off, t_ours in rows:
        print(f"{name:20s} {t_off * 1e3:8.1f}ms {t_ours * 1e3:8.1f}ms {t_off / t_ours:8.2f}x")


if __name__ == "__main__":
    main()
