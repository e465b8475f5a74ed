"""SAM2AutomaticMaskGenerator against the official ``sam2`` one, holding identical weights.

Two kinds of parity: end to end with a shrunk SAM 2.1 tiny (256 input, random perturbed weights), and with a
fake prompt encoder + mask decoder patched into both models (masks: regions of similar image features around
each point, so with holes, specks, overlaps and crop-edge contacts), which makes every filter, both NMS steps,
the low-res small-region removal and the m2m refinement decide something. The official small-region step needs
a CUDA extension (it warns and skips it without one): the tests give it a CPU connected-components function.
"""

from __future__ import annotations

import sys
import warnings

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator as OfficialGenerator
from sam2.utils import misc as official_misc
from sam2.utils.transforms import SAM2Transforms as OfficialTransforms
from sam2_oracle import SMALL_OVERRIDES, make_sam2_pair

from samforge import SAM2AutomaticMaskGenerator
from samforge.data.synthetic import make_scene
from samforge.predict import amg_utils
from samforge.predict.sam2_automatic_mask_generator import fill_holes_and_sprinkles

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools"),  # numpy 2 note inside decode
    pytest.mark.usefixtures("one_thread"),
]

HW = (200, 300)
RECORD_KEYS = {"segmentation", "area", "bbox", "predicted_iou", "point_coords", "stability_score", "crop_box"}


@pytest.fixture(scope="module")
def pair():
    """(official, samforge) shrunk SAM 2.1 tiny with identical perturbed random weights."""
    return make_sam2_pair("sam2.1_hiera_t", seed=0, overrides=SMALL_OVERRIDES)


@pytest.fixture(scope="module")
def image():
    return make_scene(3, image_size=HW).image


def cpu_connected_components(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The official ``get_connected_components`` (a CUDA kernel) on CPU: for ``N x 1 x H x W`` binary masks,
    8-connected component labels (0 outside) and each pixel's component area (0 outside)."""
    m = mask.to(torch.uint8).cpu().numpy()
    labels = np.zeros(m.shape, np.int32)
    counts = np.zeros(m.shape, np.int32)
    for i in range(m.shape[0]):
        n, lab = cv2.connectedComponents(m[i, 0], connectivity=8)
        area = np.bincount(lab.ravel(), minlength=n)
        area[0] = 0
        labels[i, 0], counts[i, 0] = lab, area[lab]
    return torch.from_numpy(labels), torch.from_numpy(counts)


@pytest.fixture(autouse=True)
def official_connected_components(monkeypatch):
    monkeypatch.setattr(official_misc, "get_connected_components", cpu_connected_components)


def official_generator(model, **kwargs) -> OfficialGenerator:
    gen = OfficialGenerator(model, **kwargs)
    s = model.image_size  # the official predictor's feature sizes are those of a 1024 input
    gen.predictor._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
    return gen


def run_both(official_model, our_model, image, **kwargs) -> tuple[list, list]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        official = official_generator(official_model, **kwargs).generate(image)
        ours = SAM2AutomaticMaskGenerator(our_model, **kwargs).generate(image)
    skipped = [str(w.message) for w in caught if "Skipping the post-processing" in str(w.message)]
    assert not skipped, skipped  # the official small-region step ran (else the comparison is weak)
    return ours, official


# ------------------------------------------------------------------------------------------- helpers
def decode(record: dict) -> np.ndarray:
    seg = record["segmentation"]
    if isinstance(seg, np.ndarray):
        return seg
    if isinstance(seg["counts"], str):
        return mask_utils.decode(seg).astype(bool)
    return amg_utils.rle_to_mask(seg)


def mask_iou(ours: list, official: list) -> np.ndarray:
    a = torch.tensor(np.stack([decode(r) for r in ours]).reshape(len(ours), -1), dtype=torch.float)
    b = torch.tensor(np.stack([decode(r) for r in official]).reshape(len(official), -1), dtype=torch.float)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter)).numpy()


def record_types(records: list) -> set:
    """The Python types of each record's area, bbox and crop_box values (as JSON / CSV writers see them)."""
    return {(type(r["area"]), *(type(v) for v in r["bbox"] + r["crop_box"])) for r in records}


