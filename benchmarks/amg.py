"""Automatic masks ("segment everything"), ours vs the official code, side by side: SamAutomaticMaskGenerator
vs segment_anything's for a SAM model type, SAM2AutomaticMaskGenerator vs sam2's for a SAM 2 one.

    .venv/bin/python benchmarks/amg.py [--model-type vit_b] [--size 1024x768] [--points-per-side 32]
                                       [--low-thresholds] [--repeats 1] [--device cpu] [--no-memory]
    .venv/bin/python benchmarks/amg.py --model-type sam2.1_hiera_t [--use-m2m] ...

Both generators hold the same random weights (``tests/conftest.make_pair`` / ``tests/sam2_oracle.make_sam2_pair``:
the official model perturbed off its initial values, copied into ours), and run on the same synthetic scene
(``make_scene``). Random weights predict low IoUs, so with the default thresholds (SAM 0.88 / 0.95, SAM 2 0.8 /
0.95) few or no masks survive: ``--low-thresholds``
sets ``pred_iou_thresh`` and ``stability_score_thresh`` to 0 so that the whole pipeline (filters, NMS, RLE)
has masks to work on. Reports:

* wall time of ``generate`` for each (median of ``--repeats``, the two alternating, after ``--warmup`` calls
  each with a 1-point grid, which embed the image once), and the ratio official / samforge (> 1: we are faster);
* the number of masks of each, and whether they match: every mask of one side has a mask of the other with
  IoU >= 0.99, both ways (pycocotools RLE IoU);
* peak memory of ``generate``, measured in a fresh subprocess per side (so one side's allocations, caches and
  freed-but-kept heap cannot colour the other's): the growth of the process's peak resident set size (RSS)
  during one ``generate`` call, i.e. ``VmHWM`` after the call minus ``VmRSS`` before it, the high-water mark
  having been reset just before the call (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0). Where that reset
  is not allowed, ``ru_maxrss`` after minus before is used instead, which is a lower bound (0 when building
  the model peaked higher than ``generate``). RSS counts everything the call holds (torch tensors, numpy
  masks, RLEs, allocator caches); tracemalloc misses torch's allocations, and the torch profiler misses
  numpy's. The children are started before the parent builds its models, and VmHWM is per address space, so
  the parent's size (which a vfork()ed child's ``ru_maxrss`` can inherit) does not leak in. On CUDA the
  children also report ``torch.cuda.max_memory_allocated`` during the call.

This is a benchmark, not a test: with vit_b on a CPU it takes minutes. For SAM 2 keep ``--min-mask-region-area``
at 0 on CPU: the official code then skips its small-region step (it needs a CUDA extension) and ours does it,
so the masks differ by design.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: idle OpenMP threads must not spin (2 shared cores)

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import make_pair  # noqa: E402  (the same oracle builder the parity tests use)
from pycocotools import mask as mask_utils  # noqa: E402
from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator as OfficialSAM2Generator  # noqa: E402
from sam2_oracle import make_sam2_pair  # noqa: E402
from segment_anything import SamAutomaticMaskGenerator as OfficialGenerator  # noqa: E402

from samforge import SAM2AutomaticMaskGenerator, SamAutomaticMaskGenerator  # noqa: E402
from samforge.data.synthetic import make_scene  # noqa: E402
from samforge.models.configs import SAM_CONFIGS  # noqa: E402
from samforge.models.sam2 import SAM2_CONFIGS  # noqa: E402

SIDES = ("official", "samforge")


# ------------------------------------------------------------------------------------------- set-up
def parse_size(text: str) -> tuple[int, int]:
    """``WxH`` -> (H, W)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size must be WxH, e.g. 1024x768, got {text!r}") from None
    if min(w, h) < 32:
        raise argparse.ArgumentTypeError(f"--size must be at least 32x32, got {text!r}")
    return h, w


def is_sam2(args: argparse.Namespace) -> bool:
    return args.model_type in SAM2_CONFIGS


def generator_classes(args: argparse.Namespace) -> tuple[type, type]:
    """(official generator class, ours) for the model type."""
    if is_sam2(args):
        return OfficialSAM2Generator, SAM2AutomaticMaskGenerator
    return OfficialGenerator, SamAutomaticMaskGenerator


