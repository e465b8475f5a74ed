"""Every bad input to the public predictor API is a ValueError/TypeError that says what was expected and what was
given; and the shapes, dtypes and options of good calls behave as in segment_anything."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch

from segment_anything import SamPredictor as OfficialPredictor

from samforge import SamPredictor, sam_model_registry

H, W = 48, 64  # the test image; the small model's input is 256, so the resized image is 192 x 256
LOW_RES = 64  # 256 // 16 * 4


@pytest.fixture(scope="module")
def sam():
    torch.manual_seed(0)
    return sam_model_registry["vit_small"]()


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def predictor(sam, image) -> SamPredictor:
    """A predictor with ``image`` set (tests that change its state make their own)."""
    p = SamPredictor(sam)
    p.set_image(image)
    return p


@pytest.fixture(scope="module")
def official_pair(small_pair, image):
    """(official, ours) predictors with the same random weights and ``image`` set."""
    official_model, our_model = small_pair
    official, ours = OfficialPredictor(official_model), SamPredictor(our_model)
    official.set_image(image)
    ours.set_image(image)
    return official, ours


@pytest.fixture
def fresh(sam) -> SamPredictor:
    return SamPredictor(sam)


ONE_POINT = np.array([[10.0, 20.0]])
ONE_LABEL = np.array([1])


# ----------------------------------------------------------------------------------------------- set_image


@pytest.mark.parametrize(
    "bad, given",
    [
        ([[[0, 0, 0]]], "list"),
        (torch.zeros(H, W, 3, dtype=torch.uint8), "Tensor"),
    ],
    ids=["list", "tensor"],
)
def test_image_not_numpy_is_type_error(fresh, bad, given):
    with pytest.raises(TypeError, match=rf"numpy array of shape HxWx3.*got {given}"):
        fresh.set_image(bad)
    assert not fresh.is_image_set


@pytest.mark.parametrize(
    "shape, shown",
    [((H, W), r"\(48, 64\)"), ((H, W, 4), r"\(48, 64, 4\)"), ((0, W, 3), r"\(0, 64, 3\)")],
    ids=["HxW", "HxWx4", "0xWx3"],
)
def test_image_wrong_shape(fresh, shape, shown):
    with pytest.raises(ValueError, match=rf"HxWx3.*got shape {shown}"):
        fresh.set_image(np.zeros(shape, dtype=np.uint8))
    assert not fresh.is_image_set


@pytest.mark.parametrize("dtype", [np.float32, np.uint16])
def test_image_wrong_dtype(fresh, dtype):
    with pytest.raises(ValueError, match=rf"uint8.*got dtype {np.dtype(dtype).name}"):
        fresh.set_image(np.zeros((H, W, 3), dtype=dtype))


@pytest.mark.parametrize("fmt", ["rgb", "HSV", None])
def test_image_format_must_be_rgb_or_bgr(fresh, image, fmt):
    with pytest.raises(ValueError, match=rf"'RGB' or 'BGR', got {fmt!r}"):
        fresh.set_image(image, image_format=fmt)


def test_bgr_image_gives_the_same_embedding(sam, image, predictor):
    bgr = SamPredictor(sam)
    bgr.set_image(image[..., ::-1], image_format="BGR")  # a negative-stride view, as cv2 users make
    torch.testing.assert_close(bgr.get_image_embedding(), predictor.get_image_embedding(), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------- image not set


def _calls(p: SamPredictor):
    pts = torch.tensor([[[10.0, 20.0]]])
    lbl = torch.tensor([[1]])
    return {
        "predict": lambda: p.predict(ONE_POINT, ONE_LABEL),
        "predict_torch": lambda: p.predict_torch(pts, lbl),
        "get_image_embedding": lambda: p.get_image_embedding(),
    }


@pytest.mark.parametrize("call", ["predict", "predict_torch", "get_image_embedding"])
def test_prediction_before_set_image(fresh, call):
    with pytest.raises(RuntimeError, match=r"image must be set with .set_image") as info:
        _calls(fresh)[call]()
    assert isinstance(info.value, ValueError)


@pytest.fixture(scope="module")
def was_reset(sam, image) -> SamPredictor:
    p = SamPredictor(sam)
    p.set_image(image)
    p.reset_image()
    return p


@pytest.mark.parametrize("call", ["predict", "predict_torch", "get_image_embedding"])
def test_prediction_after_reset_image(was_reset, call):
    assert not was_reset.is_image_set and was_reset.features is None
    with pytest.raises(RuntimeError, match=r"image must be set with .set_image") as info:
        _calls(was_reset)[call]()
    assert isinstance(info.value, ValueError)


def test_failed_set_image_keeps_the_previous_image(predictor):
    with pytest.raises(ValueError):
        predictor.set_image(np.zeros((H, W), dtype=np.uint8))
    with pytest.raises(ValueError):
        predictor.set_torch_image(torch.zeros(1, 3, 192, 256), (0, W))
    assert predictor.is_image_set and predictor.original_size == (H, W) and predictor.input_size == (192, 256)


# ------------------------------------------------------------------------------------------- predict: points


def test_points_without_labels(predictor):
    with pytest.raises(ValueError, match=r"point_labels must be given with point_coords"):
        predictor.predict(point_coords=ONE_POINT)


def test_labels_without_points(predictor):
    with pytest.raises(ValueError, match=r"point_labels were given without point_coords"):
        predictor.predict(point_labels=ONE_LABEL)


@pytest.mark.parametrize("labels", [np.array([1, 1]), np.array([]), np.array([[1]])], ids=["2", "0", "1x1"])
def test_labels_of_wrong_length(predictor, labels):
    with pytest.raises(ValueError, match=rf"point_labels must have shape \(1,\).*got {re_shape(labels.shape)}"):
        predictor.predict(ONE_POINT, labels)


@pytest.mark.parametrize("label", [2, -2, 0.5])
def test_labels_not_in_set(predictor, label):
    with pytest.raises(ValueError, match=r"1 \(foreground\), 0 \(background\) or -1 \(ignore\), got \["):
        predictor.predict(ONE_POINT, np.array([label]))


@pytest.mark.parametrize(
    "coords, labels",
    [(np.array([10.0, 20.0]), np.array([1])), (np.array([[10.0, 20.0, 1.0]]), np.array([1]))],
    ids=["(2,)", "(N,3)"],
)
def test_point_coords_of_wrong_shape(predictor, coords, labels):
    with pytest.raises(ValueError, match=rf"point_coords must have shape Nx2.*got shape {re_shape(coords.shape)}"):
        predictor.predict(coords, labels)


def test_point_coords_not_numeric(predictor):
    with pytest.raises(TypeError, match=r"point_coords must be a numeric array, got list"):
        predictor.predict([["a", "b"]], ONE_LABEL)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_point_coords_not_finite(predictor, value):
    with pytest.raises(ValueError, match=r"point_coords must be finite"):
        predictor.predict(np.array([[value, 3.0]]), ONE_LABEL)


@pytest.mark.parametrize(
    "coords, labels, box",
    [
        ([[W + 1.0, 10.0]], [1], None),  # the notebook's 641 on a 640-wide image
        ([[10.0, 10.0], [-1.0, 5.0]], [1, 0], None),
        ([[5.0, H + 0.5]], [0], None),
        (None, None, [-1.0, 0.0, 30.0, 30.0]),  # a detector box overshooting the border
        (None, None, [0.0, 0.0, W + 3.0, H + 3.0]),
        (None, None, [W + 5.0, 2.0, W + 40.0, 30.0]),  # entirely outside
        ([[-20.0, -20.0]], [1], [-10.0, 2.0, 30.0, H + 10.0]),
    ],
    ids=["x>W", "x<0", "y>H", "box-x0<0", "box-past-corner", "box-outside", "points-and-box"],
)
def test_prompts_outside_the_image_are_used_as_the_official_uses_them(official_pair, coords, labels, box):
    """The official predictor accepts prompts past the border: ours does the same computation, bit for bit."""
    official, ours = official_pair
    kwargs = dict(point_coords=None if coords is None else np.array(coords),
                  point_labels=None if labels is None else np.array(labels),
                  box=None if box is None else np.array(box))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = ours.predict(**kwargs)
    want = official.predict(**kwargs)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_predict_torch_outside_the_resized_frame_is_the_official_result(official_pair):
    official, ours = official_pair  # the resized frame is 192 x 256 (H x W)
    coords = torch.tensor([[[300.0, 10.0], [20.0, 30.0]], [[-5.0, 200.0], [20.0, 30.0]]])
    labels = torch.tensor([[1, 0], [1, 1]])
    boxes = torch.tensor([[0.0, 0.0, 10.0, 250.0], [-3.0, -3.0, 260.0, 195.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = ours.predict_torch(coords, labels, boxes=boxes)
    want = official.predict_torch(coords, labels, boxes=boxes)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and torch.equal(a, b)


def _warnings_of(call) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return [str(w.message) for w in caught]


@pytest.mark.parametrize(
    "kwargs, warned",
    [
        (dict(point_coords=np.array([[W + 1.0, 10.0]]), point_labels=np.array([1])), "point_coords: a point lies"),
        (dict(point_coords=np.array([[W + 9.0, 10.0]]), point_labels=np.array([-1])), None),  # an ignored point
        (dict(box=np.array([W + 5.0, 2.0, W + 40.0, 30.0])), "box: a box lies entirely outside the image"),
        (dict(box=np.array([-3.0, -2.0, W + 3.0, H + 1.0])), None),  # overshoots the border: no warning
        (dict(box=np.array([W, H, W, H])), None),  # on the border
    ],
    ids=["point-outside", "ignored-point", "box-outside", "box-overshooting", "box-on-the-corner"],
)
def test_a_warning_only_for_a_prompt_entirely_outside(predictor, kwargs, warned):
    messages = _warnings_of(lambda: predictor.predict(**kwargs))
    if warned is None:
        assert messages == []
    else:
        assert len(messages) == 1 and messages[0].startswith(warned) and "used as given" in messages[0]


def test_predict_torch_warns_for_a_box_entirely_outside_the_resized_frame(predictor):
    messages = _warnings_of(lambda: predictor.predict_torch(None, None, boxes=torch.tensor([[0.0, 193.0, 9.0, 200.0]])))
    assert len(messages) == 1 and messages[0].startswith("boxes (resized frame): a box lies entirely outside")


def test_the_outside_warning_is_shown_once_per_call_site(predictor):
    outside = dict(point_coords=np.array([[W + 1.0, 10.0]]), point_labels=np.array([1]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # Python's default action: once per (message, category, module, line)
        for _ in range(3):
            predictor.predict(**outside)
        predictor.predict(**outside)  # another line
    assert len(caught) == 2
    assert {w.filename for w in caught} == {__file__}  # the user's line, not samforge's
    assert caught[1].lineno == caught[0].lineno + 1


def test_points_on_the_border_and_ignore_label_are_accepted(predictor):
    coords = np.array([[0.0, 0.0], [W, H], [W / 2, H / 2]])
    masks, iou, low = predictor.predict(coords, np.array([1, 0, -1]))
    assert masks.shape == (3, H, W)


def test_points_as_lists_are_accepted(predictor):
    masks, _, _ = predictor.predict([[10, 20]], [1])
    ref, _, _ = predictor.predict(ONE_POINT, ONE_LABEL)
    np.testing.assert_array_equal(masks, ref)


# ---------------------------------------------------------------------------------------------- predict: box


@pytest.mark.parametrize("box", [np.array([1.0, 2.0]), np.array([[1.0, 2.0, 3.0, 4.0]] * 2)], ids=["(2,)", "(2,4)"])
def test_box_of_wrong_shape(predictor, box):
    with pytest.raises(ValueError, match=rf"box must have shape \(4,\).*got shape {re_shape(box.shape)}"):
        predictor.predict(box=box)


@pytest.mark.parametrize("box", [[30.0, 5.0, 10.0, 20.0], [5.0, 30.0, 10.0, 20.0]], ids=["x0>x1", "y0>y1"])
def test_box_corners_swapped(predictor, box):
    with pytest.raises(ValueError, match=r"x0 <= x1 and y0 <= y1, got \["):
        predictor.predict(box=np.array(box))


def test_box_not_finite(predictor):
    with pytest.raises(ValueError, match=r"box must be finite"):
        predictor.predict(box=np.array([0.0, 0.0, np.nan, 5.0]))


def test_box_of_the_whole_image_and_1x4_are_accepted(predictor):
    a, _, _ = predictor.predict(box=np.array([0, 0, W, H]))
    b, _, _ = predictor.predict(box=np.array([[0, 0, W, H]]))
    np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------------------- predict: mask_input


@pytest.mark.parametrize("shape", [(1, 64, 32), (64, 64), (1, 1, 64, 64), (1, 256, 256)])
def test_mask_input_of_wrong_size(predictor, shape):
    with pytest.raises(ValueError, match=rf"mask_input must have shape \(1, 64, 64\).*got {re_shape(shape)}"):
        predictor.predict(ONE_POINT, ONE_LABEL, mask_input=np.zeros(shape, dtype=np.float32))


def test_mask_input_not_an_array(predictor):
    with pytest.raises(TypeError, match=r"mask_input must be an array of shape \(1, 64, 64\), got list"):
        predictor.predict(ONE_POINT, ONE_LABEL, mask_input=[[0.0]])


def test_mask_input_from_a_previous_call_is_accepted(predictor):
    masks, iou, low = predictor.predict(ONE_POINT, ONE_LABEL)
    best = int(np.argmax(iou))
    masks2, iou2, _ = predictor.predict(ONE_POINT, ONE_LABEL, mask_input=low[best][None], multimask_output=False)
    assert masks2.shape == (1, H, W) and iou2.shape == (1,)


# ------------------------------------------------------------------------------------------ predict: outputs


@pytest.mark.parametrize("multimask, c", [(True, 3), (False, 1)])
def test_predict_output_shapes_and_dtypes(predictor, multimask, c):
    masks, iou, low = predictor.predict(ONE_POINT, ONE_LABEL, multimask_output=multimask)
    assert isinstance(masks, np.ndarray) and masks.dtype == np.bool_ and masks.shape == (c, H, W)
    assert isinstance(iou, np.ndarray) and iou.dtype == np.float32 and iou.shape == (c,)
    assert isinstance(low, np.ndarray) and low.dtype == np.float32 and low.shape == (c, LOW_RES, LOW_RES)


def test_return_logits(predictor):
    box = np.array([5, 5, 40, 30])
    masks, iou, low = predictor.predict(ONE_POINT, ONE_LABEL, box=box)
    logits, iou_l, low_l = predictor.predict(ONE_POINT, ONE_LABEL, box=box, return_logits=True)
    assert logits.dtype == np.float32 and logits.shape == (3, H, W)
    np.testing.assert_array_equal(logits > predictor.model.mask_threshold, masks)
    np.testing.assert_array_equal(iou_l, iou)
    np.testing.assert_array_equal(low_l, low)


def test_predict_with_box_only(predictor):
    masks, iou, low = predictor.predict(box=np.array([5, 5, 40, 30]))
    assert masks.shape == (3, H, W) and iou.shape == (3,) and low.shape == (3, LOW_RES, LOW_RES)


def test_get_image_embedding_shape(predictor):
    emb = predictor.get_image_embedding()
    assert isinstance(emb, torch.Tensor) and emb.shape == (1, predictor.model.config.prompt_embed_dim, 16, 16)


# ---------------------------------------------------------------------------------------------- predict_torch


def _boxes(b: int) -> torch.Tensor:
    return torch.tensor([[10.0, 10.0, 100.0, 80.0]] * b)


def _points(b: int, n: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((b, n, 2), 50.0), torch.ones(b, n, dtype=torch.int)


def test_predict_torch_batch_of_boxes(predictor):
    masks, iou, low = predictor.predict_torch(None, None, boxes=_boxes(4))
    assert masks.shape == (4, 3, H, W) and masks.dtype == torch.bool
    assert iou.shape == (4, 3) and low.shape == (4, 3, LOW_RES, LOW_RES)
    # the same prompt four times gives the same result four times, equal to predict's with that box in image pixels
    _, ref_iou, ref_low = predictor.predict(box=_boxes(1)[0].numpy() * W / 256)
    for i in range(4):
        torch.testing.assert_close(iou[i], torch.from_numpy(ref_iou), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(low[i], torch.from_numpy(ref_low), rtol=1e-4, atol=1e-4)


def test_predict_torch_points_boxes_and_masks_together(predictor):
    pts, lbl = _points(2, 3)
    masks, iou, low = predictor.predict_torch(
        pts, lbl, boxes=_boxes(2), mask_input=torch.zeros(2, 1, LOW_RES, LOW_RES), multimask_output=False
    )
    assert masks.shape == (2, 1, H, W) and iou.shape == (2, 1) and low.shape == (2, 1, LOW_RES, LOW_RES)


def _prompts(coords=None, labels=None, boxes=None, mask_input=None) -> dict:
    return dict(point_coords=coords, point_labels=labels, boxes=boxes, mask_input=mask_input)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (_prompts(np.zeros((1, 1, 2)), torch.ones(1, 1)),
         "point_coords must be a torch.Tensor of shape BxNx2, got ndarray of shape (1, 1, 2)"),
        (_prompts(torch.zeros(1, 1, 2), [[1]]), "point_labels must be a torch.Tensor of shape 1x1, got list"),
        (_prompts(boxes=[[1.0, 2.0, 3.0, 4.0]]), "boxes must be a torch.Tensor of shape Bx4, got list"),
        (_prompts(boxes=np.zeros((1, 4))), "boxes must be a torch.Tensor of shape Bx4, got ndarray"),
        (_prompts(boxes=_boxes(1), mask_input=np.zeros((1, 1, 64, 64))),
         "mask_input must be a torch.Tensor of shape Bx1xHxW, got ndarray"),
    ],
    ids=["coords-numpy", "labels-list", "boxes-list", "boxes-numpy", "mask-numpy"],
)
def test_predict_torch_non_tensors(predictor, kwargs, message):
    with pytest.raises(TypeError, match=re.escape(message)):
        predictor.predict_torch(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (_prompts(torch.zeros(1, 2), torch.ones(1)), "point_coords must have shape BxNx2, got (1, 2)"),
        (_prompts(torch.zeros(1, 1, 3), torch.ones(1, 1)), "point_coords must have shape BxNx2, got (1, 1, 3)"),
        (_prompts(torch.zeros(1, 1, 2), torch.ones(1)), "point_labels must have shape 1x1, got (1,)"),
        (_prompts(torch.zeros(2, 3, 2), torch.ones(2, 2)),
         "point_labels must have shape (2, 3) to match point_coords, got (2, 2)"),
        (_prompts(boxes=torch.zeros(4)), "boxes must have shape Bx4, got (4,)"),
        (_prompts(boxes=torch.zeros(2, 3)), "boxes must have shape Bx4, got (2, 3)"),
        (_prompts(boxes=torch.zeros(2, 2, 4)), "boxes must have shape Bx4 (or Bx1x4), got (2, 2, 4)"),
        (_prompts(mask_input=torch.zeros(1, 64, 64)), "mask_input must have shape Bx1xHxW, got (1, 64, 64)"),
        (_prompts(mask_input=torch.zeros(2, 1, 32, 64)),
         "mask_input must have shape (2, 1, 64, 64) (the low-res logits of a previous prediction), got (2, 1, 32, 64)"),
    ],
    ids=["coords-2d", "coords-Nx3", "labels-1d", "labels-mismatch", "boxes-1d", "boxes-Bx3", "boxes-Bx2x4",
         "mask-3d", "mask-size"],
)
def test_predict_torch_wrong_shapes(predictor, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        predictor.predict_torch(**kwargs)


def test_predict_torch_points_without_labels(predictor):
    with pytest.raises(ValueError, match=r"point_coords and point_labels must be given together"):
        predictor.predict_torch(torch.zeros(1, 1, 2), None)
    with pytest.raises(ValueError, match=r"point_coords and point_labels must be given together"):
        predictor.predict_torch(None, torch.ones(1, 1))


@pytest.mark.parametrize(
    "kwargs, shown",
    [
        (dict(pb=2, bb=3), r"'point_coords': 2, 'boxes': 3"),
        (dict(pb=2, mb=1), r"'point_coords': 2, 'mask_input': 1"),
        (dict(bb=4, mb=2), r"'boxes': 4, 'mask_input': 2"),
    ],
    ids=["points-boxes", "points-masks", "boxes-masks"],
)
def test_predict_torch_batch_sizes_disagree(predictor, kwargs, shown):
    pb, bb, mb = kwargs.get("pb"), kwargs.get("bb"), kwargs.get("mb")
    pts, lbl = _points(pb) if pb else (None, None)
    with pytest.raises(ValueError, match=rf"same batch size B, got \{{{shown}\}}"):
        predictor.predict_torch(
            pts, lbl, boxes=_boxes(bb) if bb else None,
            mask_input=torch.zeros(mb, 1, LOW_RES, LOW_RES) if mb else None,
        )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (_prompts(torch.tensor([[[np.nan, 3.0]]]), torch.ones(1, 1)), "point_coords must be finite"),
        (_prompts(torch.tensor([[[np.inf, 3.0]]]), torch.ones(1, 1)), "point_coords must be finite"),
        (_prompts(torch.zeros(1, 2, 2), torch.tensor([[1, 2]])),
         "point_labels must be 1 (foreground), 0 (background) or -1 (ignore), got [1, 2]"),
        (_prompts(torch.zeros(1, 2, 2), torch.tensor([[1.0, 0.5]])),
         "point_labels must be 1 (foreground), 0 (background) or -1 (ignore), got [0.5, 1.0]"),
        (_prompts(boxes=torch.tensor([[0.0, 0.0, np.nan, 5.0]])), "boxes must be finite"),
        (_prompts(boxes=torch.tensor([[30.0, 5.0, 10.0, 20.0]])),
         "boxes must be [x0, y0, x1, y1] with x0 <= x1 and y0 <= y1, got [[30.0, 5.0, 10.0, 20.0]]"),
        (_prompts(boxes=torch.tensor([[[5.0, 30.0, 10.0, 20.0]]])), "x0 <= x1 and y0 <= y1, got [[5.0, 30.0,"),
        (_prompts(mask_input=torch.full((1, 1, 64, 64), np.nan)),
         "mask_input must be finite, got 4096 NaN or inf value(s) of 4096"),
        (_prompts(boxes=_boxes(1), mask_input=torch.zeros(1, 1, 64, 64).index_fill_(3, torch.tensor([7]), np.inf)),
         "mask_input must be finite, got 64 NaN or inf value(s) of 4096"),
    ],
    ids=["coords-nan", "coords-inf", "label-2", "label-0.5", "box-nan", "box-x0>x1", "box-1x4-y0>y1", "mask-nan",
         "mask-inf"],
)
def test_predict_torch_refuses_what_predict_refuses(predictor, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        predictor.predict_torch(**kwargs)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_mask_input_not_finite(predictor, value):
    mask = np.zeros((1, LOW_RES, LOW_RES), np.float32)
    mask[0, 3, 4] = value
    message = f"mask_input must be finite, got 1 NaN or inf value(s) of {LOW_RES ** 2}"
    with pytest.raises(ValueError, match=re.escape(message)):
        predictor.predict(point_coords=ONE_POINT, point_labels=ONE_LABEL, mask_input=mask)


# ---------------------------------------------------------------------------------------------- set_torch_image


@pytest.mark.parametrize(
    "shape, shown",
    [((3, 192, 256), r"\(3, 192, 256\)"), ((1, 2, 192, 256), r"\(1, 2, 192, 256\)"),
     ((1, 3, 96, 128), r"\(1, 3, 96, 128\)"), ((2, 3, 192, 256), r"\(2, 3, 192, 256\)")],
    ids=["3d", "2-channels", "long-side-128", "batch-2"],
)
def test_set_torch_image_wrong_shape(fresh, shape, shown):
    with pytest.raises(ValueError, match=rf"1x3xHxW with the longest side 256.*got {shown}"):
        fresh.set_torch_image(torch.zeros(shape), (H, W))
    assert not fresh.is_image_set


def test_set_torch_image_not_a_tensor(fresh):
    with pytest.raises(TypeError, match=r"torch.Tensor 1x3xHxW, got ndarray"):
        fresh.set_torch_image(np.zeros((1, 3, 192, 256), dtype=np.float32), (H, W))


@pytest.mark.parametrize(
    "size", [(0, W), (H,), (H, W, 3), (-1, W), None, "ab", (H, "x"), (H, 64.5), (True, W)],
    ids=["zero", "1-value", "3-values", "negative", "None", "str", "str-item", "float", "bool"],
)
def test_set_torch_image_bad_original_size(fresh, size):
    message = f"original_image_size must be (H, W) with H, W > 0 integers, got {size!r}"
    with pytest.raises(ValueError, match=re.escape(message)):
        fresh.set_torch_image(torch.zeros(1, 3, 192, 256), size)
    assert not fresh.is_image_set


def test_set_torch_image_matches_set_image(sam, image, predictor):
    p = SamPredictor(sam)
    t = torch.as_tensor(p.transform.apply_image(image)).permute(2, 0, 1)[None]
    p.set_torch_image(t, (np.int64(H), torch.tensor(W)))  # any integer types
    assert p.original_size == (H, W) and type(p.original_size[1]) is int and p.input_size == (192, 256)
    torch.testing.assert_close(p.get_image_embedding(), predictor.get_image_embedding(), rtol=0, atol=0)


# -------------------------------------------------------------------------------------- registry and predictor


def test_registry_unknown_name_lists_valid_names():
    with pytest.raises(KeyError, match=r"unknown SAM model type 'nope'; expected one of .*'vit_b'.*'vit_small'"):
        sam_model_registry["nope"]


def test_predictor_needs_a_sam_model():
    with pytest.raises(TypeError, match=r"sam_model must be a samforge Sam model, got str"):
        SamPredictor("not a model")


def re_shape(shape) -> str:
    """A shape as it prints in a message, escaped for a regex."""
    return str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")


# ---------------------------------------------------------------------------------------------- Sam.forward


def test_sam_forward_runs_without_autograd_like_the_official(small_pair):
    """``Sam.__call__(batched_input, multimask_output)`` keeps no graph (the official forward is under no_grad),
    and leaves the caller's grad mode as it was; the results are the official ones."""
    official, ours = small_pair
    record = {"image": torch.rand(3, 192, 256) * 255, "original_size": (H, W),
              "point_coords": torch.tensor([[[50.0, 60.0]]]), "point_labels": torch.tensor([[1]]),
              "boxes": torch.tensor([[10.0, 10.0, 100.0, 80.0]])}
    assert torch.is_grad_enabled()
    out = ours([record], multimask_output=True)[0]
    assert torch.is_grad_enabled()
    for name, value in out.items():
        assert not value.requires_grad and value.grad_fn is None, name
    want = official([record], multimask_output=True)[0]
    for name in ("masks", "iou_predictions", "low_res_logits"):
        assert torch.equal(out[name], want[name]), name
    assert any(p.requires_grad for p in ours.parameters())  # the model itself is untouched: training still works
