"""SamAutomaticMaskGenerator and its mask utilities against the official ``segment_anything`` ones.

Two kinds of parity: end to end with the small model (identical random weights in both), and with a
fake decoder patched into both predictors (masks that are local blobs of similar colour around each
point), which gives many overlapping, crop-edge-touching and holed masks so that every filter, both
NMS steps and the small-region postprocessing decide something.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from segment_anything import SamAutomaticMaskGenerator as OfficialGenerator
from segment_anything import SamPredictor as OfficialPredictor
from segment_anything.utils import amg as official_amg

from samforge import SamAutomaticMaskGenerator
from samforge.data.synthetic import make_scene
from samforge.predict import amg_utils as amg
from samforge.predict.predictor import SamPredictor

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools"),  # numpy 2 note inside decode
    pytest.mark.usefixtures("one_thread"),
]

HW = (200, 300)
RECORD_KEYS = {"segmentation", "area", "bbox", "predicted_iou", "point_coords", "stability_score", "crop_box"}


@pytest.fixture(scope="module")
def image():
    return make_scene(3, image_size=HW).image


# ------------------------------------------------------------------------------------------- helpers
def decode(record: dict) -> np.ndarray:
    seg = record["segmentation"]
    if isinstance(seg, np.ndarray):
        return seg
    if isinstance(seg["counts"], str):
        return mask_utils.decode(seg).astype(bool)
    return amg.rle_to_mask(seg)


def assert_masks_match(ours: list, official: list, min_iou: float = 0.99) -> None:
    """Same number of masks; each mask of one list has a mask in the other with IoU >= min_iou."""
    assert len(ours) == len(official), (len(ours), len(official))
    if not ours:
        return
    a = torch.tensor(np.stack([decode(r) for r in ours]).reshape(len(ours), -1), dtype=torch.float)
    b = torch.tensor(np.stack([decode(r) for r in official]).reshape(len(official), -1), dtype=torch.float)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))  # two empty masks match
    assert bool((iou.max(1).values >= min_iou).all()), "a mask of ours has no official counterpart"
    assert bool((iou.max(0).values >= min_iou).all()), "an official mask has no counterpart of ours"


def record_types(records: list) -> set:
    """The Python types of each record's area, bbox and crop_box values (as JSON / CSV writers see them)."""
    return {(type(r["area"]), *(type(v) for v in r["bbox"] + r["crop_box"])) for r in records}


def assert_same_records(ours: list, official: list, exact: bool) -> None:
    """Masks match (IoU), the records' types are the official ones (ints, or floats where the official gives
    floats); with ``exact`` also every field, record by record in the same order."""
    assert_masks_match(ours, official)
    for r in ours:
        assert set(r) == RECORD_KEYS
        assert isinstance(r["area"], int)
    assert record_types(ours) == record_types(official)
    if exact:
        for r, o in zip(ours, official):
            assert np.array_equal(decode(r), decode(o))
            assert {k: v for k, v in r.items() if k != "segmentation"} == {
                k: v for k, v in o.items() if k != "segmentation"}
    else:  # same records, possibly reordered where scores tie within float noise
        key = lambda r: (r["crop_box"], r["point_coords"], r["bbox"], r["area"])  # noqa: E731
        for r, o in zip(sorted(ours, key=key), sorted(official, key=key)):
            assert (r["crop_box"], r["point_coords"], r["bbox"]) == (o["crop_box"], o["point_coords"], o["bbox"])
            assert abs(r["area"] - o["area"]) <= 0.01 * max(o["area"], 1)
            assert r["predicted_iou"] == pytest.approx(o["predicted_iou"], abs=1e-4)
            assert r["stability_score"] == pytest.approx(o["stability_score"], abs=1e-2, nan_ok=True)


def run_both(official_model, our_model, image, **kwargs):
    ours = SamAutomaticMaskGenerator(our_model, **kwargs).generate(image)
    official = OfficialGenerator(official_model, **kwargs).generate(image)
    return ours, official


