"""vit_b at the real 1024 input against the official segment_anything (the oracle), fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from parity import TOL, assert_same_prediction, prompt_cases
from segment_anything import SamPredictor as OfficialPredictor

from samforge import SamPredictor


@pytest.fixture(scope="module")
def predictors(vit_b_pair):
    official, ours = vit_b_pair
    image = np.random.default_rng(0).integers(0, 256, (600, 800, 3), dtype=np.uint8)
    p_official, p_ours = OfficialPredictor(official), SamPredictor(ours)
    p_official.set_image(image)
    p_ours.set_image(image)
    return p_official, p_ours, image


def test_image_embedding(predictors):
    p_official, p_ours, _ = predictors
    ours, official = p_ours.get_image_embedding(), p_official.get_image_embedding()
    assert ours.shape == official.shape == (1, 256, 64, 64)
    assert (ours - official).abs().max().item() <= TOL
    assert p_ours.input_size == p_official.input_size and p_ours.original_size == p_official.original_size


@pytest.mark.parametrize("case", ["one_point", "points", "box", "box_and_points", "logits", "mask_input"])
def test_predict(predictors, case):
    p_official, p_ours, image = predictors
    kwargs = prompt_cases(*image.shape[:2], np.random.default_rng(1))[case]
    assert_same_prediction(p_ours.predict(**kwargs), p_official.predict(**kwargs))


def test_predict_torch_batch_of_boxes(predictors):
    p_official, p_ours, image = predictors
    rng = np.random.default_rng(2)
    xy0 = rng.uniform(0, 300, (16, 2))
    boxes = torch.tensor(np.concatenate([xy0, xy0 + rng.uniform(20, 280, (16, 2))], axis=1), dtype=torch.float)
    boxes = p_official.transform.apply_boxes_torch(boxes, image.shape[:2])
    ours = p_ours.predict_torch(None, None, boxes=boxes)
    assert ours[0].shape == (16, 3, 600, 800)
    assert_same_prediction(ours, p_official.predict_torch(None, None, boxes=boxes))
