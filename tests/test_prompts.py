"""Prompt simulation: points, negative points, jittered boxes, centre clicks and correction clicks."""

from __future__ import annotations

import numpy as np
import pytest

from samforge.data.prompts import (correction_click, interior_point, jitter_box, mask_to_box, sample_negative_points,
                                   sample_points)


def disk(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def rect(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Rows y0..y1 and columns x0..x1, both inclusive."""
    m = np.zeros((h, w), bool)
    m[y0:y1 + 1, x0:x1 + 1] = True
    return m


def odd_mask() -> np.ndarray:
    """A disk and a separate bar: two components, not convex."""
    return disk(80, 100, 30, 30, 12) | rect(80, 100, 60, 65, 50, 95)


def test_mask_to_box():
    np.testing.assert_array_equal(mask_to_box(rect(40, 50, 5, 9, 12, 30)), [12, 5, 30, 9])
    np.testing.assert_array_equal(mask_to_box(odd_mask()), [18, 18, 95, 65])


def test_sample_points_inside_and_spread():
    mask = odd_mask()
    pts = sample_points(mask, 2000, np.random.default_rng(0))
    assert pts.shape == (2000, 2) and pts.dtype == np.float64
    x, y = pts[:, 0].astype(int), pts[:, 1].astype(int)
    assert mask[y, x].all()
    in_bar = (y >= 60).mean()  # uniform over pixels: the bar holds 276 of the 729 pixels
    assert abs(in_bar - 276 / mask.sum()) < 0.05
    assert len({(a, b) for a, b in zip(x, y)}) > 300


def test_negative_points_outside_the_mask_and_within_the_grown_box():
    mask = odd_mask()
    x0, y0, x1, y1 = mask_to_box(mask)
    margin = 0.2
    mx, my = (x1 - x0 + 1) * margin, (y1 - y0 + 1) * margin
    pts = sample_negative_points(mask, 3000, np.random.default_rng(1), margin=margin)
    x, y = pts[:, 0].astype(int), pts[:, 1].astype(int)
    assert not mask[y, x].any()
    assert (x >= x0 - mx).all() and (x <= x1 + mx).all() and (y >= y0 - my).all() and (y <= y1 + my).all()
    assert x.min() < x0 and y.max() > y1  # the margin is used, not just the tight box
    assert (x >= x0).any() and (x <= x1).any()


def test_negative_points_when_the_mask_fills_everything():
    full = np.ones((10, 12), bool)
    with pytest.raises(ValueError, match="whole image"):
        sample_negative_points(full, 3, np.random.default_rng(0))
    almost = full.copy()
    almost[0, 0] = False
    np.testing.assert_array_equal(sample_negative_points(almost, 4, np.random.default_rng(0)), [[0, 0]] * 4)


def test_jitter_box_stays_inside_the_image():
    rng = np.random.default_rng(2)
    h, w = 60, 80
    boxes = [[0, 0, 79, 59], [70, 50, 79, 59], [79, 0, 79, 5], [3, 59, 7, 59], [0, 0, 0, 0], [30, 20, 45, 33]]
    for box in boxes:
        for _ in range(300):
            out = jitter_box(np.array(box, float), (h, w), rng)
            assert out.shape == (4,)
            assert 0 <= out[0] < out[2] <= w - 1 and 0 <= out[1] < out[3] <= h - 1, (box, out)


def test_jitter_box_edges_move_at_most_20_px():
    rng = np.random.default_rng(3)
    box = np.array([300.0, 350.0, 600.0, 550.0])  # sides 300 and 200: 10% noise is 30 and 20 px
    moves = np.stack([jitter_box(box, (1000, 1000), rng) - box for _ in range(2000)])
    assert np.abs(moves).max() <= 20.0 + 1e-9
    assert (np.abs(moves) > 19.5).mean() > 0.2  # the cap really is reached often


def test_jitter_box_noise_is_ten_percent_of_the_side():
    rng = np.random.default_rng(4)
    box = np.array([400.0, 400.0, 460.0, 440.0])  # width 60, height 40: std 6 and 4 px, far below the cap
    moves = np.stack([jitter_box(box, (1000, 1000), rng) - box for _ in range(4000)])
    std = moves.std(axis=0)
    np.testing.assert_allclose(std, [6, 4, 6, 4], rtol=0.1)
    assert np.abs(moves.mean(axis=0)).max() < 0.5
    assert abs(np.corrcoef(moves[:, 0], moves[:, 2])[0, 1]) < 0.1  # edges move independently


def rect_depth(y: int, x: int, y0: int, y1: int, x0: int, x1: int) -> int:
    """Distance from a pixel of an axis-aligned rectangle to the nearest pixel outside it."""
    return min(y - y0 + 1, y1 - y + 1, x - x0 + 1, x1 - x + 1)


@pytest.mark.parametrize("r", [(10, 29, 5, 44), (0, 15, 0, 59), (3, 3, 10, 40)])
def test_interior_point_of_a_rectangle_is_the_deepest(r):
    mask = rect(40, 60, *r)
    x, y = interior_point(mask).astype(int)
    assert mask[y, x]
    best = max(rect_depth(yy, xx, *r) for yy, xx in zip(*np.nonzero(mask)))
    assert rect_depth(y, x, *r) == best  # the image border counts as boundary in the second case


def test_interior_point_of_a_disk_is_its_centre():
    p = interior_point(disk(64, 64, 25, 38, 14))
    assert np.hypot(p[0] - 38, p[1] - 25) <= 1.0
    p = interior_point(disk(64, 64, 20, 20, 10) | rect(64, 64, 50, 52, 0, 63))  # big disk beats the thin bar
    assert np.hypot(p[0] - 20, p[1] - 20) <= 1.0


def test_correction_click_false_negative_region():
    gt = rect(60, 60, 10, 49, 10, 49)
    pred = gt.copy()
    pred[10:50, 30:50] = False  # a large miss: FN
    pred[0:3, 0:3] = True  # a small extra: FP
    fn = gt & ~pred
    point, label = correction_click(pred, gt)
    assert label == 1 and fn[int(point[1]), int(point[0])]
    assert rect_depth(int(point[1]), int(point[0]), 10, 49, 30, 49) == 10  # the middle of the missed band
    rng = np.random.default_rng(5)
    for _ in range(50):
        point, label = correction_click(pred, gt, rng)
        assert label == 1 and fn[int(point[1]), int(point[0])]


def test_correction_click_false_positive_region():
    gt = rect(60, 60, 10, 20, 10, 20)
    pred = gt | rect(60, 60, 30, 55, 25, 55)  # a large extra: FP
    pred[10:12, 10:12] = False  # a small miss: FN
    fp = pred & ~gt
    point, label = correction_click(pred, gt)
    assert label == 0 and fp[int(point[1]), int(point[0])]
    rng = np.random.default_rng(6)
    for _ in range(50):
        point, label = correction_click(pred, gt, rng)
        assert label == 0 and fp[int(point[1]), int(point[0])]


def test_correction_click_on_a_perfect_prediction():
    gt = disk(40, 40, 20, 20, 8)
    point, label = correction_click(gt.copy(), gt)
    assert label == 1 and np.hypot(point[0] - 20, point[1] - 20) <= 1.0


def test_empty_or_wrong_masks_raise():
    empty = np.zeros((10, 10), bool)
    rng = np.random.default_rng(0)
    for call in (lambda: mask_to_box(empty), lambda: sample_points(empty, 1, rng),
                 lambda: sample_negative_points(empty, 1, rng), lambda: interior_point(empty),
                 lambda: correction_click(empty, empty)):
        with pytest.raises(ValueError, match="empty"):
            call()
    with pytest.raises(ValueError, match="bool"):
        sample_points(np.ones((4, 4), np.uint8), 1, rng)
    with pytest.raises(ValueError, match="bool"):
        interior_point(np.ones((2, 4, 4), bool))
    with pytest.raises(ValueError, match="pred must be an HxW bool"):
        correction_click(np.ones((4, 4), np.uint8), np.ones((4, 4), bool))
    with pytest.raises(ValueError, match="same shape"):
        correction_click(np.ones((4, 4), bool), np.ones((4, 5), bool))
