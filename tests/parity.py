"""Prompt cases and comparisons shared by the SAM parity tests."""

from __future__ import annotations

import numpy as np
import torch

TOL = 1e-4  # max abs difference of logits and IoU predictions allowed in fp32


def prompt_cases(h: int, w: int, rng: np.random.Generator) -> dict[str, dict]:
    """Named keyword sets for ``predict`` in an image of ``h x w`` pixels."""

    def pts(n: int) -> np.ndarray:
        return np.stack([rng.uniform(0, w - 1, n), rng.uniform(0, h - 1, n)], axis=1)

    x0, y0 = rng.uniform(0, w / 2), rng.uniform(0, h / 2)
    box = np.array([x0, y0, rng.uniform(x0 + 1, w - 1), rng.uniform(y0 + 1, h - 1)])
    return {
        "one_point": dict(point_coords=pts(1), point_labels=np.array([1])),
        "points": dict(point_coords=pts(4), point_labels=np.array([1, 0, 1, 0]), multimask_output=False),
        "box": dict(box=box),
        "box_and_points": dict(box=box, point_coords=pts(2), point_labels=np.array([1, 0])),
        "logits": dict(point_coords=pts(2), point_labels=np.array([1, 1]), return_logits=True),
        "mask_input": dict(
            point_coords=pts(1),
            point_labels=np.array([1]),
            mask_input=rng.standard_normal((1, 256, 256)).astype(np.float32) * 4,
            multimask_output=False,
        ),
    }


def scale_mask_input(case: dict, size: int) -> dict:
    """Resize a case's mask_input to a model whose low-res masks are ``size x size``."""
    if "mask_input" in case:
        case = dict(case, mask_input=case["mask_input"][:, :size, :size])
    return case


def assert_same_prediction(ours, official, tol: float = TOL) -> None:
    """(masks, iou, low_res) from our predictor equal the official ones: same dtypes and shapes, identical
    binary masks, logits and IoU within ``tol``."""
    names = ("masks", "iou_predictions", "low_res_logits")
    for name, a, b in zip(names, ours, official):
        a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a
        b = b.detach().cpu().numpy() if isinstance(b, torch.Tensor) else b
        assert a.shape == b.shape, f"{name}: shape {a.shape} != official {b.shape}"
        assert a.dtype == b.dtype, f"{name}: dtype {a.dtype} != official {b.dtype}"
        if a.dtype == bool:
            assert np.array_equal(a, b), f"{name}: {int((a != b).sum())} mask pixels differ"
        else:
            diff = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
            assert diff <= tol, f"{name}: max abs diff {diff} > {tol}"
