"""Two models side by side on the same data (e.g. a base checkpoint and its fine-tuned version): the metric
deltas per prompt protocol (``comparison.json``, a terminal table) and a before/after picture
(``before_after.png``: for the same objects, the baseline's and the model's box-prompt masks)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from samforge.data.prompts import mask_to_box
from samforge.data.sample import Sample
from samforge.evaluate.evaluator import METRIC_PROTOCOLS, image_predictor_for
from samforge.evaluate.stored_protocol import STORED
from samforge.evaluate.metrics import iou_dice
from samforge.evaluate.report import outlined_prediction
from samforge.models.sam import Sam
from samforge.models.sam2 import SAM2Base
from samforge.utils.atomic import atomic_write_bytes

COMPARISON_JSON = "comparison.json"
BEFORE_AFTER_PNG = "before_after.png"


def compare_metrics(baseline: dict[str, Any], model: dict[str, Any]) -> dict[str, Any]:
    """``{protocol: {"miou": {"baseline", "model", "delta"}, "dice": {...}}}`` from two ``metrics.json`` dicts,
    plus the interactive mIoU at each click count and NoC."""
    out: dict[str, Any] = {}
    for protocol in _protocols(model):
        out[protocol] = {m: _delta(baseline[protocol][m], model[protocol][m]) for m in ("miou", "dice")}
    if "interactive" not in model:  # the stored prompts: no interactive part
        return out
    b_int, m_int = baseline["interactive"], model["interactive"]
    out["interactive"] = {
        "miou_at_clicks": {k: _delta(b_int["miou_at_clicks"][k], m_int["miou_at_clicks"][k])
                           for k in m_int["miou_at_clicks"]},
        **{k: _delta(b_int[k], m_int[k]) for k in m_int if k.startswith("noc")},
    }
    return out


def _protocols(metrics: dict[str, Any]) -> list[str]:
    """The protocols a ``metrics.json`` dict holds: SAM's simulated ones, or ``stored``."""
    return [p for p in (*METRIC_PROTOCOLS, STORED) if p in metrics]


def compare_scalars(baseline: dict[str, Any], model: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """``{key: {"baseline", "model", "delta"}}`` for summary figures such as J&F or 3D Dice."""
    missing = [k for k in keys if k not in baseline or k not in model]
    if missing:
        raise ValueError(f"both metric dicts must hold {list(keys)}; missing {missing}")
    return {k: _delta(float(baseline[k]), float(model[k])) for k in keys}


def format_scalar_comparison(comparison: dict[str, Any], names: tuple[str, str] = ("baseline", "model")) -> str:
    lines = [f"{'metric':<10}{names[0]:>12}{names[1]:>12}{'delta':>9}"]
    lines += [f"{k:<10}{v['baseline']:>12.4f}{v['model']:>12.4f}{v['delta']:>+9.4f}" for k, v in comparison.items()]
    return "\n".join(lines)


def _delta(before: float, after: float) -> dict[str, float]:
    return {"baseline": before, "model": after, "delta": after - before}


def format_comparison(comparison: dict[str, Any], names: tuple[str, str] = ("baseline", "model")) -> str:
    lines = [f"{'protocol':<14}{'Dice ' + names[0]:>18}{'Dice ' + names[1]:>18}{'delta':>9}"
             f"{'mIoU ' + names[0]:>18}{'mIoU ' + names[1]:>18}{'delta':>9}"]
    for p in _protocols(comparison):
        d, i = comparison[p]["dice"], comparison[p]["miou"]
        lines.append(f"{p:<14}{d['baseline']:>18.4f}{d['model']:>18.4f}{d['delta']:>+9.4f}"
                     f"{i['baseline']:>18.4f}{i['model']:>18.4f}{i['delta']:>+9.4f}")
    return "\n".join(lines)


def box_masks(model: Sam | SAM2Base, samples: Sequence[Sample]) -> list[list[np.ndarray]]:
    """Each object's mask from a single-mask box prompt (the object's tight box), per sample."""
    predictor = image_predictor_for(model)
    out = []
    for sample in samples:
        predictor.set_image(sample.image)
        masks = []
        for gt in sample.masks:
            mask, _, _ = predictor.predict(box=mask_to_box(gt), multimask_output=False)
            masks.append(np.asarray(mask[0]).astype(bool))  # SAM 2's predictor gives 0/1 floats
        out.append(masks)
    return out


def before_after_png(baseline: Sam | SAM2Base, model: Sam | SAM2Base, samples: Sequence[Sample], names: tuple[str, str] = ("baseline", "model"),
                     max_objects: int = 6) -> bytes:
    """A grid (matplotlib): one column per object (the first ``max_objects``, one per image where possible),
    rows ``names[0]`` and ``names[1]``, each the box-prompt mask filled with the ground truth outlined."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if max_objects < 1:
        raise ValueError(f"max_objects must be >= 1, got {max_objects}")
    picks: list[tuple[int, int]] = []  # (sample, object): one object per image first, then more
    for round_ in range(max((len(s.masks) for s in samples), default=0)):
        picks += [(i, round_) for i, s in enumerate(samples) if round_ < len(s.masks)]
    picks = picks[:max_objects]
    if not picks:
        raise ValueError("before_after_png needs at least one sample with an object")
    used = sorted({i for i, _ in picks})
    chosen = [samples[i] for i in used]
    preds = {name: dict(zip(used, box_masks(m, chosen))) for name, m in zip(names, (baseline, model))}
    fig = Figure(figsize=(2.6 * len(picks), 5.8), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle("box prompt: prediction filled, ground truth outlined in yellow", fontsize=10)
    for r, name in enumerate(names):
        for c, (i, k) in enumerate(picks):
            sample, pred = samples[i], preds[name][i][k]
            iou, dice = iou_dice(pred, sample.masks[k])
            ax = fig.add_subplot(2, len(picks), r * len(picks) + c + 1)
            ax.set_axis_off()
            tile = outlined_prediction(sample.image, sample.masks[k], pred, mask_to_box(sample.masks[k]))
            ax.imshow(tile, interpolation="nearest")
            ax.set_title(f"{name}: Dice {dice:.3f}", fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_comparison(out: Path, comparison: dict[str, Any], picture: bytes | None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / COMPARISON_JSON, (json.dumps(comparison, indent=2) + "\n").encode())
    if picture is not None:
        atomic_write_bytes(out / BEFORE_AFTER_PNG, picture)
