"""SAM2ImagePredictor: what it returns, and how it refuses bad input (a shrunk model: logic, not size)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from sam2_oracle import SMALL_OVERRIDES, make_sam2_pair

from samforge import SAM2ImagePredictor, build_sam, build_sam2
from samforge.predict.checks import ImageNotSetError

H, W = 60, 80
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_sam2("sam2.1_hiera_t", device="cpu", hydra_overrides_extra=list(SMALL_OVERRIDES))


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def predictor(model, image):
    p = SAM2ImagePredictor(model)
    p.set_image(image)
    return p


POINT = dict(point_coords=np.array([[10.0, 20.0]]), point_labels=np.array([1]))


def test_outputs_shapes_and_dtypes(predictor):
    masks, iou, low_res = predictor.predict(**POINT)
    assert (masks.shape, iou.shape, low_res.shape) == ((3, H, W), (3,), (3, 64, 64))
    assert masks.dtype == iou.dtype == low_res.dtype == np.float32
    assert set(np.unique(masks)) <= {0.0, 1.0}
    assert low_res.min() >= -32 and low_res.max() <= 32
    masks, iou, low_res = predictor.predict(box=np.array([[1, 2, 30, 40], [5, 5, 60, 50]]), multimask_output=False)
    assert (masks.shape, iou.shape, low_res.shape) == ((2, 1, H, W), (2, 1), (2, 1, 64, 64))
    assert predictor.get_image_embedding().shape == (1, 256, 16, 16)


def test_pil_image_is_the_same_as_numpy(model, image, predictor):
    p = SAM2ImagePredictor(model)
    p.set_image(Image.fromarray(image))
    assert torch.equal(p.get_image_embedding(), predictor.get_image_embedding())
    with pytest.raises(ValueError, match="HxWx3"):
        p.set_image(Image.fromarray(image[..., 0]))


@pytest.mark.parametrize(
    "bad, error, match",
    [
        ([[1, 2, 3]], TypeError, "numpy array HxWx3 uint8 or a PIL image"),
        (np.zeros((H, W), np.uint8), ValueError, "shape HxWx3"),
        (np.zeros((H, W, 4), np.uint8), ValueError, "shape HxWx3"),
        (np.zeros((H, W, 3), np.float32), ValueError, "dtype uint8"),
    ],
    ids=["list", "2d", "4-channels", "float"],
)
def test_bad_images(model, bad, error, match):
    with pytest.raises(error, match=match):
        SAM2ImagePredictor(model).set_image(bad)


def test_nothing_set(model):
    p = SAM2ImagePredictor(model)
    for call in (lambda: p.predict(**POINT), lambda: p.predict_batch(), p.get_image_embedding):
        with pytest.raises(ImageNotSetError, match="must be set"):
            call()
    assert issubclass(ImageNotSetError, RuntimeError)  # what the official predictor raises


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(point_coords=np.array([[1.0, 2.0]])), "point_labels must be given with point_coords"),
        (dict(point_labels=np.array([1])), "point_labels were given without point_coords"),
        (dict(point_coords=np.array([[1.0, 2.0]]), point_labels=np.array([1, 0])), "point_labels must have shape (1,)"),
        (dict(point_coords=np.array([1.0, 2.0]), point_labels=np.array([1])), "point_coords must have shape Nx2"),
        (dict(point_coords=np.zeros((1, 3)), point_labels=np.array([1])), "point_coords must have shape Nx2"),
        (dict(point_coords=np.array([[1.0, 2.0]]), point_labels=np.array([5])), "point_labels must be 1"),
        (dict(point_coords=np.array([[1.0, 2.0], [3.0, 4.0]]), point_labels=np.array([1, 0.7])),
         "point_labels must be 1 (foreground), 0 (background), -1 (ignore) or 2/3 (box corners), got [0.7, 1.0]"),
        (dict(point_coords=np.array([[np.nan, 2.0]]), point_labels=np.array([1])), "finite"),
        (dict(box=np.array([1.0, np.inf, 3.0, 4.0])), "box must be finite"),
        (dict(box=np.array([1.0, 2.0, 3.0])), "box must have shape (4,) or Bx4"),
        (dict(box=np.zeros((2, 2, 2))), "box must have shape (4,) or Bx4"),
        (dict(box=np.array([30.0, 2.0, 3.0, 40.0])), "x0 <= x1 and y0 <= y1"),
        (dict(box=np.array([[1, 2, 30, 40], [5, 5, 60, 50]]), **POINT), "same batch size"),
        (dict(mask_input=np.zeros((1, 256, 256), np.float32)), "mask_input must have shape (1, 64, 64)"),
        (dict(mask_input=np.zeros((64, 64), np.float32)), "mask_input must have shape (1, 64, 64)"),
        (dict(mask_input=np.zeros((3, 1, 64, 64), np.float32), box=np.array([[1, 2, 30, 40]] * 2)), "3 masks"),
        (dict(mask_input=np.full((1, 64, 64), np.nan, np.float32)),
         "mask_input must be finite, got 4096 NaN or inf value(s) of 4096"),
        (dict(mask_input=np.pad(np.full((1, 1, 1, 1), -np.inf, np.float32), ((0, 1), (0, 0), (0, 63), (0, 63))),
              box=np.array([[1, 2, 30, 40]] * 2)), "mask_input must be finite, got 1 NaN or inf value(s) of 8192"),
    ],
    ids=["coords-without-labels", "labels-without-coords", "labels-shape", "coords-1d", "coords-3-values",
         "label-5", "label-0.7", "point-nan", "box-inf", "box-3-values", "box-3d", "box-swapped",
         "box-and-points-batch", "mask-wrong-size", "mask-2d", "mask-batch", "mask-nan", "mask-batch-inf"],
)
def test_bad_prompts(predictor, kwargs, match):
    with pytest.raises(ValueError) as e:
        predictor.predict(**kwargs)
    assert match in str(e.value)


def test_mask_input_type(predictor):
    with pytest.raises(TypeError, match="mask_input must be an array"):
        predictor.predict(mask_input=[[0.0]])


def test_batch_calls(model, image):
    p = SAM2ImagePredictor(model)
    with pytest.raises(TypeError, match="list"):
        p.set_image_batch(image)
    with pytest.raises(ValueError, match="at least one image"):
        p.set_image_batch([])
    with pytest.raises(ValueError, match="dtype uint8"):
        p.set_image_batch([image, image.astype(np.float32)])
    p.set_image(image)
    with pytest.raises(ValueError, match="set_image_batch"):
        p.predict_batch()
    p.set_image_batch([image, image[:30]])
    with pytest.raises(ValueError, match="use predict_batch"):
        p.predict(**POINT)
    with pytest.raises(ValueError, match="one entry per image"):
        p.predict_batch(point_coords_batch=[POINT["point_coords"]], point_labels_batch=[POINT["point_labels"]])
    masks, ious, low_res = p.predict_batch(box_batch=[np.array([1, 2, 30, 20]), None])
    assert [m.shape for m in masks] == [(3, H, W), (3, 30, W)] and len(ious) == len(low_res) == 2
    p.reset_predictor()
    with pytest.raises(ImageNotSetError):
        p.predict_batch()


def test_constructor_checks(model):
    with pytest.raises(TypeError, match="SAM2Base"):
        SAM2ImagePredictor(build_sam("vit_small"))
    with pytest.raises(TypeError, match="unexpected keyword arguments"):
        SAM2ImagePredictor(model, mask_treshold=0.5)


def test_hole_filling_is_skipped_with_a_warning(model, image, predictor):
    p = SAM2ImagePredictor(model, max_hole_area=8.0)
    p.set_image(image)
    with pytest.warns(UserWarning, match="connected components"):
        filled = p.predict(**POINT)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = predictor.predict(**POINT)
    for a, b in zip(filled, plain):
        assert np.array_equal(a, b)


# ------------------------------------------------------------------------------ prompts outside the image
OUTSIDE = {  # what the official predictor accepts: used as given
    "point-x>W": dict(point_coords=np.array([[W + 1.0, 2.0], [10.0, 20.0]]), point_labels=np.array([1, 0])),
    "box-overshooting": dict(box=np.array([-1.0, 0.0, W + 2.0, 30.0])),
    "box-outside": dict(box=np.array([W + 5.0, 2.0, W + 40.0, 30.0]), multimask_output=False),
    "batch": dict(point_coords=np.array([[[-4.0, 5.0]], [[20.0, H + 9.0]]]), point_labels=np.array([[1], [1]]),
                  box=np.array([[-3.0, -3.0, 40.0, 50.0], [0.0, 0.0, W + 1.0, H + 1.0]])),
    "normalized": dict(point_coords=np.array([[1.2, 0.5]]), point_labels=np.array([1]), normalize_coords=False),
}


@pytest.fixture(scope="module")
def official_pair(image):
    """(official, ours) SAM 2 predictors holding the same random weights, ``image`` set."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor as Official

    official_model, our_model = make_sam2_pair("sam2.1_hiera_t", seed=3, overrides=SMALL_OVERRIDES)
    official, ours = Official(official_model), SAM2ImagePredictor(our_model)
    s = official_model.image_size  # the official predictor's feature sizes are those of a 1024 input
    official._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
    official.set_image(image)
    ours.set_image(image)
    return official, ours


