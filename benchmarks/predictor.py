"""SamPredictor speed, ours vs the official segment_anything, side by side in one process, per precision.

    .venv/bin/python benchmarks/predictor.py [--models vit_b,vit_h] [--device cpu|cuda]
        [--precisions fp32,fp32-fast,bf16,tf32] [--repeats 3] [--profile]
        [--boxes 64] [--decode-repeats 5] [--decode-only]

Both predictors hold the same random (perturbed) weights; the calls alternate (official, ours) and the medians are
reported. Precisions, ours / the official's setting for the same row:

- fp32: ``precision="fp32"`` (exact, bit-for-bit the official) / plain fp32
- fp32-fast: ``precision="fp32-fast"`` (fused rel-pos attention, fewer copies) / plain fp32
- bf16: ``precision="bf16"`` (encoder in bf16 end to end) / ``torch.autocast(device, torch.bfloat16)`` around
  set_image and predict (the official recipe)
- tf32: ``precision="fp32-fast"`` / plain fp32, both with TF32 matmuls and convolutions (CUDA only)

Per row: set_image seconds and images/s, one-point predict ms, peak memory of set_image (CUDA:
``torch.cuda.max_memory_allocated``; CPU: peak resident-set growth during the call, sampled from /proc every 2 ms,
``ru_maxrss`` growth where /proc is missing), speed-up official/ours, memory ratio ours/official, and the masks'
IoU against the official fp32 masks. ``--profile`` prints torch.profiler's top-10 ops of our set_image per
precision (exact "fp32" is the "before", the fast precisions the "after").

Prompt decoding (#10), per model, after the set_image rows (alone with ``--decode-only``): per-prompt latency of
``predict`` with one point (multimask) and of ``predict_torch`` with ``--boxes`` boxes (total / boxes), fp32, every
side on the same embedding (the official one, which ours in fp32 reproduces bit for bit), calls alternating, medians
of ``--decode-repeats``. Rows: samforge "module" (the decoder module's forward + ``Sam.postprocess_masks``, i.e.
samforge before the decoding work), samforge fp32 (decoder mode "exact", the default) and samforge fp32-fast
(decoder mode "folded"); columns: speed-up official / ours, max abs difference of the low-res logits and IoU
predictions from the official, and the number of binary-mask pixels that differ. ``--profile`` adds torch.profiler
tables of the official and our decoding.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

PRECISIONS = ("fp32", "fp32-fast", "bf16", "tf32")
OURS_PRECISION = {"fp32": "fp32", "fp32-fast": "fp32-fast", "bf16": "bf16", "tf32": "fp32-fast"}
OFFICIAL_SETTING = {"fp32": "fp32", "fp32-fast": "fp32", "bf16": "bf16", "tf32": "tf32"}  # rows sharing a setting


# --- helpers shared with sam2_predictor.py ----------------------------------------------------------------------


def parse_list(text: str, allowed: tuple[str, ...] | None, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise SystemExit(f"--{what} needs at least one value")
    bad = [t for t in items if allowed is not None and t not in allowed]
    if bad:
        raise SystemExit(f"--{what}: unknown {bad}; choose from {list(allowed)}")
    return items


def check_device(device: str, precisions: list[str]) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    if "tf32" in precisions and device != "cuda":
        raise SystemExit("tf32 is a CUDA setting: use --device cuda or leave it out of --precisions")
    return torch.device(device)


@contextlib.contextmanager
def setting(name: str, device: torch.device, autocast: bool):
    """The global setting of a benchmark row: TF32 for "tf32", bf16 autocast for the official "bf16"."""
    if name == "tf32":
        old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
    elif name == "bf16" and autocast:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def run_measured(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(seconds, peak memory in MiB) of one call: CUDA peak allocated, or CPU peak RSS growth."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        fn()
        sync(device)
        seconds = time.perf_counter() - start
        return seconds, (torch.cuda.max_memory_allocated(device) - base) / 2**20
    base = _rss_bytes()
    if base is None:  # no /proc: the process's peak RSS growth (monotonic, so only the first big call shows)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
        return seconds, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            rss = _rss_bytes() or 0
            peak[0] = max(peak[0], rss)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    peak[0] = max(peak[0], _rss_bytes() or 0)
    return seconds, (peak[0] - base) / 2**20


def median_pair(fn_a, fn_b, repeats: int, device: torch.device) -> tuple[tuple[float, float], tuple[float, float]]:
    """Median (seconds, peak MiB) of each of two calls, alternating them so load from elsewhere hits both alike.
    ``fn_a`` may be None (then its result is None)."""
    runs: tuple[list, list] = ([], [])
    for _ in range(repeats):
        for fn, out in zip((fn_a, fn_b), runs):
            if fn is not None:
                out.append(run_measured(fn, device))
    return tuple(
        (statistics.median(t for t, _ in r), max(m for _, m in r)) if r else None for r in runs
    )  # type: ignore[return-value]


def median_time(fn, repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest IoU over the masks of two predictions (C x H x W, bool or 0/1 floats)."""
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    ious = []
    for x, y in zip(a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:])):
        union = np.logical_or(x, y).sum()
        ious.append(1.0 if union == 0 else np.logical_and(x, y).sum() / union)
    return float(min(ious))


