"""The official ``sam2`` package as the oracle of the SAM 2 tests: its models, built by its own
``build_sam2`` from its packaged configs, and samforge's with the same (perturbed) random weights."""

from __future__ import annotations

from unittest import mock

import numpy as np
import torch
from conftest import perturb_
from hydra import compose
from hydra.utils import instantiate
from omegaconf import OmegaConf
from sam2.build_sam import build_sam2 as official_build_sam2

from samforge import build_sam2

TOL = 1e-4  # max abs difference of features, logits and IoU allowed in fp32

# A SAM 2.1 tiny shrunk for fast tests: 256 input, a narrow trunk (the heads keep their official sizes).
SMALL_OVERRIDES = (
    "++model.image_size=256",
    "++model.image_encoder.trunk.embed_dim=16",
    "++model.image_encoder.neck.backbone_channel_list=[128,64,32,16]",
)


def official_config_path(name: str) -> str:
    return f"configs/{name.split('_')[0]}/{name}.yaml"


def official_sam2(name: str, overrides=(), apply_postprocessing: bool = True):
    """The official model on CPU, built as a user would (random weights)."""
    return official_build_sam2(
        official_config_path(name),
        device="cpu",
        hydra_overrides_extra=list(overrides),
        apply_postprocessing=apply_postprocessing,
    )


def official_sam2_meta(name: str):
    """The official model with its parameters on the meta device (shapes only, built in a blink).

    Its Hiera reads a ``torch.linspace(...).item()``, which meta tensors cannot give: that one call runs on CPU.
    """
    cfg = compose(config_name=official_config_path(name))
    OmegaConf.resolve(cfg)
    linspace = torch.linspace
    with torch.device("meta"), mock.patch("torch.linspace", lambda *a, **k: linspace(*a, **{**k, "device": "cpu"})):
        return instantiate(cfg.model, _recursive_=True)


def make_sam2_pair(name: str, seed: int, overrides=()):
    """(official, samforge) SAM 2 models holding identical random weights, every parameter perturbed."""
    torch.manual_seed(seed)
    official = official_sam2(name, overrides)
    perturb_(official, seed)
    ours = build_sam2(name, device="cpu", hydra_overrides_extra=list(overrides))
    ours.load_state_dict(official.state_dict(), strict=True)
    return official, ours


def max_diff(a, b) -> float:
    a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.detach().cpu().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    assert a.shape == b.shape, f"shape {a.shape} != official {b.shape}"
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()) if a.size else 0.0


def assert_same_prediction(ours, official, return_logits: bool = False, tol: float = TOL) -> float:
    """(masks, iou, low_res) of our predictor equal the official: same shapes and dtypes, identical masks
    (unless logits), IoU and low-res logits within ``tol``. Returns the largest difference."""
    worst = 0.0
    for name, a, b in zip(("masks", "iou_predictions", "low_res_logits"), ours, official):
        assert a.shape == b.shape, f"{name}: shape {a.shape} != official {b.shape}"
        assert a.dtype == b.dtype, f"{name}: dtype {a.dtype} != official {b.dtype}"
        if name == "masks" and not return_logits:
            assert np.array_equal(a, b), f"masks: {int((a != b).sum())} pixels differ"
            continue
        diff = max_diff(a, b)
        worst = max(worst, diff)
        assert diff <= tol, f"{name}: max abs diff {diff} > {tol}"
    return worst


def prompt_cases(h: int, w: int, rng: np.random.Generator, low_res: int = 256) -> dict[str, dict]:
    """Named keyword sets for ``SAM2ImagePredictor.predict`` on an ``h x w`` image."""

    def pts(n: int) -> np.ndarray:
        return np.stack([rng.uniform(0, w - 1, n), rng.uniform(0, h - 1, n)], axis=1)

    def box() -> np.ndarray:
        x0, y0 = rng.uniform(0, w / 2), rng.uniform(0, h / 2)
        return np.array([x0, y0, rng.uniform(x0 + 1, w - 1), rng.uniform(y0 + 1, h - 1)])

    return {
        "one_point": dict(point_coords=pts(1), point_labels=np.array([1])),
        "points_single_mask": dict(point_coords=pts(4), point_labels=np.array([1, 0, 1, 0]), multimask_output=False),
        "box": dict(box=box()),
        "box_and_points": dict(box=box(), point_coords=pts(2), point_labels=np.array([1, 0])),
        "mask_input": dict(
            point_coords=pts(1),
            point_labels=np.array([1]),
            mask_input=rng.standard_normal((1, low_res, low_res)).astype(np.float32) * 4,
            multimask_output=False,
        ),
        "logits": dict(point_coords=pts(2), point_labels=np.array([1, 1]), return_logits=True),
        "boxes_batched": dict(box=np.stack([box(), box(), box()]), multimask_output=False),
        "normalized_coords": dict(
            point_coords=pts(2) / np.array([w, h]), point_labels=np.array([1, 0]), normalize_coords=False
        ),
    }