# ------------------------------------------------------------------------- end to end, real model
LOW = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(points_per_side=8, points_per_batch=50, box_nms_thresh=1.0, **LOW),  # every mask kept: 192
        dict(points_per_side=8, stability_score_thresh=0.3, stability_score_offset=0.05, pred_iou_thresh=0.0),
        dict(points_per_side=4, crop_n_layers=1, crop_n_points_downscale_factor=2, box_nms_thresh=1.0,
             crop_nms_thresh=0.9, **LOW),
        dict(points_per_side=6, min_mask_region_area=40, box_nms_thresh=1.0, **LOW),
    ],
    ids=["no_nms", "nms_and_stability", "crop_layer", "small_regions"],
)
def test_real_model_matches_official(small_pair, image, kwargs):
    official_model, our_model = small_pair
    ours, official = run_both(official_model, our_model, image, **kwargs)
    assert len(official) > 0
    assert_same_records(ours, official, exact=False)


def _plain_decode(model, embedding, coords):
    """The decoder's own forward for positive points ``B x 2`` (input frame): multimask logits and IoUs."""
    labels = torch.ones(coords.shape[0], 1, dtype=torch.int)
    sparse, dense = model.prompt_encoder(points=(coords[:, None, :], labels), boxes=None, masks=None)
    return model.mask_decoder(image_embeddings=embedding,
                              image_pe=model.prompt_encoder.get_dense_pe(), sparse_prompt_embeddings=sparse,
                              dense_prompt_embeddings=dense, multimask_output=True)


@pytest.mark.parametrize("lora", [False, True], ids=["plain", "lora_decoder"])
def test_grid_decoder_matches_mask_decoder(small_pair, lora):
    """The re-associated grid decoder gives the decoder's IoUs and low-res logits (to float rounding), also
    with LoRA adapters on the decoder's attention, and for any subset of a batch's prompts."""
    import copy

    from samforge.models.lora import LoraConfig, add_lora
    from samforge.predict.automatic_mask_generator import GridDecoder

    model = copy.deepcopy(small_pair[1])
    if lora:
        add_lora(model, LoraConfig(rank=2, decoder=True))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.2, generator=torch.Generator().manual_seed(len(name)))
    g = torch.Generator().manual_seed(0)
    size = model.image_encoder.img_size
    grid = model.prompt_encoder.image_embedding_size
    embedding = torch.randn(1, model.prompt_encoder.embed_dim, *grid, generator=g)
    coords = torch.rand(37, 2, generator=g) * torch.tensor([size, size * 0.75])  # three decoding chunks
    with torch.no_grad():
        logits, iou = _plain_decode(model, embedding, coords)
        decoder = GridDecoder(model, embedding)
        assert GridDecoder.supports(model)
        our_iou, state = decoder.tokens(coords)
        idx = torch.tensor([0, 3, 4, 5, 12, 20, 36])
        our_logits = decoder.low_res_masks(state, idx)
        best = iou.max(1).values.sort().values
        thresh = float(best[18] + best[19]) / 2  # half the prompts have a mask above it, none at it
        all_iou, prompts, kept_logits = decoder.decode(coords, thresh)
    torch.testing.assert_close(our_iou, iou, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(our_logits, logits[idx], atol=1e-4, rtol=1e-5)
    assert ((our_logits > 0) == (logits[idx] > 0)).float().mean() > 0.9999
    torch.testing.assert_close(all_iou, iou, atol=1e-5, rtol=1e-5)
    assert prompts.tolist() == (iou > thresh).any(1).nonzero().flatten().tolist() and 0 < len(prompts) < 37
    torch.testing.assert_close(kept_logits, logits[prompts], atol=1e-4, rtol=1e-5)


def _generate(model, image, decoder_mode: str, **kwargs) -> list:
    gen = SamAutomaticMaskGenerator(model, **kwargs)
    gen.predictor.decoder_mode = decoder_mode
    return gen.generate(image)


def test_decoder_modes_give_the_same_masks(small_pair, image):
    """The folded grid decoder (the fast precisions') gives the exact decoder's masks to float rounding, and a
    decoder of other layers, decoded the plain way (the module's forward), exactly its records."""
    _, our_model = small_pair
    kwargs = dict(points_per_side=6, box_nms_thresh=1.0, **LOW)
    exact = _generate(our_model, image, "exact", **kwargs)
    assert len(exact) == 108
    assert_same_records(_generate(our_model, image, "folded", **kwargs), exact, exact=False)
    assert_same_records(_generate(our_model, image, "module", **kwargs), exact, exact=True)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(points_per_side=8, box_nms_thresh=1.0, **LOW),  # all 192 masks, none dropped
        dict(points_per_side=7, points_per_batch=20, box_nms_thresh=1.0, **LOW),  # batches of 20 and a last of 9
        dict(points_per_side=4, crop_n_layers=1, crop_n_points_downscale_factor=2, box_nms_thresh=1.0,
             crop_nms_thresh=0.9, **LOW),
        dict(points_per_side=8, pred_iou_thresh=0.2, stability_score_thresh=0.0, box_nms_thresh=0.9),
    ],
    ids=["every_mask", "batches_and_nms", "crop_layer", "iou_filter"],
)
def test_fp32_generator_is_bit_exact_with_official(small_pair, image, kwargs):
    """precision "fp32" (the default) gives the official records bit for bit: the same masks, predicted IoUs and
    stability scores, in the same order, with the same types."""
    official_model, our_model = small_pair
    ours, official = run_both(official_model, our_model, image, **kwargs)
    assert len(official) > 0
    if len(official) > 1:  # masks of different sizes: not all empty or all full
        assert len({r["area"] for r in official}) > 1
    assert_same_records(ours, official, exact=True)
    for r, o in zip(ours, official):
        assert r["predicted_iou"] == o["predicted_iou"] and r["stability_score"] == o["stability_score"]