def generator_kwargs(args: argparse.Namespace) -> dict:
    pred_iou_thresh = args.pred_iou_thresh if args.pred_iou_thresh is not None else (0.8 if is_sam2(args) else 0.88)
    kw = dict(points_per_side=args.points_per_side, points_per_batch=args.points_per_batch,
              pred_iou_thresh=pred_iou_thresh, stability_score_thresh=args.stability_score_thresh,
              box_nms_thresh=args.box_nms_thresh, crop_n_layers=args.crop_n_layers,
              min_mask_region_area=args.min_mask_region_area)
    if is_sam2(args):
        kw["use_m2m"] = args.use_m2m
    if args.low_thresholds:
        kw.update(pred_iou_thresh=0.0, stability_score_thresh=0.0)
    return kw


def build(args: argparse.Namespace, side: str | None = None):
    """(official generator, ours) on the device; ``side`` keeps only that one (the other is None)."""
    if is_sam2(args):
        official, ours = make_sam2_pair(args.model_type, seed=args.seed)
    else:
        official, ours = make_pair(args.model_type, seed=args.seed)
    if side == "official":
        ours = None
    elif side == "samforge":
        official = None
    gc.collect()
    device = torch.device(args.device)
    kw = generator_kwargs(args)
    official_cls, our_cls = generator_classes(args)
    gen_off = official_cls(official.to(device), **kw) if official is not None else None
    gen_ours = our_cls(ours.to(device), **kw) if ours is not None else None
    return gen_off, gen_ours


def the_image(args: argparse.Namespace) -> np.ndarray:
    return make_scene(args.image_seed, image_size=args.size).image


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------- memory
def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child(args: argparse.Namespace) -> None:
    """Run one side's ``generate`` once in this fresh process; print its peak memory as one JSON line."""
    gen_off, gen_ours = build(args, args.child)
    generator = gen_off if args.child == "official" else gen_ours
    image = the_image(args)
    gc.collect()
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        cuda_before = torch.cuda.memory_allocated()
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    rss_before = _status_kib("VmRSS")
    hwm_reset = _reset_peak_rss() and rss_before is not None
    start = time.perf_counter()
    masks = generator.generate(image)
    sync(args.device)
    seconds = time.perf_counter() - start
    result = {"side": args.child, "masks": len(masks), "seconds": seconds,
              "baseline_rss_mib": (rss_before or 0) / 1024}
    if hwm_reset:
        result.update(method="VmHWM - VmRSS (peak reset)",
                      peak_rss_growth_mib=(_status_kib("VmHWM") - rss_before) / 1024)
    else:
        maxrss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result.update(method="ru_maxrss delta (lower bound)", peak_rss_growth_mib=(maxrss_after - maxrss_before) / 1024)
    if cuda:
        result["cuda_peak_mib"] = (torch.cuda.max_memory_allocated() - cuda_before) / 2**20
    print("RESULT " + json.dumps(result), flush=True)


def measure_memory(argv: list[str], side: str) -> dict:
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), *argv, "--child", side],
                          capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"memory run of {side} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT "):])


# -------------------------------------------------------------------------------------------- match
def to_rles(records: list[dict]) -> list[dict]:
    return [mask_utils.encode(np.asfortranarray(r["segmentation"].astype(np.uint8))) for r in records]


def match(ours: list[dict], official: list[dict], min_iou: float = 0.99) -> tuple[int, int]:
    """(masks of ours with an official mask at IoU >= min_iou, official masks with one of ours)."""
    if not ours or not official:
        return 0, 0
    iou = np.asarray(mask_utils.iou(to_rles(ours), to_rles(official), [0] * len(official)))
    return int((iou.max(1) >= min_iou).sum()), int((iou.max(0) >= min_iou).sum())