def profile_table(fn: Callable[[], object], device: torch.device, rows: int = 10) -> str:
    activities = [torch.profiler.ProfilerActivity.CPU]
    sort = "self_cpu_time_total"
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
        sort = "self_cuda_time_total"
    with torch.profiler.profile(activities=activities) as prof:
        fn()
        sync(device)
    return prof.key_averages().table(sort_by=sort, row_limit=rows)


def print_header(title: str) -> None:
    print(title)
    print(
        f"{'':26s} {'official':>10s} {'samforge':>10s} {'speed-up':>8s} {'vs off.fp32':>11s} {'img/s':>7s} "
        f"{'peak MiB off/ours':>18s} {'mem ratio':>9s} {'min IoU':>8s}"
    )


def print_row(name, t_off, t_ours, t_off_fp32, mem_off, mem_ours, iou, unit="s") -> None:
    scale = 1.0 if unit == "s" else 1e3
    off = f"{t_off * scale:9.3f}{unit}" if t_off is not None else f"{'-':>10s}"
    up = f"{t_off / t_ours:7.2f}x" if t_off is not None else f"{'-':>8s}"
    vs = f"{t_off_fp32 / t_ours:10.2f}x" if t_off_fp32 is not None else f"{'-':>11s}"
    ips = f"{1 / t_ours:7.2f}" if unit == "s" else f"{'':7s}"
    mem = f"{mem_off:8.0f}/{mem_ours:<8.0f}" if mem_off is not None and mem_ours is not None else f"{'':18s}"
    ratio = f"{mem_ours / mem_off:8.2f}x" if mem_off and mem_off >= 1 and mem_ours is not None else f"{'':9s}"
    print(f"{name:26s} {off} {t_ours * scale:9.3f}{unit} {up} {vs} {ips} {mem:>18s} {ratio} {iou}")


# --- SAM v1 -------------------------------------------------------------------------------------------------------


def bench_model(model_name: str, args, device: torch.device, precisions: list[str]) -> None:
    from conftest import make_pair  # the same oracle builder the parity tests use

    from samforge import SamPredictor

    official, ours = make_pair(model_name, seed=0)
    official, ours = official.to(device), ours.to(device)
    h, w = args.image_hw
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    point = dict(point_coords=np.array([[w * 0.5, h * 0.5]]), point_labels=np.array([1]))
    p_off = None
    if not args.no_official:
        from segment_anything import SamPredictor as OfficialPredictor

        p_off = OfficialPredictor(official)

    print_header(
        f"\n{model_name}, {w}x{h} image, {device}, torch {torch.__version__}, {torch.get_num_threads()} threads"
        f"{', ' + torch.cuda.get_device_name(device) if device.type == 'cuda' else ''}, ours' fast attention: "
        f"{args.attention}"
    )
    official_done: dict[str, tuple] = {}  # official setting -> (set_image, predict, masks)
    reference_masks = None
    for precision in precisions:
        p_ours = SamPredictor(ours, precision=OURS_PRECISION[precision])
        p_ours.fast_attention_mode = args.attention
        p_ours.fp32_cpu_attention_mode = args.attention
        off_setting = OFFICIAL_SETTING[precision]
        run_official = p_off is not None and off_setting not in official_done
        with setting(precision, device, autocast=False):
            ours_set = lambda: p_ours.set_image(image)  # noqa: E731
            ours_set()  # warm-up
        with setting(off_setting, device, autocast=True):
            if run_official:
                p_off.set_image(image)

        def with_setting(fn, name, autocast):
            def call():
                with setting(name, device, autocast):
                    return fn()

            return call

        off_fn = with_setting(lambda: p_off.set_image(image), off_setting, True) if run_official else None
        ours_fn = with_setting(ours_set, precision, False)
        off_stats, ours_stats = median_pair(off_fn, ours_fn, args.repeats, device)
        ours_pred = with_setting(lambda: p_ours.predict(**point), precision, False)
        t_pred_ours = median_time(ours_pred, args.predict_repeats, device)
        masks_ours = ours_pred()[0]
        if run_official:
            if off_setting == "bf16":
                off_pred = with_setting(lambda: official_predict(p_off, point, device), off_setting, True)
            else:
                off_pred = with_setting(lambda: p_off.predict(**point), off_setting, True)
            t_pred_off = median_time(off_pred, args.predict_repeats, device)
            official_done[off_setting] = (off_stats, t_pred_off, off_pred()[0])
        off_stats, t_pred_off, masks_off = official_done.get(off_setting, (None, None, None))
        if reference_masks is None and "fp32" in official_done:
            reference_masks = official_done["fp32"][2]
        fp32_time = official_done["fp32"][0][0] if "fp32" in official_done else None
        iou = f"{mask_iou(masks_ours, reference_masks):8.4f}" if reference_masks is not None else f"{'-':>8s}"
        print_row(
            f"set_image {precision}",
            off_stats[0] if off_stats else None,
            ours_stats[0],
            fp32_time,
            off_stats[1] if off_stats else None,
            ours_stats[1],
            iou,
        )
        fp32_pred = official_done["fp32"][1] if "fp32" in official_done else None
        print_row(f"predict 1 point {precision}", t_pred_off, t_pred_ours, fp32_pred, None, None, "", unit="ms")
        sys.stdout.flush()
        if args.profile:
            with setting(precision, device, autocast=False):
                print(f"\ntorch.profiler, samforge set_image, {model_name} {precision}:")
                print(profile_table(lambda: p_ours.set_image(image), device))