def assert_same_records(ours: list, official: list, exact: bool) -> None:
    """Same number of masks; each mask of one list has one in the other with IoU >= 0.99, and its record
    (same prompt point and crop) has the same bbox, area, point and crop box, predicted IoU and stability
    score within 1e-4. With ``exact``: every record identical, in the same order."""
    assert len(ours) == len(official), (len(ours), len(official))
    for r in ours:
        assert set(r) == RECORD_KEYS
        assert isinstance(r["area"], int) and all(isinstance(v, float) for v in r["point_coords"][0])
    assert record_types(ours) == record_types(official)  # bbox and crop_box floats, as the official's
    if not ours:
        return
    iou = mask_iou(ours, official)
    assert bool((iou.max(1) >= 0.99).all()), "a mask of ours has no official counterpart"
    assert bool((iou.max(0) >= 0.99).all()), "an official mask has no counterpart of ours"
    for a, b, ious in ((ours, official, iou), (official, ours, iou.T)):
        for i, r in enumerate(a):
            same_prompt = [j for j, o in enumerate(b)
                           if o["point_coords"] == r["point_coords"] and o["crop_box"] == r["crop_box"]]
            assert same_prompt, f"no counterpart with point {r['point_coords']} in crop {r['crop_box']}"
            j = max(same_prompt, key=lambda j: ious[i, j])
            o = b[j]
            assert ious[i, j] >= 0.99, f"mask IoU {ious[i, j]} with its counterpart (point {r['point_coords']})"
            assert (r["bbox"], r["area"]) == (o["bbox"], o["area"])
            assert r["predicted_iou"] == pytest.approx(o["predicted_iou"], abs=1e-4)
            assert r["stability_score"] == pytest.approx(o["stability_score"], abs=1e-4, nan_ok=True)
    if exact:
        for r, o in zip(ours, official):
            assert np.array_equal(decode(r), decode(o))
            assert {k: v for k, v in r.items() if k != "segmentation"} == {
                k: v for k, v in o.items() if k != "segmentation"}


# ------------------------------------------------------------------------- end to end, real model
LOW = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(points_per_side=8, box_nms_thresh=1.0, **LOW),  # every mask kept: 192
        dict(points_per_side=6, points_per_batch=10, use_m2m=True, box_nms_thresh=1.0, **LOW),
        dict(points_per_side=4, crop_n_layers=1, box_nms_thresh=1.0, crop_nms_thresh=1.0, **LOW),
        dict(points_per_side=6, min_mask_region_area=30, box_nms_thresh=1.0, **LOW),
        dict(points_per_side=6, multimask_output=False, mask_threshold=-0.5, box_nms_thresh=1.0, **LOW),
    ],
    ids=["no_nms", "m2m", "crop_layer", "small_regions", "single_mask_threshold"],
)
def test_real_model_matches_official(pair, image, kwargs):
    official_model, our_model = pair
    ours, official = run_both(official_model, our_model, image, **kwargs)
    assert len(official) > 0
    assert_same_records(ours, official, exact=False)


def test_record_types_are_the_official_floats(pair, image):
    """The official SAM 2 generator turns every numeric column to float32 before making its records, so bbox and
    crop_box are floats (with crops or without): ours are the same types, and values."""
    official_model, our_model = pair
    kwargs = dict(points_per_side=4, crop_n_layers=1, box_nms_thresh=1.0, crop_nms_thresh=0.9, **LOW)
    ours, official = run_both(official_model, our_model, image, **kwargs)
    assert record_types(official) == {(int, *[float] * 8)} and len(official) > 0
    assert record_types(ours) == record_types(official)
    key = lambda r: (r["crop_box"], r["point_coords"], r["bbox"])  # noqa: E731
    assert sorted(map(key, ours)) == sorted(map(key, official))


# ------------------------------------------------------------------------- fake decoder, both sides
def _fake_prompt_encoder(points=None, boxes=None, masks=None):
    coords, labels = points  # B x N x 2 in the model's input frame, B x N
    return torch.cat([coords, labels[..., None].float()], dim=-1), masks


