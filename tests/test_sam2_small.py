"""A shrunk SAM 2.1 tiny (256 input, narrow trunk; the heads and memory modules at their official sizes)
against the official classes built from the same config: many prompt cases, image sizes and seeds, the
SAM heads, the memory modules and bf16 autocast, in little time."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sam2.sam2_image_predictor import SAM2ImagePredictor as OfficialPredictor
from sam2_oracle import SMALL_OVERRIDES, assert_same_prediction, make_sam2_pair, prompt_cases

from samforge import SAM2ImagePredictor

NAME = "sam2.1_hiera_t"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small_pair():
    return make_sam2_pair(NAME, seed=11, overrides=SMALL_OVERRIDES)


def predictors(official, ours):
    p_official, p_ours = OfficialPredictor(official), SAM2ImagePredictor(ours)
    s = official.image_size  # the official predictor assumes a 1024 input here
    p_official._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
    return p_official, p_ours


@pytest.mark.parametrize("seed,hw", [(4, (180, 300)), (5, (411, 97)), (6, (37, 53))])
def test_predict_matches_official(small_pair, seed, hw):
    official, ours = small_pair
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    p_official, p_ours = predictors(official, ours)
    p_official.set_image(image)
    p_ours.set_image(image)
    for a, b in zip([p_ours._features["image_embed"], *p_ours._features["high_res_feats"]],
                    [p_official._features["image_embed"], *p_official._features["high_res_feats"]]):
        assert torch.equal(a, b)
    for name, kwargs in prompt_cases(*hw, rng, low_res=64).items():
        ours_out, official_out = p_ours.predict(**kwargs), p_official.predict(**kwargs)
        assert_same_prediction(ours_out, official_out, kwargs.get("return_logits", False))
        assert ours_out[0].shape[-2:] == hw, name


def test_no_prompt_and_corner_labels(small_pair):
    official, ours = small_pair
    image = np.random.default_rng(7).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    p_official, p_ours = predictors(official, ours)
    p_official.set_image(image)
    p_ours.set_image(image)
    assert_same_prediction(p_ours.predict(), p_official.predict())
    corners = dict(point_coords=np.array([[10.0, 12.0], [90.0, 100.0], [50, 60]]), point_labels=np.array([2, 3, 1]))
    assert_same_prediction(p_ours.predict(**corners), p_official.predict(**corners))
    coords = np.random.default_rng(8).uniform(0, 100, (3, 2, 2))
    batched = dict(point_coords=coords, point_labels=np.array([[1, 0]] * 3))
    assert_same_prediction(p_ours.predict(**batched), p_official.predict(**batched))


def test_bf16_autocast_matches_official(small_pair):
    """Under bf16 autocast both run the same reduced-precision operations."""
    official, ours = small_pair
    image = np.random.default_rng(9).integers(0, 256, (200, 240, 3), dtype=np.uint8)
    p_official, p_ours = predictors(official, ours)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        p_official.set_image(image)
        p_ours.set_image(image)
        kwargs = dict(point_coords=np.array([[120.0, 80.0]]), point_labels=np.array([1]))
        ours_out, official_out = p_ours.predict(**kwargs), p_official.predict(**kwargs)
    assert p_ours._features["image_embed"].dtype == p_official._features["image_embed"].dtype
    assert_same_prediction(ours_out, official_out)


def test_forward_sam_heads(small_pair):
    """SAM2Base's no-memory decoding path with points, a full-size mask prompt, single and multimask."""
    official, ours = small_pair
    torch.manual_seed(0)
    image = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        feats = []
        for model in (official, ours):
            _, vision_feats, _, sizes = model._prepare_backbone_features(model.forward_image(image))
            feats.append([f.permute(1, 2, 0).reshape(2, -1, *s) for f, s in zip(vision_feats, sizes)])
        for a, b in zip(*feats):
            assert torch.equal(a, b)
        points = {"point_coords": torch.rand(2, 3, 2) * 256, "point_labels": torch.tensor([[1, 0, 1], [1, 1, 0]])}
        masks = (torch.rand(2, 1, 256, 256) > 0.5).float()
        cases = (dict(point_inputs=points, multimask_output=True), dict(mask_inputs=masks, multimask_output=False))
        for kwargs in cases:
            outs = [
                model._forward_sam_heads(backbone_features=f[-1], high_res_features=f[:-1], **kwargs)
                for model, f in zip((official, ours), feats)
            ]
            for a, b in zip(*outs):
                assert torch.equal(a, b)


def test_memory_attention_and_encoder(small_pair):
    """The memory modules (run by video tracking) on a 16x16 grid with two memories and 4 object pointers."""
    official, ours = small_pair
    torch.manual_seed(1)
    hw, b = 16 * 16, 2
    curr, curr_pos = torch.randn(hw, b, 256), torch.randn(hw, b, 256)
    memory, memory_pos = torch.randn(2 * hw + 4, b, 64), torch.randn(2 * hw + 4, b, 64)
    pix_feat, mask = torch.randn(b, 256, 16, 16), torch.randn(b, 1, 256, 256)
    with torch.no_grad():
        outs = [
            m.memory_attention(curr=curr, curr_pos=curr_pos, memory=memory, memory_pos=memory_pos, num_obj_ptr_tokens=4)
            for m in (official, ours)
        ]
        assert torch.equal(*outs)
        enc = [m.memory_encoder(pix_feat, mask) for m in (official, ours)]
    assert torch.equal(enc[0]["vision_features"], enc[1]["vision_features"])
    assert torch.equal(enc[0]["vision_pos_enc"][0], enc[1]["vision_pos_enc"][0])


def test_positional_encodings(small_pair):
    official, ours = small_pair
    probe = torch.zeros(2, 1, 24, 40)
    assert torch.equal(
        ours.image_encoder.neck.position_encoding(probe), official.image_encoder.neck.position_encoding(probe)
    )
    assert torch.equal(ours.memory_encoder.position_encoding(probe), official.memory_encoder.position_encoding(probe))
    assert torch.equal(ours.sam_prompt_encoder.get_dense_pe(), official.sam_prompt_encoder.get_dense_pe())