@pytest.mark.parametrize("name", list(OUTSIDE))
def test_prompts_outside_the_image_are_used_as_the_official_uses_them(official_pair, name):
    official, ours = official_pair
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = ours.predict(**OUTSIDE[name])
    want = official.predict(**OUTSIDE[name])
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_predict_batch_outside_the_images_is_the_official_result(official_pair, image):
    official, ours = official_pair
    images = [image, image[:30]]
    points = [np.array([[W + 3.0, 5.0]]), np.array([[5.0, 31.0]])]
    labels = [np.array([1]), np.array([1])]
    boxes = [np.array([-2.0, -2.0, 40.0, 50.0]), None]
    results = []
    for p in (ours, official):
        p.set_image_batch(images)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results.append(p.predict_batch(points, labels, boxes, multimask_output=False))
        p.set_image(image)  # back for the other tests
    for got, want in zip(*results):
        for a, b in zip(got, want):
            assert np.array_equal(a, b)


@pytest.mark.parametrize(
    "kwargs, warned",
    [
        (OUTSIDE["point-x>W"], "point_coords: a point lies outside the image"),
        (OUTSIDE["box-overshooting"], None),
        (OUTSIDE["box-outside"], "box: a box lies entirely outside the image"),
        (OUTSIDE["normalized"], "point_coords: a point lies outside the image"),
        (dict(point_coords=np.array([[1.0, 0.5]]), point_labels=np.array([1]), normalize_coords=False), None),
    ],
    ids=["point", "box-overshooting", "box-outside", "normalized", "normalized-inside"],
)
def test_a_warning_only_for_a_prompt_entirely_outside(predictor, kwargs, warned):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predictor.predict(**kwargs)
    messages = [str(w.message) for w in caught]
    if warned is None:
        assert messages == []
    else:
        assert len(messages) == 1 and messages[0].startswith(warned)
        assert caught[0].filename == __file__  # attributed to the caller's line