def test_crop_box_types_follow_the_official(small_pair, image):
    """With crops, a crop without masks makes the official crop_box column (and so every record's crop_box)
    float; a batch without a stable mask does the same to bbox. The records' types are the official ones."""
    official_model, our_model = small_pair
    kwargs = dict(points_per_side=4, crop_n_layers=1, box_nms_thresh=1.0, crop_nms_thresh=0.9, **LOW)
    ours, official = run_both(official_model, our_model, image, **kwargs)
    assert record_types(official) == {(int, int, int, int, int, float, float, float, float)}  # the case at hand
    assert record_types(ours) == record_types(official)
    kwargs = dict(points_per_side=4, points_per_batch=1, pred_iou_thresh=0.0, stability_score_thresh=0.6,
                  stability_score_offset=0.05, box_nms_thresh=1.0)  # one point a batch: some batches keep no mask
    ours, official = run_both(official_model, our_model, image, **kwargs)
    assert record_types(official) == {(int, float, float, float, float, int, int, int, int)}  # the case at hand
    assert record_types(ours) == record_types(official)
    assert_same_records(ours, official, exact=True)


# ------------------------------------------------------------------------- fake decoder, both sides
def _fake_set_image(self, image, image_format="RGB"):
    self.reset_image()
    self._fake_image = torch.as_tensor(np.ascontiguousarray(image), dtype=torch.float32)
    self.original_size = tuple(image.shape[:2])
    self.input_size = tuple(self.transform.get_preprocess_shape(*image.shape[:2], self.transform.target_length))
    self.features = torch.zeros(1)
    self.is_image_set = True