def _fake_mask_decoder(image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
                       multimask_output, repeat_image, high_res_features=None):
    """Three masks per point: regions whose (centred, normalised) stride-4 features resemble the point's,
    tight / middle / loose, the tighter ones falling off faster with distance; m2m's mask input shifts them."""
    feats = high_res_features[0][0]  # C x h x w: the low-res mask size
    c, h, w = feats.shape
    feats = feats - feats.mean((1, 2), keepdim=True)
    feats = feats / feats.norm(dim=0, keepdim=True).clamp(min=1e-6)
    p = sparse_prompt_embeddings[:, 0, :2] / 4  # input frame (4x the low-res size) -> low-res pixels
    at = feats[:, p[:, 1].long().clamp(0, h - 1), p[:, 0].long().clamp(0, w - 1)].T  # B x C
    sim = torch.einsum("bc,chw->bhw", at, feats)
    yy = torch.arange(h, dtype=torch.float)[None, :, None]
    xx = torch.arange(w, dtype=torch.float)[None, None, :]
    dist = ((xx - p[:, 0, None, None]) ** 2 + (yy - p[:, 1, None, None]) ** 2).sqrt() / max(h, w)
    logits = 4 * torch.stack(
        [20 * (sim - 0.9) - 30 * dist, 15 * (sim - 0.8) - 12 * dist, 10 * (sim - 0.6) - 5 * dist], dim=1)
    if dense_prompt_embeddings is not None:
        logits = logits + 0.3 * dense_prompt_embeddings
    frac = (logits > 0).float().mean((-1, -2))
    iou = 0.5 + 0.4 * frac + 0.05 * (p[:, 0] / w)[:, None] - torch.tensor([0.0, 0.05, 0.1])
    if dense_prompt_embeddings is not None:
        iou = iou + 0.02
    if not multimask_output:
        logits, iou = logits[:, :1], iou[:, :1]
    return logits, iou, None, None


@pytest.fixture
def fake_decoder(pair, monkeypatch):
    for model in pair:
        monkeypatch.setattr(model.sam_prompt_encoder, "forward", _fake_prompt_encoder)
        monkeypatch.setattr(model.sam_mask_decoder, "forward", _fake_mask_decoder)


FAKE = dict(points_per_side=10, pred_iou_thresh=0.45, stability_score_thresh=0.7)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(crop_n_layers=1, points_per_batch=37),
        dict(crop_n_layers=2, points_per_side=8, crop_n_points_downscale_factor=2, crop_overlap_ratio=0.25),
        dict(min_mask_region_area=10),
        dict(use_m2m=True, points_per_batch=23),
        dict(crop_n_layers=1, min_mask_region_area=25, use_m2m=True, box_nms_thresh=0.5, crop_nms_thresh=0.6),
        dict(multimask_output=False, mask_threshold=1.5, pred_iou_thresh=0.4),
        dict(point_grids=[np.random.default_rng(0).random((30, 2)), np.random.default_rng(1).random((12, 2))],
             points_per_side=None, crop_n_layers=1),
    ],
    ids=["whole_image", "crop_layer", "two_layers", "small_regions", "m2m", "crops_regions_m2m",
         "single_mask_threshold", "point_grids"],
)
def test_fake_decoder_matches_official_exactly(fake_decoder, pair, image, kwargs):
    official_model, our_model = pair
    ours, official = run_both(official_model, our_model, image, **{**FAKE, **kwargs})
    assert len(official) >= 5
    assert_same_records(ours, official, exact=True)


def test_fake_decoder_exercises_every_step(fake_decoder, pair, image):
    """The fake masks do overlap, touch crop edges, have small holes and specks, and m2m changes them
    (else the parity above is weak)."""
    _, model = pair

    def gen(**kw):
        return SAM2AutomaticMaskGenerator(model, **{**FAKE, **kw}).generate(image)

    base = gen(box_nms_thresh=1.0)
    nms = gen()
    assert len(nms) < len(base)
    crops = gen(crop_n_layers=1, crop_nms_thresh=1.0)
    assert len({tuple(r["crop_box"]) for r in crops}) > 1
    assert len(gen(crop_n_layers=1)) < len(crops)
    cleaned = gen(min_mask_region_area=10)
    before = {tuple(r["point_coords"][0]): r["area"] for r in nms}
    assert any(before.get(tuple(r["point_coords"][0])) not in (None, r["area"]) for r in cleaned)
    refined = gen(use_m2m=True)
    assert {(tuple(r["point_coords"][0]), r["area"]) for r in refined} != {
        (tuple(r["point_coords"][0]), r["area"]) for r in nms}