# --------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-type", default="vit_b", choices=sorted(SAM_CONFIGS) + sorted(SAM2_CONFIGS))
    parser.add_argument("--size", type=parse_size, default=(768, 1024), metavar="WxH",
                        help="synthetic image size, width x height (default 1024x768)")
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--points-per-batch", type=int, default=64)
    parser.add_argument("--pred-iou-thresh", type=float, default=None,
                        help="default: the generator's own (0.88 SAM, 0.8 SAM 2)")
    parser.add_argument("--stability-score-thresh", type=float, default=0.95)
    parser.add_argument("--box-nms-thresh", type=float, default=0.7)
    parser.add_argument("--crop-n-layers", type=int, default=0)
    parser.add_argument("--min-mask-region-area", type=int, default=0)
    parser.add_argument("--use-m2m", action="store_true", help="SAM 2 only: use_m2m=True")
    parser.add_argument("--low-thresholds", action="store_true",
                        help="pred_iou_thresh = stability_score_thresh = 0 (random weights predict low IoUs)")
    parser.add_argument("--repeats", type=int, default=1, help="timed generate calls per side (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed 1-point generate calls per side first")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--image-seed", type=int, default=0, help="seed of the synthetic scene")
    parser.add_argument("--no-memory", action="store_true", help="skip the two memory subprocesses")
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeats < 1 or args.warmup < 0:
        parser.error(f"--repeats must be >= 1 and --warmup >= 0, got {args.repeats} and {args.warmup}")
    if args.use_m2m and not is_sam2(args):
        parser.error(f"--use-m2m is for SAM 2 model types, got --model-type {args.model_type}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    if args.child:
        return child(args)

    # memory first, in fresh processes, before this one grows
    argv = sys.argv[1:]
    memory = {} if args.no_memory else {side: measure_memory(argv, side) for side in SIDES}

    gen_off, gen_ours = build(args)
    image = the_image(args)
    kw = generator_kwargs(args)
    official_cls, our_cls = generator_classes(args)
    warm = [official_cls(gen_off.predictor.model, **{**kw, "points_per_side": 1}),
            our_cls(gen_ours.predictor.model, **{**kw, "points_per_side": 1})]
    for _ in range(args.warmup):
        for gen in warm:
            gen.generate(image)
            sync(args.device)
    times: dict[str, list[float]] = {s: [] for s in SIDES}
    results: dict[str, list] = {}
    for _ in range(args.repeats):
        for side, gen in zip(SIDES, (gen_off, gen_ours)):
            sync(args.device)
            start = time.perf_counter()
            results[side] = gen.generate(image)
            sync(args.device)
            times[side].append(time.perf_counter() - start)
    t_off, t_ours = (statistics.median(times[s]) for s in SIDES)
    n_off, n_ours = len(results["official"]), len(results["samforge"])
    ours_matched, off_matched = match(results["samforge"], results["official"])

    h, w = args.size
    print(f"{our_cls.__name__}: {args.model_type} random weights (seed {args.seed}, perturbed), "
          f"{w}x{h} synthetic scene, device {args.device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print("settings: " + ", ".join(f"{k}={v}" for k, v in kw.items())
          + f"; median of {args.repeats} (after {args.warmup} warm-up)")
    print(f"{'':22s} {'official':>12s} {'samforge':>12s} {'ratio':>8s}")
    print(f"{'generate wall time':22s} {t_off:11.3f}s {t_ours:11.3f}s {t_off / t_ours:7.2f}x"
          "  (official / samforge)")
    print(f"{'masks':22s} {n_off:12d} {n_ours:12d}")
    if memory:
        m_off, m_ours = memory["official"], memory["samforge"]
        g_off, g_ours = m_off["peak_rss_growth_mib"], m_ours["peak_rss_growth_mib"]
        ratio = f"{g_off / g_ours:7.2f}x" if g_ours > 0 else "      -"
        print(f"{'peak RSS growth':22s} {g_off:9.1f}MiB {g_ours:9.1f}MiB {ratio}  ({m_ours['method']}, "
              f"fresh process each; baselines {m_off['baseline_rss_mib']:.0f} / {m_ours['baseline_rss_mib']:.0f} MiB)")
        if "cuda_peak_mib" in m_off:
            c_off, c_ours = m_off["cuda_peak_mib"], m_ours["cuda_peak_mib"]
            print(f"{'CUDA peak allocated':22s} {c_off:9.1f}MiB {c_ours:9.1f}MiB "
                  f"{c_off / max(c_ours, 1e-9):7.2f}x")
        print(f"{'(memory-run time)':22s} {m_off['seconds']:11.3f}s {m_ours['seconds']:11.3f}s  "
              f"(cold, one call; masks {m_off['masks']} / {m_ours['masks']})")
    same = n_off == n_ours and ours_matched == n_ours and off_matched == n_off
    print(f"match (IoU >= 0.99 both ways): {'yes' if same else 'NO'}: {ours_matched}/{n_ours} of ours, "
          f"{off_matched}/{n_off} of official")
    if n_off == 0 and n_ours == 0:
        print("no masks on either side: with random weights use --low-thresholds")


if __name__ == "__main__":
    main()
