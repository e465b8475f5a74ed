"""Held-out box and centre-point mIoU against the step for several training runs, one picture, for comparing runs
(e.g. the random and the aligned-attention start, benchmarks/README.md "Leaving the plateau").

    python benchmarks/val_curves.py RUN_A=random RUN_B=aligned ... --out curves.png

Each RUN is a training run folder (its ``metrics.jsonl``), optionally ``=LABEL``; runs sharing a label share a
colour. Prints the validations it plotted.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from samforge.train.plots import read_metrics  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="RUN_FOLDER[=LABEL]")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--title", default="held-out mIoU while training")
    args = p.parse_args()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    colours: dict[str, str] = {}
    labelled: set[str] = set()
    for spec in args.runs:
        folder, _, label = spec.partition("=")
        metrics = Path(folder) / "metrics.jsonl"
        if not metrics.is_file():
            raise SystemExit(f"{folder}: expected a training run folder with metrics.jsonl, found none")
        val = [r for r in read_metrics(metrics) if r.get("split") == "val" and "box_miou" in r]
        if not val:
            raise SystemExit(f"{metrics}: no validation rows (box_miou) in it")
        label = label or Path(folder).name
        colour = colours.setdefault(label, f"C{len(colours)}")
        steps = [r["step"] for r in val]
        for ax, key in zip(axes, ("box_miou", "point_miou")):
            ax.plot(steps, [r[key] for r in val], color=colour, marker="o", ms=3, alpha=0.8,
                    label=None if label in labelled else label)
        labelled.add(label)
        print(f"{folder} ({label}): " + " ".join(f"{r['step']}:{r['box_miou']:.2f}/{r['point_miou']:.2f}" for r in val))
    for ax, name in zip(axes, ("box prompt", "centre point")):
        ax.set_xlabel("step")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out mIoU")
    axes[0].legend()
    fig.suptitle(args.title)
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(out)  # written whole or not at all
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
