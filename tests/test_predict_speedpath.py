"""SamPredictor's prompt-decoding paths against the reference (the decoder module's forward + Sam.postprocess_masks,
``decoder_mode="module"``): "exact" (the fp32 default) bit for bit, "folded" (fp32-fast, bf16) within 1e-5 on
logits and IoU predictions, its binary masks differing only where the reference logit is within that of the
threshold. On the small configuration and on vit_b's decoder shapes (64 x 64 embedding, 1024 input)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import perturb_
from parity import prompt_cases, scale_mask_input

from samforge import SamPredictor
from samforge.models.build import build_sam
from samforge.models.configs import SAM_CONFIGS
from samforge.predict.predictor import DECODE_CHUNK, DECODER_MODES

LOGIT_TOL = 1e-5  # folded vs reference, absolute, on logits and IoU predictions
FLIP_MARGIN = 1e-4  # a folded mask pixel may differ only where the reference logit is within this of the threshold

pytestmark = pytest.mark.usefixtures("one_thread")  # many small decodes: OpenMP spinning on a shared CPU, not logic


def predictors(model, features: torch.Tensor, original_size: tuple[int, int]) -> dict[str, SamPredictor]:
    """One predictor per decoder mode, all on the same embedding (set directly: the encoder is not under test)."""
    out = {}
    for mode in DECODER_MODES:
        p = SamPredictor(model)
        p.decoder_mode = mode
        p.original_size = original_size
        p.input_size = p.transform.get_preprocess_shape(*original_size, model.image_encoder.img_size)
        p.features = features
        p.is_image_set = True
        out[mode] = p
    return out


def assert_paths_agree(preds: dict[str, SamPredictor], call, name: str) -> None:
    """``call(predictor)`` gives (masks, iou, low_res): "exact" equals the reference, "folded" is within tolerance."""
    ref = [torch.as_tensor(t) for t in call(preds["module"])]
    exact = [torch.as_tensor(t) for t in call(preds["exact"])]
    folded = [torch.as_tensor(t) for t in call(preds["folded"])]
    for what, a, b in zip(("masks", "iou", "low_res"), exact, ref):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{name} exact {what}: {a.dtype}{a.shape}"
        assert torch.equal(a, b), f"{name}: exact {what} differs from the reference"
    for what, a, b in zip(("masks", "iou", "low_res"), folded, ref):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{name} folded {what}: {a.dtype} {a.shape}"
        if a.dtype != torch.bool:
            diff = (a.double() - b.double()).abs().max().item()
            assert diff <= LOGIT_TOL, f"{name}: folded {what} differs by {diff}"
    flipped = folded[0] != ref[0]
    if ref[0].dtype == torch.bool and flipped.any():  # binary masks: a pixel may flip only where the logit is ~0
        logits = torch.as_tensor(call_logits(preds["module"], call))
        assert (logits[flipped].abs() <= FLIP_MARGIN).all(), f"{name}: a folded mask pixel flipped far from 0"
        assert flipped.float().mean().item() < 1e-4, f"{name}: {int(flipped.sum())} mask pixels flipped"


def call_logits(predictor: SamPredictor, call):
    """The same call with ``return_logits=True`` (the masks' logits)."""
    original = predictor.predict, predictor.predict_torch
    predictor.predict = lambda *a, **k: original[0](*a, **{**k, "return_logits": True})
    predictor.predict_torch = lambda *a, **k: original[1](*a, **{**k, "return_logits": True})
    try:
        return call(predictor)[0]
    finally:
        del predictor.predict, predictor.predict_torch


def batch_cases(rng: np.random.Generator, input_size: tuple[int, int], low_res: int) -> dict[str, dict]:
    """``predict_torch`` keyword sets in the resized frame (``input_size`` h, w), batches across decode chunks."""
    wh = np.array(input_size[::-1], dtype=float)

    def boxes(b: int) -> torch.Tensor:
        xy0 = rng.uniform(0, 0.5, (b, 2)) * wh
        return torch.tensor(np.concatenate([xy0, xy0 + rng.uniform(0.02, 0.45, (b, 2)) * wh], 1), dtype=torch.float)

    b = DECODE_CHUNK + 1
    coords = torch.tensor(rng.uniform(0, 1, (b, 3, 2)) * wh, dtype=torch.float)
    labels = torch.tensor(rng.integers(0, 2, (b, 3)), dtype=torch.int)
    masks = torch.tensor(rng.standard_normal((b, 1, low_res, low_res)) * 4, dtype=torch.float)
    return {
        "1 box": dict(boxes=boxes(1)),
        f"{b} boxes": dict(boxes=boxes(b)),
        f"{2 * DECODE_CHUNK + 3} boxes single mask": dict(boxes=boxes(2 * DECODE_CHUNK + 3), multimask_output=False),
        f"{b} boxes as Bx1x4, logits": dict(boxes=boxes(b)[:, None], return_logits=True),
        f"{b} point sets": dict(point_coords=coords, point_labels=labels),
        f"{b} point sets + boxes + masks": dict(point_coords=coords, point_labels=labels, boxes=boxes(b),
                                                mask_input=masks, multimask_output=False),
    }


def check_all_cases(preds: dict[str, SamPredictor], hw: tuple[int, int], seed: int, all_batches: bool = True) -> None:
    model = preds["module"].model
    low_res = model.prompt_encoder.mask_input_size[0]
    rng = np.random.default_rng(seed)
    for name, kwargs in prompt_cases(*hw, rng).items():
        kwargs = scale_mask_input(kwargs, low_res)
        assert_paths_agree(preds, lambda p: p.predict(**kwargs), name)
        multi = dict(kwargs, multimask_output=not kwargs.get("multimask_output", True))
        assert_paths_agree(preds, lambda p: p.predict(**multi), f"{name}, multimask {multi['multimask_output']}")
    for name, kwargs in batch_cases(rng, preds["module"].input_size, low_res).items():
        if all_batches or "single" not in name:
            assert_paths_agree(preds, lambda p: p.predict_torch(None, None, **kwargs) if "point_coords" not in kwargs
                               else p.predict_torch(**kwargs), name)


def perturbed(config: str, seed: int):
    torch.manual_seed(seed)
    model = build_sam(SAM_CONFIGS[config]).eval()
    perturb_(model, seed)
    return model


@pytest.fixture(scope="module")
def small():
    return perturbed("vit_small", seed=21)


@pytest.mark.parametrize("hw", [(180, 240), (256, 256), (97, 301)])
def test_small_config_paths_agree(small, hw):
    g = torch.Generator().manual_seed(hw[0])
    features = torch.randn(1, small.prompt_encoder.embed_dim, *small.prompt_encoder.image_embedding_size, generator=g)
    check_all_cases(predictors(small, features, hw), hw, seed=hw[1])


def test_vit_b_shapes_paths_agree():
    """vit_b's decoder at its real shapes (64 x 64 embedding, 256 x 256 low-res masks, 1024 input), a 600 x 800
    image (so the second resize runs) and a 768 x 1024 one (where it is skipped)."""
    model = perturbed("vit_b", seed=22)
    for hw, names in [((600, 800), ("one_point", "box_and_points", "mask_input")), ((768, 1024), ("points",))]:
        features = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(hw[0]))
        preds = predictors(model, features, hw)
        rng = np.random.default_rng(23)
        cases = prompt_cases(*hw, rng)
        for name in names:
            assert_paths_agree(preds, lambda p: p.predict(**cases[name]), f"{hw} {name}")
    kwargs = batch_cases(rng, preds["module"].input_size, 256)[f"{DECODE_CHUNK + 1} boxes"]  # across two chunks
    assert_paths_agree(preds, lambda p: p.predict_torch(None, None, **kwargs), f"{hw} boxes")