def test_output_modes_decode_to_same_masks(fake_decoder, pair, image):
    official_model, our_model = pair
    reference = SAM2AutomaticMaskGenerator(our_model, **FAKE).generate(image)
    assert len(reference) >= 5
    for mode in ("binary_mask", "uncompressed_rle", "coco_rle"):
        ours, official = run_both(official_model, our_model, image, **FAKE, output_mode=mode)
        assert len(ours) == len(official) == len(reference)
        for r, o, ref in zip(ours, official, reference):
            seg = r["segmentation"]
            if mode == "binary_mask":
                assert isinstance(seg, np.ndarray) and seg.dtype == bool and seg.shape == HW
                assert np.array_equal(seg, o["segmentation"])
            else:
                assert seg == o["segmentation"]  # the same RLE (uncompressed lists or COCO strings)
                assert isinstance(seg["counts"], str if mode == "coco_rle" else list) and seg["size"] == list(HW)
            assert np.array_equal(decode(r), ref["segmentation"])
            assert int(decode(r).sum()) == r["area"]


def test_no_masks_with_crops_gives_empty_list(fake_decoder, pair, image):
    # the official generator raises an IndexError here (no masks in any crop)
    gen = SAM2AutomaticMaskGenerator(pair[1], points_per_side=4, pred_iou_thresh=1.0, crop_n_layers=1)
    assert gen.generate(image) == []


def test_grayscale_is_converted_with_a_warning(fake_decoder, pair, image):
    gen = SAM2AutomaticMaskGenerator(pair[1], **{**FAKE, "points_per_side": 5})
    gray = image[..., 1].copy()
    with pytest.warns(UserWarning, match="grayscale"):
        got = gen.generate(gray)
    expected = gen.generate(np.repeat(gray[..., None], 3, axis=2))
    assert len(got) == len(expected) > 0
    assert all(np.array_equal(a["segmentation"], b["segmentation"]) for a, b in zip(got, expected))


# --------------------------------------------------------------------------- small-region removal
@pytest.mark.parametrize("hole,sprinkle,threshold", [(5, 5, 0.0), (30, 0, 0.0), (0, 12, 0.0), (8, 3, 0.7)])
def test_fill_holes_and_sprinkles_matches_official_transforms(hole, sprinkle, threshold):
    g = torch.Generator().manual_seed(hole * 100 + sprinkle)
    logits = F.avg_pool2d(torch.randn(6, 1, 40, 52, generator=g), 3, 1, 1)[:, 0] * 8  # blobs, holes, specks
    official = OfficialTransforms(resolution=256, mask_threshold=threshold, max_hole_area=hole,
                                  max_sprinkle_area=sprinkle)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the official step must run (CPU connected components patched in)
        expected = official.postprocess_masks(logits[:, None], (40, 52))[:, 0]
    got = fill_holes_and_sprinkles(logits, threshold, hole, sprinkle)
    assert torch.equal(got, expected)
    assert not torch.equal(got, logits) and torch.equal(fill_holes_and_sprinkles(logits, threshold, 0, 0), logits)


@pytest.mark.parametrize("args,err,words", [
    ((np.zeros((2, 4, 4)), 0.0, 1, 1), TypeError, "torch.Tensor of shape NxHxW"),
    ((torch.zeros(4, 4), 0.0, 1, 1), ValueError, "NxHxW"),
    ((torch.zeros(2, 4, 4, dtype=torch.long), 0.0, 1, 1), ValueError, "float tensor"),
    ((torch.zeros(2, 4, 4), float("nan"), 1, 1), ValueError, "mask_threshold"),
    ((torch.zeros(2, 4, 4), 0.0, -1, 1), ValueError, "max_hole_area"),
    ((torch.zeros(2, 4, 4), 0.0, 1, "3"), TypeError, "max_sprinkle_area"),
])
def test_fill_holes_and_sprinkles_input_checks(args, err, words):
    with pytest.raises(err, match=words):
        fill_holes_and_sprinkles(*args)


# ------------------------------------------------------------------------------------- bad input
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
def test_bad_images_raise(pair, bad, err, words):
    gen = SAM2AutomaticMaskGenerator(pair[1], points_per_side=2)
    with pytest.raises(err, match=words):
        gen.generate(bad)