def _fake_low_res(predictor, point_coords):
    """Three low-res mask logits per point (``B x 3 x 256 x 256`` over the padded input frame, as the decoder
    returns them) and IoU predictions ``B x 3``: a small, a middle and a large blob of colours like the
    point's. ``point_coords``: ``B x 2`` in the resized input frame."""
    h, w = predictor.original_size
    nh, nw = predictor.input_size
    img = predictor._fake_image
    size = predictor.transform.target_length
    low = predictor.model.prompt_encoder.mask_input_size[0]
    x = point_coords[:, 0].float() * (w / nw)
    y = point_coords[:, 1].float() * (h / nh)
    colour = img[y.long().clamp(0, h - 1), x.long().clamp(0, w - 1)]  # B x 3
    # each low-res pixel's centre in the original image (outside it, the nearest edge pixel's colour)
    centres = (torch.arange(low, dtype=torch.float) + 0.5) * (size / low)
    yy = (centres * (h / nh))[None, :, None]
    xx = (centres * (w / nw))[None, None, :]
    sample = img[yy[0, :, 0].long().clamp(0, h - 1)][:, xx[0, 0].long().clamp(0, w - 1)]  # low x low x 3
    colour_d = (sample[None] - colour[:, None, None]).abs().sum(-1)  # B x low x low
    space_d = ((xx - x[:, None, None]) ** 2 + (yy - y[:, None, None]) ** 2).sqrt() / max(h, w)
    logits = 4 * torch.stack(
        [4 - colour_d / 15 - space_d * 12, 4 - colour_d / 25 - space_d * 6, 3 - colour_d / 60 - space_d * 3], dim=1
    )
    frac = (logits > 0).float().mean((-1, -2))
    iou = 0.55 + 0.4 * frac + 0.05 * (x / w)[:, None] - torch.tensor([0.0, 0.05, 0.1])
    return logits, iou


def _fake_predict_torch(self, point_coords, point_labels, boxes=None, mask_input=None, multimask_output=True,
                        return_logits=False):
    """The official predictor's decoding replaced by ``_fake_low_res``; its upsampling is its own."""
    logits, iou = _fake_low_res(self, point_coords[:, 0, :])
    if not multimask_output:
        logits, iou = logits[:, :1], iou[:, :1]
    masks = self.model.postprocess_masks(logits, self.input_size, self.original_size)
    return (masks if return_logits else masks > 0), iou, logits


def _fake_decode_points(self, coords, iou_thresh):
    """Our generator's decoding replaced by the same ``_fake_low_res``; the rest (IoU filter, upsampling,
    stability, boxes, RLEs, NMS, small regions) is ours. Returns what ``_decode_points`` does: the IoUs,
    the prompts with a mask above ``iou_thresh`` (all when None) and their low-res logits."""
    logits, iou = _fake_low_res(self.predictor, coords)
    wanted = (iou > iou_thresh).any(1) if iou_thresh is not None else torch.ones(len(iou), dtype=torch.bool)
    prompts = wanted.nonzero().flatten()
    return iou, prompts, logits[prompts]


@pytest.fixture
def fake_decoder(monkeypatch):
    for cls in (SamPredictor, OfficialPredictor):
        monkeypatch.setattr(cls, "set_image", _fake_set_image)
    monkeypatch.setattr(OfficialPredictor, "predict_torch", _fake_predict_torch)
    monkeypatch.setattr(SamAutomaticMaskGenerator, "_decode_points", _fake_decode_points)


FAKE = dict(points_per_side=10, pred_iou_thresh=0.6, stability_score_thresh=0.6)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(crop_n_layers=1, points_per_batch=37),
        dict(crop_n_layers=2, crop_n_points_downscale_factor=2, crop_overlap_ratio=0.25),
        dict(min_mask_region_area=60),
        dict(crop_n_layers=1, min_mask_region_area=200, box_nms_thresh=0.5, crop_nms_thresh=0.6),
        dict(point_grids=[np.random.default_rng(0).random((30, 2)), np.random.default_rng(1).random((12, 2))],
             points_per_side=None, crop_n_layers=1),
    ],
    ids=["whole_image", "crop_layer", "two_layers", "small_regions", "crops_and_regions", "point_grids"],
)
def test_fake_decoder_matches_official_exactly(fake_decoder, small_pair, image, kwargs):
    official_model, our_model = small_pair
    ours, official = run_both(official_model, our_model, image, **{**FAKE, **kwargs})
    assert len(official) >= 5
    assert_same_records(ours, official, exact=True)