def test_defaults_per_precision(small):
    assert SamPredictor(small).decoder_mode == "exact"
    assert SamPredictor(small, precision="fp32-fast").decoder_mode == "folded"
    assert SamPredictor(small, precision="bf16").decoder_mode == "folded"
    p = SamPredictor(small)
    p.set_image(np.zeros((32, 32, 3), dtype=np.uint8))
    p.decoder_mode = "fast"
    with pytest.raises(ValueError, match="decoder_mode must be one of"):
        p.predict(point_coords=np.array([[5.0, 5.0]]), point_labels=np.array([1]))


def test_per_image_work_follows_weight_and_image_changes(small):
    """The image-side projections cached per image are recomputed after an in-place weight change (an optimizer
    step, load_state_dict) and after a new image."""
    model = copy.deepcopy(small)
    image = np.random.default_rng(24).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    point = dict(point_coords=np.array([[60.0, 50.0]]), point_labels=np.array([1]))
    preds = {mode: SamPredictor(model) for mode in DECODER_MODES}
    for mode, p in preds.items():
        p.decoder_mode = mode
        p.set_image(image)
    before = {mode: p.predict(**point)[2] for mode, p in preds.items()}
    with torch.no_grad():
        first = model.mask_decoder.transformer.layers[0]
        first.cross_attn_token_to_image.k_proj.weight.mul_(1.5)
        first.cross_attn_image_to_token.q_proj.bias.add_(0.3)
        model.prompt_encoder.no_mask_embed.weight.add_(0.2)
    after = {mode: p.predict(**point)[2] for mode, p in preds.items()}
    assert not np.allclose(after["module"], before["module"])
    np.testing.assert_array_equal(after["exact"], after["module"])
    np.testing.assert_allclose(after["folded"], after["module"], atol=LOGIT_TOL, rtol=0)
    other = image[::-1].copy()
    for p in preds.values():
        p.set_image(other)
    again = {mode: p.predict(**point)[2] for mode, p in preds.items()}
    np.testing.assert_array_equal(again["exact"], again["module"])
    np.testing.assert_allclose(again["folded"], again["module"], atol=LOGIT_TOL, rtol=0)


def test_decoder_with_lora_adapters(small):
    """LoRA adapters on the decoder's attention: "exact" runs the adapted layers, "folded" their merged weights."""
    from samforge.models.lora import LoraConfig, add_lora

    model = copy.deepcopy(small)
    add_lora(model, LoraConfig(rank=2, decoder=True))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(len(name)))
    pe = model.prompt_encoder
    features = torch.randn(1, pe.embed_dim, *pe.image_embedding_size, generator=torch.Generator().manual_seed(5))
    preds = predictors(model, features, (150, 200))
    kwargs = prompt_cases(150, 200, np.random.default_rng(25))["box_and_points"]
    assert_paths_agree(preds, lambda p: p.predict(**kwargs), "lora box_and_points")
