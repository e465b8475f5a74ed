"""SAM 2.1 hiera tiny and small at their real size (1024 input) against the official sam2, fp32.

Embedding images is the costly part, so each model embeds once per module: small one image
(``set_image`` + ``predict``), tiny a batch of two (``set_image_batch`` + ``predict_batch``); the two paths
share the prompt and decoding code. Many more cases run on a shrunk model in test_sam2_small.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from sam2.sam2_image_predictor import SAM2ImagePredictor as OfficialPredictor
from sam2_oracle import TOL, assert_same_prediction, make_sam2_pair, max_diff, prompt_cases

from samforge import SAM2ImagePredictor

pytestmark = pytest.mark.usefixtures("one_thread")
CASES = ["one_point", "points_single_mask", "box", "box_and_points", "mask_input", "boxes_batched"]


def random_image(seed: int, hw: tuple[int, int]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*hw, 3), dtype=np.uint8)


def assert_same_features(ours: dict, official: dict, batch: int) -> None:
    assert ours["image_embed"].shape == (batch, 256, 64, 64)
    assert max_diff(ours["image_embed"], official["image_embed"]) <= TOL
    assert [tuple(f.shape) for f in ours["high_res_feats"]] == [(batch, 32, 256, 256), (batch, 64, 128, 128)]
    for a, b in zip(ours["high_res_feats"], official["high_res_feats"]):
        assert max_diff(a, b) <= TOL


@pytest.fixture(scope="module")
def small_image_set():
    """hiera small: both predictors with the same weights and the same image set."""
    official, ours = make_sam2_pair("sam2.1_hiera_s", seed=0)
    image = random_image(1, (480, 640))
    p_official, p_ours = OfficialPredictor(official), SAM2ImagePredictor(ours)
    p_official.set_image(image)
    p_ours.set_image(image)
    return p_official, p_ours, image.shape[:2]


@pytest.fixture(scope="module")
def tiny_batch_set():
    """hiera tiny: both predictors with the same weights and the same two images set as a batch."""
    official, ours = make_sam2_pair("sam2.1_hiera_t", seed=2)
    images = [random_image(3, (300, 500)), random_image(4, (512, 384))]
    p_official, p_ours = OfficialPredictor(official), SAM2ImagePredictor(ours)
    p_official.set_image_batch(images)
    p_ours.set_image_batch(images)
    return p_official, p_ours, [im.shape[:2] for im in images]


def test_small_backbone_and_high_res_features(small_image_set):
    p_official, p_ours, _ = small_image_set
    assert_same_features(p_ours._features, p_official._features, batch=1)


@pytest.mark.parametrize("case", CASES)
def test_small_predict(small_image_set, case):
    p_official, p_ours, hw = small_image_set
    kwargs = prompt_cases(*hw, np.random.default_rng(CASES.index(case)))[case]
    ours = p_ours.predict(**kwargs)
    assert_same_prediction(ours, p_official.predict(**kwargs))
    assert ours[0].shape[-2:] == hw


def test_tiny_batch_backbone_and_high_res_features(tiny_batch_set):
    p_official, p_ours, _ = tiny_batch_set
    assert_same_features(p_ours._features, p_official._features, batch=2)


@pytest.mark.parametrize("calls", ["points|box+points", "box|mask"])
def test_tiny_predict_batch(tiny_batch_set, calls):
    p_official, p_ours, hws = tiny_batch_set
    rng = np.random.default_rng(5)
    cases = [prompt_cases(*hw, rng) for hw in hws]
    if calls == "points|box+points":
        kwargs = dict(
            point_coords_batch=[cases[0]["one_point"]["point_coords"], cases[1]["box_and_points"]["point_coords"]],
            point_labels_batch=[cases[0]["one_point"]["point_labels"], cases[1]["box_and_points"]["point_labels"]],
            box_batch=[None, cases[1]["box_and_points"]["box"]],
        )
    else:
        kwargs = dict(
            box_batch=[cases[0]["box"]["box"], cases[1]["box"]["box"]],
            mask_input_batch=[cases[0]["mask_input"]["mask_input"], cases[1]["mask_input"]["mask_input"]],
            multimask_output=False,
        )
    ours, official = p_ours.predict_batch(**kwargs), p_official.predict_batch(**kwargs)
    assert all(len(o) == 2 for o in ours)
    for i, hw in enumerate(hws):
        assert_same_prediction([o[i] for o in ours], [o[i] for o in official])
        assert ours[0][i].shape[-2:] == hw