def test_fake_decoder_exercises_every_step(fake_decoder, small_pair, image):
    """The fake masks do overlap, touch crop edges and have small holes (else the parity above is weak)."""
    _, our_model = small_pair
    base = SamAutomaticMaskGenerator(our_model, **FAKE, box_nms_thresh=1.0).generate(image)
    nms = SamAutomaticMaskGenerator(our_model, **FAKE).generate(image)
    assert len(nms) < len(base)
    crops = SamAutomaticMaskGenerator(our_model, **FAKE, crop_n_layers=1, crop_nms_thresh=1.0).generate(image)
    assert {tuple(r["crop_box"]) for r in crops} != {(0, 0, HW[1], HW[0])}
    cleaned = SamAutomaticMaskGenerator(our_model, **FAKE, min_mask_region_area=60).generate(image)
    assert len(cleaned) <= len(nms)
    before = {tuple(r["point_coords"][0]): r["area"] for r in nms}
    assert any(before.get(tuple(r["point_coords"][0])) not in (None, r["area"]) for r in cleaned)


def test_output_modes_decode_to_same_masks(fake_decoder, small_pair, image):
    official_model, our_model = small_pair
    reference = SamAutomaticMaskGenerator(our_model, **FAKE).generate(image)
    assert len(reference) >= 5
    for mode in ("binary_mask", "uncompressed_rle", "coco_rle"):
        ours, official = run_both(official_model, our_model, image, **FAKE, output_mode=mode)
        assert len(ours) == len(reference)
        check_output_mode(ours, official, reference, mode)


def check_output_mode(ours: list, official: list, reference: list, mode: str) -> None:
    for r, o, ref in zip(ours, official, reference):
        seg = r["segmentation"]
        if mode == "binary_mask":
            assert isinstance(seg, np.ndarray) and seg.dtype == bool and seg.shape == HW
        else:
            assert seg == o["segmentation"]  # the same RLE (uncompressed lists or COCO strings)
            assert seg["size"] == list(HW)
            assert isinstance(seg["counts"], str if mode == "coco_rle" else list)
        assert np.array_equal(decode(r), ref["segmentation"])
        assert int(decode(r).sum()) == r["area"]


def test_no_masks_with_crops_gives_empty_list(fake_decoder, small_pair, image):
    # the official generator raises an IndexError here (no masks in any crop)
    _, our_model = small_pair
    gen = SamAutomaticMaskGenerator(our_model, points_per_side=4, pred_iou_thresh=1.0, crop_n_layers=1)
    assert gen.generate(image) == []


# ------------------------------------------------------------------------------------- image inputs
def test_grayscale_and_rgba_are_converted_with_a_warning(fake_decoder, small_pair, image):
    _, our_model = small_pair
    gen = SamAutomaticMaskGenerator(our_model, **{**FAKE, "points_per_side": 5})
    gray = image[..., 1].copy()
    with pytest.warns(UserWarning, match="grayscale"):
        got = gen.generate(gray)
    expected = gen.generate(np.repeat(gray[..., None], 3, axis=2))
    assert len(got) == len(expected) > 0
    assert all(np.array_equal(a["segmentation"], b["segmentation"]) for a, b in zip(got, expected))
    with pytest.warns(UserWarning, match="grayscale"):
        gen.generate(gray[..., None])
    rgba = np.concatenate([image, np.full((*HW, 1), 7, np.uint8)], axis=2)
    with pytest.warns(UserWarning, match="RGBA"):
        got = gen.generate(rgba)
    expected = gen.generate(image)
    assert len(got) == len(expected) > 0
    assert all(np.array_equal(a["segmentation"], b["segmentation"]) for a, b in zip(got, expected))


@pytest.mark.parametrize(
    "bad,err,words",
    [
        ([[1, 2, 3]], TypeError, "numpy array"),
        (np.zeros((20, 30, 3), np.float32), ValueError, "uint8"),
        (np.zeros((20, 30, 2), np.uint8), ValueError, "HxWx3"),
        (np.zeros((0, 30, 3), np.uint8), ValueError, "HxWx3"),
        (np.zeros((2, 20, 30, 3), np.uint8), ValueError, "HxWx3"),
    ],
)
def test_bad_images_raise(small_pair, bad, err, words):
    gen = SamAutomaticMaskGenerator(small_pair[1], points_per_side=2)
    with pytest.raises(err, match=words):
        gen.generate(bad)