@pytest.mark.parametrize(
    "kwargs,err,words",
    [
        (dict(points_per_side=0), ValueError, "points_per_side"),
        (dict(points_per_side=None), ValueError, "exactly one of points_per_side or point_grids"),
        (dict(point_grids=[np.full((4, 2), 0.5)]), ValueError, "exactly one of points_per_side or point_grids"),
        (dict(points_per_side=None, point_grids=[np.full((4, 2), 1.5)]), ValueError, r"point_grids\[0\]"),
        (dict(points_per_batch=0), ValueError, "points_per_batch"),
        (dict(pred_iou_thresh=1.5), ValueError, r"pred_iou_thresh must be a number in \[0.0, 1.0\], got 1.5"),
        (dict(stability_score_thresh=-0.1), ValueError, "stability_score_thresh"),
        (dict(stability_score_offset=float("nan")), ValueError, "stability_score_offset"),
        (dict(mask_threshold=float("inf")), ValueError, "mask_threshold must be a finite number, got inf"),
        (dict(mask_threshold="0"), TypeError, "mask_threshold"),
        (dict(box_nms_thresh=1.01), ValueError, "box_nms_thresh"),
        (dict(crop_n_layers=-1), ValueError, "crop_n_layers"),
        (dict(min_mask_region_area=-5), ValueError, "min_mask_region_area"),
        (dict(output_mode="rle"), ValueError, r"output_mode must be one of .*got 'rle'"),
        (dict(use_m2m="yes"), TypeError, "use_m2m must be True or False, got str 'yes'"),
        (dict(multimask_output=1), TypeError, "multimask_output must be True or False"),
        (dict(pred_iou_thres=0.5), TypeError, r"unexpected keyword arguments \['pred_iou_thres'\]"),
        (dict(precision="fp16"), ValueError, r"precision must be one of .*got 'fp16'"),
    ],
)
def test_bad_parameters_raise(pair, kwargs, err, words):
    with pytest.raises(err, match=words):
        SAM2AutomaticMaskGenerator(pair[1], **kwargs)


def test_bf16_generator_agrees_with_fp32(pair, image):
    """``precision`` reaches the generator's predictor: the bf16 encoder gives the exact run's masks, to bf16
    rounding (random weights, so some masks sit at the thresholds: compared by best-match IoU)."""
    kwargs = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
    exact = SAM2AutomaticMaskGenerator(pair[1], **kwargs).generate(image)
    fast_gen = SAM2AutomaticMaskGenerator(pair[1], precision="bf16", **kwargs)
    assert fast_gen.predictor.precision == "bf16"
    fast = fast_gen.generate(image)
    assert abs(len(fast) - len(exact)) <= max(2, len(exact) // 10)
    assert np.median(mask_iou(fast, exact).max(axis=0)) > 0.9


def test_bad_model_raises(pair):
    with pytest.raises(TypeError, match="samforge SAM2Base"):
        SAM2AutomaticMaskGenerator(pair[0])  # the official model is not ours


def test_defaults_are_the_official_ones(pair):
    import inspect

    ours = inspect.signature(SAM2AutomaticMaskGenerator.__init__).parameters
    theirs = inspect.signature(OfficialGenerator.__init__).parameters
    assert [k for k in ours if k != "precision"] == list(theirs)  # samforge's one addition, keyword-only
    assert ours["precision"].kind is inspect.Parameter.KEYWORD_ONLY and ours["precision"].default == "fp32"
    assert all(ours[k].default == theirs[k].default for k in theirs if k not in ("self", "model", "kwargs"))


def test_from_pretrained_reads_a_local_checkpoint(pair, image, tmp_path, monkeypatch):
    path = tmp_path / "small.pt"
    torch.save({"model": pair[1].state_dict()}, path)
    gen = SAM2AutomaticMaskGenerator.from_pretrained(
        path, config_file="sam2.1_hiera_t", hydra_overrides_extra=list(SMALL_OVERRIDES), points_per_side=3, **LOW)
    assert gen.points_per_batch == 64 and gen.pred_iou_thresh == 0.0
    reference = SAM2AutomaticMaskGenerator(pair[1], points_per_side=3, **LOW).generate(image)
    got = gen.generate(image)
    assert len(got) == len(reference) > 0
    assert all(np.array_equal(a["segmentation"], b["segmentation"]) for a, b in zip(got, reference))
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # an official id goes through the hub package
    with pytest.raises(ImportError, match="pip install huggingface_hub"):
        SAM2AutomaticMaskGenerator.from_pretrained("facebook/sam2.1-hiera-tiny")


def test_exported_from_package():
    import samforge
    import samforge.predict

    assert samforge.SAM2AutomaticMaskGenerator is samforge.predict.SAM2AutomaticMaskGenerator \
        is SAM2AutomaticMaskGenerator
