"""ResizeLongestSide matches the official transform exactly (numpy path) on many sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything.utils.transforms import ResizeLongestSide as Official

from samforge import ResizeLongestSide


@pytest.mark.parametrize("hw", [(600, 800), (800, 600), (37, 1001), (1024, 1024), (100, 100), (3, 5), (1500, 1499)])
@pytest.mark.parametrize("target", [1024, 256])
def test_numpy_transforms_match_official(hw, target):
    rng = np.random.default_rng(sum(hw) + target)
    ours, official = ResizeLongestSide(target), Official(target)
    image = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    resized = ours.apply_image(image)
    assert resized.dtype == np.uint8 and max(resized.shape[:2]) == target
    assert np.array_equal(resized, official.apply_image(image))
    coords = rng.uniform(0, max(hw), (5, 2))
    assert np.array_equal(ours.apply_coords(coords, hw), official.apply_coords(coords, hw))
    boxes = rng.uniform(0, max(hw), (3, 4))
    assert np.array_equal(ours.apply_boxes(boxes, hw), official.apply_boxes(boxes, hw))
    t = torch.tensor(coords)
    assert torch.equal(ours.apply_coords_torch(t, hw), official.apply_coords_torch(t, hw))
    assert torch.equal(ours.apply_boxes_torch(torch.tensor(boxes), hw), official.apply_boxes_torch(torch.tensor(boxes), hw))


def test_coords_are_not_modified_in_place():
    coords = np.array([[10.0, 20.0]])
    ResizeLongestSide(1024).apply_coords(coords, (100, 200))
    assert coords.tolist() == [[10.0, 20.0]]
    t = torch.tensor([[10.0, 20.0]])
    ResizeLongestSide(1024).apply_coords_torch(t, (100, 200))
    assert t.tolist() == [[10.0, 20.0]]


def test_torch_image_resize_uses_height_and_width():
    # The official apply_image_torch reads the target size from the batch and channel dims; ours from H, W.
    image = torch.rand(2, 3, 300, 600)
    out = ResizeLongestSide(1024).apply_image_torch(image)
    assert out.shape == (2, 3, 512, 1024)
    ref = torch.tensor(ResizeLongestSide(1024).apply_image((image[0].permute(1, 2, 0) * 255).round().byte().numpy()))
    assert (out[0].permute(1, 2, 0) * 255 - ref.float()).abs().mean() < 2.0