# -------------------------------------------------------------------------------------- parameters
@pytest.mark.parametrize(
    "kwargs,err,words",
    [
        (dict(points_per_side=0), ValueError, "points_per_side"),
        (dict(points_per_side=-3), ValueError, "points_per_side"),
        (dict(points_per_side=4.0), TypeError, "points_per_side"),
        (dict(points_per_side=None), ValueError, "exactly one of points_per_side or point_grids"),
        (dict(point_grids=[np.full((4, 2), 0.5)]), ValueError, "exactly one of points_per_side or point_grids"),
        (dict(points_per_side=None, point_grids=[np.full((4, 2), 1.5)]), ValueError, r"point_grids\[0\]"),
        (dict(points_per_side=None, point_grids=[np.full((4, 3), 0.5)]), ValueError, "Nx2"),
        (dict(points_per_side=None, point_grids=[np.full((4, 2), 0.5)], crop_n_layers=1), ValueError,
         "one grid per crop layer"),
        (dict(points_per_side=None, point_grids=np.full((4, 2), 0.5)), TypeError, "list of Nx2"),
        (dict(points_per_batch=0), ValueError, "points_per_batch"),
        (dict(pred_iou_thresh=1.5), ValueError, r"pred_iou_thresh must be a number in \[0.0, 1.0\], got 1.5"),
        (dict(pred_iou_thresh=-0.1), ValueError, "pred_iou_thresh"),
        (dict(pred_iou_thresh="0.5"), TypeError, "pred_iou_thresh"),
        (dict(stability_score_thresh=2), ValueError, "stability_score_thresh"),
        (dict(stability_score_offset=float("nan")), ValueError, "stability_score_offset"),
        (dict(box_nms_thresh=1.01), ValueError, "box_nms_thresh"),
        (dict(crop_nms_thresh=-1), ValueError, "crop_nms_thresh"),
        (dict(crop_overlap_ratio=1.2), ValueError, "crop_overlap_ratio"),
        (dict(crop_n_layers=-1), ValueError, "crop_n_layers"),
        (dict(crop_n_layers=True), TypeError, "crop_n_layers"),
        (dict(crop_n_points_downscale_factor=0), ValueError, "crop_n_points_downscale_factor"),
        (dict(points_per_side=4, crop_n_layers=2, crop_n_points_downscale_factor=4), ValueError, "0 points per side"),
        (dict(min_mask_region_area=-5), ValueError, "min_mask_region_area"),
        (dict(output_mode="rle"), ValueError, r"output_mode must be one of .*got 'rle'"),
    ],
)
def test_bad_parameters_raise(small_pair, kwargs, err, words):
    with pytest.raises(err, match=words):
        SamAutomaticMaskGenerator(small_pair[1], **kwargs)


def test_bad_model_raises(small_pair):
    with pytest.raises(TypeError, match="samforge Sam"):
        SamAutomaticMaskGenerator(small_pair[0])  # the official model is not ours