def bench_decoding(model_name: str, args, device: torch.device) -> None:
    """Per-prompt latency of ``predict`` (one point) and ``predict_torch`` (``args.boxes`` boxes), fp32: the official
    predictor against ours in each decoder mode, all on the official embedding."""
    from conftest import make_pair

    from samforge import SamPredictor
    from segment_anything import SamPredictor as OfficialPredictor

    official, ours = make_pair(model_name, seed=0)
    official, ours = official.to(device), ours.to(device)
    h, w = args.image_hw
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    p_off = OfficialPredictor(official)
    p_off.set_image(image)
    sides = {"official": p_off}
    for name, precision, mode in (("samforge module (before)", "fp32", "module"), ("samforge fp32", "fp32", "exact"),
                                  ("samforge fp32-fast", "fp32-fast", "folded")):
        p = SamPredictor(ours, precision=precision)
        p.decoder_mode = mode
        if name == "samforge fp32":
            p.set_image(image)  # ours in fp32: bit for bit the official embedding (checked below)
            same = torch.equal(p.features, p_off.features)
        else:  # the decoder alone is compared: the official embedding
            p.original_size, p.input_size = p_off.original_size, p_off.input_size
            p.features, p.is_image_set = p_off.features, True
        sides[name] = p

    point = dict(point_coords=np.array([[w * 0.5, h * 0.5]]), point_labels=np.array([1]))
    rng = np.random.default_rng(2)
    xy0 = rng.uniform(0, 1, (args.boxes, 2)) * [w * 0.7, h * 0.7]
    boxes = np.concatenate([xy0, np.minimum(xy0 + rng.uniform(0.05, 0.5, (args.boxes, 2)) * [w, h], [w - 1, h - 1])],
                           axis=1)
    boxes = p_off.transform.apply_boxes_torch(torch.tensor(boxes, dtype=torch.float), (h, w)).to(device)
    calls = {"predict, 1 point": (lambda p: p.predict(**point), 1)}
    if args.boxes > 0:
        calls[f"predict_torch, {args.boxes} boxes"] = (lambda p: p.predict_torch(None, None, boxes=boxes), args.boxes)
    print(
        f"\nprompt decoding, {model_name}, {w}x{h} image, {device}, fp32, {torch.get_num_threads()} threads, "
        f"per prompt "
        f"(median of {args.decode_repeats}, calls alternating), load average before: "
        f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}; our fp32 embedding bit-identical to the official: {same}"
    )
    print(f"{'':26s} {'':26s} {'ms/prompt':>10s} {'speed-up':>8s} {'max|dlogit|':>11s} {'max|dIoU|':>9s} "
          f"{'mask px differ':>14s}")
    for call_name, (call, n) in calls.items():
        outputs = {name: call(p) for name, p in sides.items()}  # warm-up, and the outputs compared
        times: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(args.decode_repeats):
            for name, p in sides.items():
                sync(device)
                start = time.perf_counter()
                call(p)
                sync(device)
                times[name].append(time.perf_counter() - start)
        t_off = statistics.median(times["official"]) / n
        ref = [torch.as_tensor(t).cpu() for t in outputs["official"]]
        for name in sides:
            t = statistics.median(times[name]) / n
            if name == "official":
                print(f"{call_name:26s} {name:26s} {t * 1e3:10.2f}")
                continue
            out = [torch.as_tensor(x).cpu() for x in outputs[name]]
            dlogit = (out[2].double() - ref[2].double()).abs().max().item()
            diou = (out[1].double() - ref[1].double()).abs().max().item()
            flips = int((out[0] != ref[0]).sum())
            print(f"{'':26s} {name:26s} {t * 1e3:10.2f} {t_off / t:7.2f}x {dlogit:11.2e} {diou:9.2e} {flips:14d}")
        sys.stdout.flush()
        if args.profile:
            for name in ("official", "samforge fp32", "samforge fp32-fast"):
                print(f"\ntorch.profiler, {name}, {call_name}:")
                print(profile_table(lambda: call(sides[name]), device, rows=12))
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


