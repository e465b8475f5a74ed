"""SAM2ImagePredictor speed, ours vs the official sam2, side by side in one process, per precision.

    .venv/bin/python benchmarks/sam2_predictor.py [--models sam2.1_hiera_t,sam2.1_hiera_s] [--device cpu|cuda]
        [--precisions fp32,fp32-fast,bf16,tf32] [--repeats 3] [--profile]

Both predictors hold the same random (perturbed) weights; the calls alternate and medians are reported. Rows,
ours / the official's setting: fp32 / fp32; fp32-fast (the same as fp32 for SAM 2: Hiera has no rel-pos bias and
already uses SDPA) / fp32; bf16: ``precision="bf16"`` (encoder in bf16 end to end) / ``torch.autocast(device,
torch.bfloat16)`` around set_image and predict (the official recipe); tf32 / tf32, both with TF32 on (CUDA only).
Columns as in benchmarks/predictor.py (whose helpers this script uses).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from predictor import (  # noqa: E402  (benchmarks/predictor.py: the shared timing and printing helpers)
    OFFICIAL_SETTING,
    OURS_PRECISION,
    common_parser,
    mask_iou,
    median_pair,
    median_time,
    parse_common,
    parse_list,
    print_header,
    print_row,
    profile_table,
    setting,
)

MODELS = ("sam2.1_hiera_t", "sam2.1_hiera_s", "sam2.1_hiera_b+", "sam2.1_hiera_l",
          "sam2_hiera_t", "sam2_hiera_s", "sam2_hiera_b+", "sam2_hiera_l")


def bench_model(model_name: str, args, device: torch.device, precisions: list[str]) -> None:
    from sam2_oracle import make_sam2_pair  # the same oracle builder the parity tests use

    from samforge import SAM2ImagePredictor

    official, ours = make_sam2_pair(model_name, seed=0)
    official, ours = official.to(device), ours.to(device)
    h, w = args.image_hw
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    point = dict(point_coords=np.array([[w * 0.5, h * 0.5]]), point_labels=np.array([1]))
    p_off = None
    if not args.no_official:
        from sam2.sam2_image_predictor import SAM2ImagePredictor as OfficialPredictor

        p_off = OfficialPredictor(official)
    print_header(
        f"\n{model_name}, {w}x{h} image, {device}, torch {torch.__version__}, {torch.get_num_threads()} threads"
        f"{', ' + torch.cuda.get_device_name(device) if device.type == 'cuda' else ''}"
    )

    def with_setting(fn, name, autocast):
        def call():
            with setting(name, device, autocast):
                return fn()

        return call

    official_done: dict[str, tuple] = {}
    for precision in precisions:
        p_ours = SAM2ImagePredictor(ours, precision=OURS_PRECISION[precision])
        off_setting = OFFICIAL_SETTING[precision]
        run_official = p_off is not None and off_setting not in official_done
        ours_set = with_setting(lambda: p_ours.set_image(image), precision, False)
        ours_set()  # warm-up
        off_set = with_setting(lambda: p_off.set_image(image), off_setting, True) if run_official else None
        if off_set is not None:
            off_set()
        off_stats, ours_stats = median_pair(off_set, ours_set, args.repeats, device)
        ours_pred = with_setting(lambda: p_ours.predict(**point), precision, False)
        t_pred_ours = median_time(ours_pred, args.predict_repeats, device)
        masks_ours = ours_pred()[0]
        if run_official:
            off_pred = with_setting(lambda: p_off.predict(**point), off_setting, True)
            t_pred_off = median_time(off_pred, args.predict_repeats, device)
            official_done[off_setting] = (off_stats, t_pred_off, off_pred()[0])
        off_stats, t_pred_off, _ = official_done.get(off_setting, (None, None, None))
        reference = official_done["fp32"][2] if "fp32" in official_done else None
        iou = f"{mask_iou(masks_ours, reference):8.4f}" if reference is not None else f"{'-':>8s}"
        fp32_set = official_done["fp32"][0][0] if "fp32" in official_done else None
        fp32_pred = official_done["fp32"][1] if "fp32" in official_done else None
        print_row(f"set_image {precision}", off_stats[0] if off_stats else None, ours_stats[0], fp32_set,
                  off_stats[1] if off_stats else None, ours_stats[1], iou)
        print_row(f"predict 1 point {precision}", t_pred_off, t_pred_ours, fp32_pred, None, None, "", unit="ms")
        sys.stdout.flush()
        if args.profile:
            print(f"\ntorch.profiler, samforge set_image, {model_name} {precision}:")
            print(profile_table(ours_set, device))


def main() -> None:
    parser = common_parser(__doc__, "sam2.1_hiera_t", f"comma list of {list(MODELS)}")
    args, precisions, device = parse_common(parser)
    for model_name in parse_list(args.models, MODELS, "models"):
        bench_model(model_name, args, device, precisions)


if __name__ == "__main__":
    main()