def test_coco_rle_without_pycocotools_raises(small_pair, monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    monkeypatch.setitem(sys.modules, "pycocotools.mask", None)
    with pytest.raises(ImportError, match="pycocotools"):
        SamAutomaticMaskGenerator(small_pair[1], output_mode="coco_rle")
    SamAutomaticMaskGenerator(small_pair[1], output_mode="uncompressed_rle")  # the other modes need no pycocotools


def test_exported_from_package():
    import samforge
    import samforge.predict

    assert samforge.SamAutomaticMaskGenerator is samforge.predict.SamAutomaticMaskGenerator is SamAutomaticMaskGenerator


# ---------------------------------------------------------------------------------------- utilities
def random_masks(rng: np.random.Generator, b: int, h: int, w: int) -> np.ndarray:
    """Random masks of several kinds: noise, blobs, empty, full, first pixel set."""
    noise = rng.random((b, h, w)) < rng.uniform(0.05, 0.95, (b, 1, 1))
    yy, xx = np.mgrid[:h, :w]
    cy, cx, r = rng.uniform(0, h, (b, 1, 1)), rng.uniform(0, w, (b, 1, 1)), rng.uniform(1, max(h, w), (b, 1, 1))
    blobs = (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
    masks = np.where(np.arange(b)[:, None, None] % 2 == 0, noise, blobs)
    masks[0] = False
    if b > 1:
        masks[1] = True
    if b > 2:
        masks[2, 0, 0] = True
    return masks


@pytest.mark.parametrize("b,h,w", [(7, 23, 31), (5, 1, 9), (4, 8, 1), (3, 1, 1), (6, 64, 48)])
def test_rle_round_trip_and_matches_pycocotools(b, h, w):
    rng = np.random.default_rng(b * 1000 + h * 10 + w)
    masks = random_masks(rng, b, h, w)
    rles = amg.mask_to_rle(torch.from_numpy(masks))
    assert rles == official_amg.mask_to_rle_pytorch(torch.from_numpy(masks))
    assert len(rles) == b
    for mask, rle in zip(masks, rles):
        assert rle["size"] == [h, w] and all(isinstance(c, int) for c in rle["counts"])
        assert np.array_equal(amg.rle_to_mask(rle), mask)
        assert amg.area_from_rle(rle) == int(mask.sum())
        coco = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert amg.coco_encode_rle(rle)["counts"] == coco["counts"].decode()
        assert np.array_equal(mask_utils.decode(amg.coco_encode_rle(rle)).astype(bool), mask)
    assert amg.mask_to_rle(torch.zeros(0, h, w, dtype=torch.bool)) == []


def test_rle_input_checks():
    with pytest.raises(TypeError, match="bool"):
        amg.mask_to_rle(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="BxHxW"):
        amg.mask_to_rle(torch.zeros(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="sum to h \\* w = 12"):
        amg.rle_to_mask({"size": [3, 4], "counts": [5, 6]})
    with pytest.raises(TypeError, match="compressed"):
        amg.rle_to_mask({"size": [3, 4], "counts": "abc"})
    with pytest.raises(ValueError, match="non-negative ints"):
        amg.area_from_rle({"size": [1, 2], "counts": [3, -1]})
    with pytest.raises(TypeError, match="dict"):
        amg.rle_to_mask([1, 2])


def test_mask_utilities_match_official():
    rng = np.random.default_rng(0)
    masks = torch.from_numpy(random_masks(rng, 9, 20, 27))
    assert torch.equal(amg.batched_mask_to_box(masks), official_amg.batched_mask_to_box(masks))
    assert torch.equal(amg.batched_mask_to_box(masks.reshape(3, 3, 20, 27)),
                       official_amg.batched_mask_to_box(masks.reshape(3, 3, 20, 27)))
    assert torch.equal(amg.batched_mask_to_box(masks[3]), official_amg.batched_mask_to_box(masks[3]))
    logits = torch.randn(6, 20, 27, generator=torch.Generator().manual_seed(0)) * 3
    for thr, off in [(0.0, 1.0), (0.5, 0.25)]:
        torch.testing.assert_close(amg.calculate_stability_score(logits, thr, off),
                                   official_amg.calculate_stability_score(logits, thr, off), equal_nan=True)
    for mask in random_masks(rng, 8, 30, 40):
        for mode in ("holes", "islands"):
            for area in (1, 5, 30, 2000):
                ours, changed = amg.remove_small_regions(mask, area, mode)
                theirs, theirs_changed = official_amg.remove_small_regions(mask, area, mode)
                assert changed == theirs_changed and np.array_equal(ours, theirs), (mode, area)
    boxes = torch.tensor([[0, 0, 10, 10], [25, 3, 40, 19], [5, 5, 60, 35]])
    for crop in ([0, 0, 60, 40], [20, 0, 60, 40], [10, 10, 50, 30]):
        assert torch.equal(amg.is_box_near_crop_edge(boxes, crop, [0, 0, 60, 40]),
                           official_amg.is_box_near_crop_edge(boxes, crop, [0, 0, 60, 40]))
        assert torch.equal(amg.uncrop_boxes_xyxy(boxes, crop), official_amg.uncrop_boxes_xyxy(boxes, crop))
        pts = torch.rand(5, 2, dtype=torch.float64)
        assert torch.equal(amg.uncrop_points(pts, crop), official_amg.uncrop_points(pts, crop))
        m = torch.from_numpy(random_masks(rng, 3, crop[3] - crop[1], crop[2] - crop[0]))
        assert torch.equal(amg.uncrop_masks(m, crop, 40, 60), official_amg.uncrop_masks(m, crop, 40, 60))
    assert amg.box_xyxy_to_xywh(np.array([3, 4, 10, 20])).tolist() == [3, 4, 7, 16]
    assert torch.equal(amg.box_xyxy_to_xywh(boxes), torch.stack([official_amg.box_xyxy_to_xywh(b) for b in boxes]))


@pytest.mark.parametrize("hw", [(200, 300), (1500, 2250), (97, 411), (64, 64)])
@pytest.mark.parametrize("layers,ratio", [(0, 512 / 1500), (1, 512 / 1500), (3, 0.25), (2, 0.0)])
def test_crop_boxes_and_grids_match_official(hw, layers, ratio):
    assert amg.generate_crop_boxes(hw, layers, ratio) == official_amg.generate_crop_boxes(hw, layers, ratio)
    for n, scale in [(32, 1), (16, 2), (7, 2)]:
        if int(n / scale ** layers) >= 1:
            ours = amg.build_all_layer_point_grids(n, layers, scale)
            theirs = official_amg.build_all_layer_point_grids(n, layers, scale)
            assert len(ours) == len(theirs)
            assert all(np.array_equal(a, b) for a, b in zip(ours, theirs))


def test_mask_data_filter_and_cat():
    d = amg.MaskData(a=torch.arange(4), b=np.arange(4) * 10, c=["w", "x", "y", "z"])
    d.cat(amg.MaskData(a=torch.tensor([4]), b=np.array([40]), c=["v"]))
    assert len(d) == 5
    d.filter(torch.tensor([True, False, True, False, True]))
    assert d["a"].tolist() == [0, 2, 4] and d["b"].tolist() == [0, 20, 40] and d["c"] == ["w", "y", "v"]
    d.filter(torch.tensor([2, 0]))
    assert d["a"].tolist() == [4, 0] and d["b"].tolist() == [40, 0] and d["c"] == ["v", "w"]
    d.to_numpy()
    assert isinstance(d["a"], np.ndarray)
    with pytest.raises(TypeError, match="list, numpy array or torch tensor"):
        d["e"] = 3
    with pytest.raises(ValueError, match="keep has 3 entries"):
        d.filter(torch.tensor([True, False, True]))


def test_utility_input_checks():
    with pytest.raises(ValueError, match="n_per_side"):
        amg.build_point_grid(0)
    with pytest.raises(ValueError, match="im_size"):
        amg.generate_crop_boxes((0, 10), 1, 0.3)
    with pytest.raises(ValueError, match="overlap_ratio"):
        amg.generate_crop_boxes((10, 10), 1, 1.5)
    with pytest.raises(ValueError, match="mode must be 'holes' or 'islands', got 'both'"):
        amg.remove_small_regions(np.zeros((4, 4), bool), 3, "both")
    with pytest.raises(ValueError, match="bool array"):
        amg.remove_small_regions(np.zeros((4, 4), np.uint8), 3, "holes")
    with pytest.raises(TypeError, match="bool tensor"):
        amg.batched_mask_to_box(torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="crop_box"):
        amg.uncrop_boxes_xyxy(torch.zeros(2, 4), [1, 2, 3])
    with pytest.raises(ValueError, match="Nx4"):
        amg.is_box_near_crop_edge(torch.zeros(2, 3), [0, 0, 4, 4], [0, 0, 4, 4])
    with pytest.raises(ValueError, match="to fit crop_box"):
        amg.uncrop_masks(torch.zeros(2, 4, 4, dtype=torch.bool), [0, 0, 5, 5], 10, 10)
    with pytest.raises(ValueError, match="same length"):
        list(amg.batch_iterator(2, [1, 2, 3], [1, 2]))
    assert list(amg.batch_iterator(2, [1, 2, 3])) == [[[1, 2]], [[3]]]