def official_predict(p_off, point: dict, device: torch.device):
    """``segment_anything``'s ``predict``, through ``predict_torch`` so that it also runs under bf16 autocast
    (its ``predict`` cannot turn bf16 scores into numpy). Returns (masks, scores, low-res logits) as numpy."""
    coords = p_off.transform.apply_coords(point["point_coords"], p_off.original_size)
    coords = torch.as_tensor(coords, dtype=torch.float, device=device)[None]
    labels = torch.as_tensor(point["point_labels"], dtype=torch.int, device=device)[None]
    masks, scores, low_res = p_off.predict_torch(coords, labels)
    return tuple((t[0] if t.dtype == torch.bool else t[0].float()).cpu().numpy() for t in (masks, scores, low_res))


def common_parser(doc: str, models: str, model_help: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--models", "--model", default=models, help=model_help)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--precisions", default="fp32,fp32-fast", help=f"comma list of {list(PRECISIONS)}")
    parser.add_argument("--repeats", type=int, default=3, help="set_image calls per side (median)")
    parser.add_argument("--predict-repeats", type=int, default=10, help="predict calls per side (median)")
    parser.add_argument("--image", default="768x1024", help="image HxW (default 768x1024)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--no-official", action="store_true", help="time samforge only")
    parser.add_argument("--profile", action="store_true", help="torch.profiler top-10 table of our set_image")
    return parser


def parse_common(parser: argparse.ArgumentParser):
    args = parser.parse_args()
    try:
        args.image_hw = tuple(int(v) for v in args.image.lower().split("x"))
        assert len(args.image_hw) == 2 and min(args.image_hw) > 0
    except (ValueError, AssertionError):
        raise SystemExit(f"--image must be HxW, e.g. 768x1024, got {args.image!r}") from None
    if args.repeats < 1 or args.predict_repeats < 1:
        raise SystemExit("--repeats and --predict-repeats must be >= 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    precisions = parse_list(args.precisions, PRECISIONS, "precisions")
    return args, precisions, check_device(args.device, precisions)


def main() -> None:
    from samforge.models.configs import SAM_CONFIGS
    from samforge.models.image_encoder import ATTENTION_MODES

    parser = common_parser(__doc__, "vit_b", f"comma list of {sorted(SAM_CONFIGS)}")
    parser.add_argument(
        "--attention", default="folded", choices=[m for m in ATTENTION_MODES if m != "exact"],
        help="ours' attention in the fast precisions",
    )
    parser.add_argument("--boxes", type=int, default=64, help="boxes of the predict_torch decoding row (0: none)")
    parser.add_argument("--decode-repeats", type=int, default=5, help="decoding calls per side (median)")
    parser.add_argument("--decode-only", action="store_true", help="only the prompt-decoding rows (no set_image rows)")
    args, precisions, device = parse_common(parser)
    if args.boxes < 0 or args.decode_repeats < 1:
        raise SystemExit("--boxes must be >= 0 and --decode-repeats >= 1")
    if args.decode_only and args.no_official:
        raise SystemExit("--decode-only compares with the official predictor: leave out --no-official")
    for model_name in parse_list(args.models, tuple(SAM_CONFIGS), "models"):
        if not args.decode_only:
            bench_model(model_name, args, device, precisions)
        if not args.no_official:
            bench_decoding(model_name, args, device)


if __name__ == "__main__":
    main()
