"""Peak memory of SAM 2 video tracking against clip length: ours vs the official predictor, side by side.

Each (implementation, length) runs in its own process (peak RSS is per process): a 480p JPEG clip of moving
shapes, one click on frame 0, propagate to the end. Prints peak RSS (and peak CUDA memory on a GPU), the RSS
growth per frame over the second half of the clip, and seconds per frame.

    python benchmarks/video_memory.py --frames 100 1000 --impl ours official [--device cuda] [--image-size 512]

Ours reads frames lazily and, with ``release_old_memory`` (what ``samforge track`` uses), drops memories that
left the model's window; the official predictor loads every frame as a float32 1024x1024 tensor up front
(12.6 MB a frame) and keeps every frame's memory. Random weights: memory does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

H, W = 480, 854


def write_frames(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    have = len(list(folder.glob("*.jpg")))
    if have >= n:
        return
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:H, :W]
    base = (rng.random((H // 8, W // 8, 3)) * 120 + 60).astype(np.uint8)
    bg = np.asarray(Image.fromarray(base).resize((W, H), Image.Resampling.BICUBIC))
    for t in range(n):
        img = bg.copy()
        cx, cy = 200 + 150 * np.sin(t / 30), 240 + 100 * np.cos(t / 45)
        img[((xx - cx) / 70) ** 2 + ((yy - cy) / 45) ** 2 < 1] = (220, 60, 40)
        Image.fromarray(img).save(folder / f"{t:05d}.jpg", quality=90)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_one(impl: str, folder: str, frames: int, device: str, image_size: int | None) -> dict:
    import torch

    torch.manual_seed(0)
    overrides = [f"++model.image_size={image_size}"] if image_size else []
    if impl == "ours":
        from samforge import build_sam2_video_predictor

        pred = build_sam2_video_predictor("sam2.1_hiera_t", device=device, hydra_overrides_extra=overrides)
        extra = {"release_old_memory": True}
    else:
        from sam2.build_sam import build_sam2_video_predictor

        pred = build_sam2_video_predictor("configs/sam2.1/sam2.1_hiera_t.yaml", device=device,
                                          hydra_overrides_extra=overrides)
        extra = {}
    sub = Path(folder + f"_{frames}")
    if not sub.exists():  # the first `frames` frames, as links
        sub.mkdir()
        for t in range(frames):
            os.symlink(Path(folder) / f"{t:05d}.jpg", sub / f"{t:05d}.jpg")
    rss = {"start": rss_mb()}
    t0 = time.time()
    with torch.inference_mode():
        state = pred.init_state(str(sub), **extra)
        rss["after_init"] = rss_mb()
        pred.add_new_points_or_box(state, 0, 1, points=[[200, 340]], labels=[1])
        half = frames // 2
        t_half = None
        for f, _, _ in pred.propagate_in_video(state):
            if f == half:
                rss["half"] = rss_mb()
                t_half = time.time()
                if device.startswith("cuda"):
                    rss["cuda_half"] = torch.cuda.memory_allocated() / 2**20
    elapsed = time.time() - t0
    rss["end"] = rss_mb()
    out = {
        "impl": impl, "frames": frames, "device": device, "image_size": image_size or 1024,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_mb": rss,
        "growth_mb_per_frame": (rss["end"] - rss["half"]) / max(1, frames - 1 - half),
        "s_per_frame": (time.time() - t_half) / max(1, frames - 1 - half) if t_half else elapsed / frames,
        "total_s": elapsed,  # init_state (the official one loads every frame there) + click + propagation
    }
    if device.startswith("cuda"):
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["cuda_growth_mb_per_frame"] = (torch.cuda.memory_allocated() / 2**20 - rss["cuda_half"]) / max(
            1, frames - 1 - half)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--impl", nargs="+", choices=["ours", "official"], default=["ours", "official"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--image-size", type=int, default=None, help="model input size (default 1024, the model's)")
    ap.add_argument("--workdir", default="/tmp/samforge_video_memory")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        impl, frames = args.child.split(":")
        print("RESULT " + json.dumps(run_one(impl, args.workdir + "/frames", int(frames), args.device,
                                             args.image_size)))
        return
    write_frames(Path(args.workdir) / "frames", max(args.frames))
    results = []
    for frames in args.frames:
        for impl in args.impl:
            cmd = [sys.executable, __file__, "--child", f"{impl}:{frames}", "--device", args.device,
                   "--workdir", args.workdir] + (["--image-size", str(args.image_size)] if args.image_size else [])
            proc = subprocess.run(cmd, capture_output=True, text=True)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                print(f"{impl} {frames} frames failed (rc {proc.returncode}): {proc.stderr[-500:]}")
                continue
            r = json.loads(lines[-1][7:])
            results.append(r)
            cuda = ""
            if "peak_cuda_mb" in r:
                cuda = f", peak CUDA {r['peak_cuda_mb']:.0f} MB (growth {r['cuda_growth_mb_per_frame']:.2f} MB/frame)"
            print(f"{impl:8s} {frames:5d} frames @ {r['image_size']}: peak RSS {r['peak_rss_mb']:.0f} MB{cuda}, "
                  f"growth {r['growth_mb_per_frame']:.2f} MB/frame, {r['s_per_frame']:.3f} s/frame, total {r['total_s']:.1f} s",
                  flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
