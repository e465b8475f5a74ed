"""Pictures of a training run: ``curves.png`` from ``metrics.jsonl`` and overlays of validation predictions."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from samforge.data.prompts import mask_to_box
from samforge.data.sample import Sample
from samforge.models.sam import Sam
from samforge.predict.predictor import SamPredictor
from samforge.utils.atomic import atomic_write_bytes, save_png
from samforge.viz.overlay import draw_overlay


def read_metrics(path: Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` ([] when there is none). A torn last line (the run killed while appending
    it) is skipped with a message; any other line that is not a JSON record with an integer "step" is a
    ``ValueError`` naming the file and line."""
    if not path.is_file():
        return []
    lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    numbered = [(i, line) for i, line in enumerate(lines, start=1) if line.strip()]
    records = []
    for k, (i, line) in enumerate(numbered):
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError(f"expected a JSON object with an integer 'step', got {line[:80]!r}")
        except ValueError as e:
            if k == len(numbered) - 1:
                print(f"{path}: skipping its last line {i}, torn by a killed run ({line[:60]!r}...)")
                break
            raise ValueError(f"{path}: line {i} is not a metrics record ({e}); fix or delete that line "
                             "to resume the run") from e
        records.append(record)
    return records


def plot_curves(metrics_path: Path, out_path: Path) -> None:
    """Train/val loss and val mIoU/Dice against step, two panels, written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = read_metrics(metrics_path)
    train = [r for r in rows if r.get("split") == "train"]
    val = [r for r in rows if r.get("split") == "val"]
    fig = Figure(figsize=(11, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax_loss, ax_score = fig.subplots(1, 2)
    if train:
        ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss", alpha=0.8)
    if val:
        steps = [r["step"] for r in val]
        ax_loss.plot(steps, [r["loss"] for r in val], "o-", label="val loss (box)")
        for key, label in (("box_miou", "val mIoU, box"), ("box_dice", "val Dice, box"),
                           ("point_miou", "val mIoU, centre point"), ("point_dice", "val Dice, centre point")):
            ax_score.plot(steps, [r[key] for r in val], "o-", label=label)
    ax_loss.set(xlabel="step", ylabel="loss", title="loss")
    ax_loss.set_yscale("log")
    ax_score.set(xlabel="step", ylabel="score", title="validation", ylim=(0, 1))
    for ax in (ax_loss, ax_score):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(out_path, buf.getvalue())


def save_val_overlays(model: Sam, samples: list[Sample], out_path: Path) -> None:
    """One row of images: each object predicted from its tight box, all masks drawn in their colours."""
    predictor = SamPredictor(model)
    tiles = []
    for sample in samples:
        predictor.set_image(sample.image)
        masks, boxes = [], []
        for gt in sample.masks:
            box = mask_to_box(gt)
            pred, _, _ = predictor.predict(box=box, multimask_output=False)
            masks.append(pred[0])
            boxes.append(box)
        tiles.append(draw_overlay(sample.image, np.stack(masks), boxes=np.stack(boxes)))
    h = max(t.shape[0] for t in tiles)
    row = np.concatenate([np.pad(t, ((0, h - t.shape[0]), (0, 4), (0, 0)), constant_values=255) for t in tiles], axis=1)
    save_png(row, out_path)
