"""The small configuration against the official classes built with the same shape: many prompt cases,
image sizes and seeds in little time (fp32)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_pair
from parity import assert_same_prediction, prompt_cases, scale_mask_input
from segment_anything import SamPredictor as OfficialPredictor

from samforge import SamPredictor


@pytest.mark.parametrize("seed,hw", [(3, (256, 256)), (4, (180, 300)), (5, (411, 97)), (6, (37, 53))])
def test_predict_matches_official(seed, hw):
    official, ours = make_pair("vit_small", seed)
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    p_official, p_ours = OfficialPredictor(official), SamPredictor(ours)
    p_official.set_image(image)
    p_ours.set_image(image)
    assert torch.equal(p_ours.features, p_official.features)
    low_res = ours.prompt_encoder.mask_input_size[0]
    for name, kwargs in prompt_cases(*hw, rng).items():
        kwargs = scale_mask_input(kwargs, low_res)
        ours_out, official_out = p_ours.predict(**kwargs), p_official.predict(**kwargs)
        assert_same_prediction(ours_out, official_out)
        assert ours_out[0].shape[-2:] == hw, name


def test_predict_torch_points_and_masks(small_pair):
    official, ours = small_pair
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, (200, 240, 3), dtype=np.uint8)
    p_official, p_ours = OfficialPredictor(official), SamPredictor(ours)
    p_official.set_image(image)
    p_ours.set_image(image)
    b = 5
    coords = torch.tensor(rng.uniform(0, 200, (b, 3, 2)), dtype=torch.float)
    labels = torch.tensor(rng.integers(0, 2, (b, 3)))
    boxes = torch.tensor([[10.0, 10.0, 150.0, 120.0]]).repeat(b, 1)
    masks_in = torch.tensor(rng.standard_normal((b, 1, 64, 64)), dtype=torch.float)
    for kwargs in (
        dict(point_coords=coords, point_labels=labels),
        dict(point_coords=coords, point_labels=labels, boxes=boxes, multimask_output=False),
        dict(point_coords=coords, point_labels=labels, mask_input=masks_in, return_logits=True),
    ):
        assert_same_prediction(p_ours.predict_torch(**kwargs), p_official.predict_torch(**kwargs))


def test_sam_forward_batched_input(small_pair):
    official, ours = small_pair
    rng = np.random.default_rng(8)
    batch = []
    for h, w, prompts in [(256, 192, "points"), (128, 256, "boxes"), (256, 256, "all")]:
        record = {"image": torch.tensor(rng.integers(0, 256, (3, h, w)), dtype=torch.float), "original_size": (h * 2, w * 2)}
        if prompts in ("points", "all"):
            record["point_coords"] = torch.tensor(rng.uniform(0, min(h, w), (2, 3, 2)), dtype=torch.float)
            record["point_labels"] = torch.tensor([[1, 0, 1], [1, 1, 0]])
        if prompts in ("boxes", "all"):
            record["boxes"] = torch.tensor([[10.0, 20.0, 100.0, 120.0], [5.0, 6.0, 50.0, 45.0]])
        if prompts == "all":
            record["mask_inputs"] = torch.tensor(rng.standard_normal((2, 1, 64, 64)), dtype=torch.float)
        batch.append(record)
    for multimask in (True, False):
        with torch.no_grad():
            out_ours = ours(batch, multimask_output=multimask)
        out_official = official(batch, multimask_output=multimask)
        assert len(out_ours) == len(batch)
        for a, b in zip(out_ours, out_official):
            assert set(a) == {"masks", "iou_predictions", "low_res_logits"}
            assert_same_prediction(
                (a["masks"], a["iou_predictions"], a["low_res_logits"]),
                (b["masks"], b["iou_predictions"], b["low_res_logits"]),
            )


def test_reduced_precision_path_agrees(small_pair):
    """The fused (non-fp32) attention path stays close to the exact fp32 path."""
    _, ours = small_pair
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        exact = ours.image_encoder(x)
        ours64 = ours.double()
        try:
            fused = ours64.image_encoder(x.double())
        finally:
            ours.float()
    assert (fused.float() - exact).abs().max().item() < 1e-4
