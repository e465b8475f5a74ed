"""Does a model use its prompt? For each held-out image, the centre clicks on two different objects, and the
correlation between the two mask-logit maps they give (1.0: the click does not matter), with each map's mean logit
on its own object minus that on the other object (> 0: the click picks its object).

    python benchmarks/prompt_sensitivity.py RUN/checkpoints/last.pt RUN/data/val [--images 16] [--threads 1]

A model from scratch on the "all background" plateau gives nearly the same map for every click; the decoder's
attention started with keys equal to queries (``model.aligned_attention``) is meant to end that sooner
(``samforge/models/attention_init.py``, benchmarks/README.md "Leaving the plateau").
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
import torch

from samforge.data.prompts import interior_point
from samforge.data.readers import open_dataset
from samforge.models.load import load_model
from samforge.predict.predictor import SamPredictor


def click_logits(predictor: SamPredictor, mask: np.ndarray) -> np.ndarray:
    """The single-mask logits (image size) for a positive click at ``mask``'s interior point."""
    logits, _, _ = predictor.predict(point_coords=interior_point(mask)[None], point_labels=np.array([1]),
                                     multimask_output=False, return_logits=True)
    return logits[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("data", help="held-out images with instance masks (a quickstart run's data/val)")
    p.add_argument("--images", type=int, default=16, help="held-out images to use (default 16)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    if args.images < 1 or args.threads < 1:
        raise SystemExit(f"--images and --threads must be >= 1, got {args.images} and {args.threads}")
    torch.set_num_threads(args.threads)
    predictor = SamPredictor(load_model(args.checkpoint).eval())
    data = open_dataset(args.data)
    corrs, margins = [], []
    for i in range(min(args.images, len(data))):
        sample = data[i]
        masks = [np.asarray(m, dtype=bool) for m in sample.masks]
        if len(masks) < 2:
            continue
        predictor.set_image(np.asarray(sample.image))
        a_mask, b_mask = masks[0], masks[1]
        a, b = click_logits(predictor, a_mask), click_logits(predictor, b_mask)
        corrs.append(float(np.corrcoef(a.ravel(), b.ravel())[0, 1]))
        for own, other, lg in ((a_mask, b_mask, a), (b_mask, a_mask, b)):
            margins.append(float(lg[own].mean() - lg[other].mean()))
    if not corrs:
        raise SystemExit(f"{args.data}: no image with two objects among the first {args.images}")
    print(f"{args.checkpoint}: {len(corrs)} images, two clicks' maps correlate {np.mean(corrs):.3f} (median "
          f"{np.median(corrs):.3f}); own object minus other object: {np.mean(margins):+.2f} logits "
          f"({np.mean(np.array(margins) > 0):.0%} of clicks > 0)")


if __name__ == "__main__":
    main()
