"""Writing an evaluation: ``metrics.json``, ``per_image.csv``, ``best_worst.png``, and a readable table."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import cv2
import numpy as np

from samforge.utils.atomic import atomic_write_bytes
from samforge.viz.overlay import draw_overlay

if TYPE_CHECKING:
    from samforge.evaluate.evaluator import Case, EvalResult

METRICS_JSON = "metrics.json"
PER_IMAGE_CSV = "per_image.csv"
BEST_WORST_PNG = "best_worst.png"
GT_CONTOUR_COLOR = np.array([255, 255, 0], dtype=np.uint8)  # yellow


def write_report(result: "EvalResult", out: Path) -> dict[str, Path]:
    """Write the three files of an evaluation into ``out``; returns ``{file name: path}``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in (METRICS_JSON, PER_IMAGE_CSV, BEST_WORST_PNG)}
    atomic_write_bytes(paths[METRICS_JSON], (json.dumps(result.to_metrics_dict(), indent=2) + "\n").encode())
    atomic_write_bytes(paths[PER_IMAGE_CSV], per_image_csv(result.per_image_rows()).encode())
    atomic_write_bytes(paths[BEST_WORST_PNG], best_worst_png(result.best, result.worst))
    return paths


def per_image_csv(rows: Sequence[dict[str, Any]]) -> str:
    """CSV text with a header; floats with 6 decimals, missing values as empty cells."""
    if not rows:
        raise ValueError("per_image_csv needs at least one row, got none")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


def outlined_prediction(image: np.ndarray, gt: np.ndarray, pred: np.ndarray, box: np.ndarray | None) -> np.ndarray:
    """The image with the predicted mask filled, its box prompt (XYXY, or None), and the ground truth outlined."""
    tile = draw_overlay(image, pred, boxes=None if box is None else box[None])
    width = max(1, round(min(gt.shape) / 256))
    inner = cv2.erode(gt.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=width,
                      borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)
    tile[gt & ~inner] = GT_CONTOUR_COLOR
    return tile


def _tile(case: "Case") -> np.ndarray:
    return outlined_prediction(case.image, case.gt, case.pred, case.box)


def best_worst_png(best: Sequence["Case"], worst: Sequence["Case"]) -> bytes:
    """A PNG grid (matplotlib): the best cases on the top row, the worst below, each titled with its IoU."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [("best", list(best)), ("worst", list(worst))]
    cols = max(1, *(len(cases) for _, cases in rows))
    fig = Figure(figsize=(3.0 * cols, 7.4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle("box prompt: prediction filled, ground truth outlined in yellow", fontsize=10)
    for r, (label, cases) in enumerate(rows):
        for c in range(cols):
            ax = fig.add_subplot(2, cols, r * cols + c + 1)
            ax.set_axis_off()
            if c < len(cases):
                case = cases[c]
                ax.imshow(_tile(case), interpolation="nearest")
                name = case.title if len(case.title) <= 32 else "..." + case.title[-29:]
                ax.set_title(f"{label} {c + 1}: IoU {case.iou:.3f}\n{name}", fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def format_table(metrics: dict[str, Any]) -> str:
    """A plain-text table of a ``metrics.json`` dict, for the terminal."""
    from samforge.evaluate.evaluator import METRIC_PROTOCOLS
    from samforge.evaluate.protocols import RECIPE
    from samforge.evaluate.stored_protocol import STORED

    lines = [f"{'protocol':<14}{'mIoU':>8}{'Dice':>8}"]
    lines += [f"{p:<14}{metrics[p]['miou']:>8.4f}{metrics[p]['dice']:>8.4f}"
              for p in (*METRIC_PROTOCOLS, RECIPE, STORED) if p in metrics]
    if "interactive" in metrics:  # not with the stored prompts
        inter = metrics["interactive"]
        clicks = inter["miou_at_clicks"]
        lines.append("interactive   " + "  ".join(f"mIoU@{k}={v:.4f}" for k, v in clicks.items()))
        lines.append(f"{'':<14}NoC@85={inter['noc85']:.2f}  NoC@90={inter['noc90']:.2f}")
    lines.append(f"{metrics['num_objects']} objects in {metrics['num_images']} images")
    return "\n".join(lines)
