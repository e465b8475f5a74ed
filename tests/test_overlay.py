"""Tests for overlays, label maps and atomic PNG writing."""

import os

import numpy as np
import pytest
from PIL import Image

from samforge.utils.atomic import atomic_path, atomic_write_bytes, save_png
from samforge.viz.overlay import (
    BOX_COLOR, NEGATIVE_COLOR, PALETTE, POSITIVE_COLOR, colorize_labels, draw_overlay,
    label_image)

GREY = 100


def _image(h: int = 64, w: int = 80) -> np.ndarray:
    return np.full((h, w, 3), GREY, dtype=np.uint8)


def _square(h: int = 64, w: int = 80, y0: int = 10, y1: int = 30, x0: int = 10,
            x1: int = 30) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def test_masks_blend_in_distinct_colours_and_leave_rest_alone():
    img = _image()
    m0, m1 = _square(), _square(y0=35, y1=60, x0=40, x1=75)
    out = draw_overlay(img, [m0, m1], alpha=0.5)
    assert out.shape == img.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(img, _image())  # input not modified
    for (y, x), color in (((20, 20), PALETTE[0]), ((47, 57), PALETTE[1])):  # interiors
        expected = (GREY + color.astype(int)) / 2
        assert np.abs(out[y, x].astype(int) - expected).max() <= 1
    assert not np.array_equal(out[20, 20], out[47, 57])  # two masks, two colours
    outside = ~(m0 | m1)
    assert (out[outside] == GREY).all()


def test_contour_is_brighter_than_fill():
    out = draw_overlay(_image(), _square(), alpha=0.5)
    edge, inner = out[10, 20].astype(int), out[20, 20].astype(int)
    assert edge.sum() > inner.sum()
    assert not np.array_equal(out[9, 20], edge)  # contour stays inside the mask
    assert (out[9, 20] == GREY).all()


def test_stacked_mask_array_and_custom_colours():
    masks = np.stack([_square(), _square(y0=40, y1=60, x0=40, x1=60)])
    out = draw_overlay(_image(), masks, alpha=1.0, colors=[(0, 0, 255), (255, 0, 0)])
    np.testing.assert_array_equal(out[20, 20], [0, 0, 255])
    np.testing.assert_array_equal(out[50, 50], [255, 0, 0])
    np.testing.assert_array_equal(out[2, 70], [GREY] * 3)


def test_points_are_green_and_red_at_their_location():
    img = _image(128, 128)
    out = draw_overlay(img, points=np.array([[30, 40], [90, 100]]), point_labels=[1, 0])
    np.testing.assert_array_equal(out[40, 30], POSITIVE_COLOR)
    np.testing.assert_array_equal(out[100, 90], NEGATIVE_COLOR)
    assert (out[5:20, 5:20] == GREY).all() and (out[60:80, 100:128] == GREY).all()
    # A white ring surrounds the dot.
    ys, xs = np.nonzero((out == 255).all(-1))
    assert len(ys) > 0 and np.hypot(xs - 30, ys - 40).min() < 8


def test_marker_size_scales_with_image():
    def marker_pixels(size: int) -> int:
        out = draw_overlay(_image(size, size), points=[[size // 2, size // 2]])
        return int((out != GREY).any(-1).sum())
    assert marker_pixels(512) > 4 * marker_pixels(128)


def test_points_default_to_positive():
    out = draw_overlay(_image(), points=[20, 30])
    np.testing.assert_array_equal(out[30, 20], POSITIVE_COLOR)


def test_boxes_are_drawn_on_their_edges():
    out = draw_overlay(_image(), boxes=[[10, 12, 50, 40], [55, 5, 70, 60]])
    for y, x in ((12, 30), (40, 30), (25, 10), (25, 50), (5, 60), (30, 70)):
        np.testing.assert_array_equal(out[y, x], BOX_COLOR)
    assert (out[20:35, 20:40] == GREY).all()  # inside stays untouched
    single = draw_overlay(_image(), boxes=np.array([10, 12, 50, 40]))
    np.testing.assert_array_equal(single[12, 30], BOX_COLOR)


def test_label_image_and_colorize():
    a, b = _square(), _square(y0=20, y1=40, x0=20, x1=40)
    lab = label_image([a, b])
    assert lab.dtype == np.uint16 and lab.shape == a.shape
    assert lab[15, 15] == 1 and lab[25, 25] == 2 and lab[35, 35] == 2 and lab[50, 70] == 0
    np.testing.assert_array_equal(label_image(a), a.astype(np.uint16))
    assert label_image(np.zeros((0, 8, 8), bool)).shape == (8, 8)
    col = colorize_labels(np.array([[0, 1], [2, len(PALETTE) + 1]]))
    assert col.dtype == np.uint8 and col.shape == (2, 2, 3)
    np.testing.assert_array_equal(col[0, 0], [0, 0, 0])
    np.testing.assert_array_equal(col[0, 1], PALETTE[0])
    np.testing.assert_array_equal(col[1, 0], PALETTE[1])
    np.testing.assert_array_equal(col[1, 1], PALETTE[0])  # palette cycles


@pytest.mark.parametrize("call, exc", [
    (lambda: draw_overlay(_image().astype(np.float32)), ValueError),
    (lambda: draw_overlay(_image()[..., 0]), ValueError),
    (lambda: draw_overlay(_image().tolist()), TypeError),
    (lambda: draw_overlay(_image(), masks=np.zeros((32, 32), bool)), ValueError),
    (lambda: draw_overlay(_image(), masks=np.full((64, 80), 0.3)), ValueError),
    (lambda: draw_overlay(_image(), masks=np.zeros((1, 1, 64, 80), bool)), ValueError),
    (lambda: draw_overlay(_image(), points=np.zeros((2, 3))), ValueError),
    (lambda: draw_overlay(_image(), points=np.zeros((2, 2)), point_labels=[1]), ValueError),
    (lambda: draw_overlay(_image(), points=np.zeros((1, 2)), point_labels=[2]), ValueError),
    (lambda: draw_overlay(_image(), boxes=[30, 10, 20, 40]), ValueError),
    (lambda: draw_overlay(_image(), boxes=np.zeros((2, 5))), ValueError),
    (lambda: draw_overlay(_image(), alpha=1.5), ValueError),
    (lambda: draw_overlay(_image(), colors=[(1, 2)]), ValueError),
    (lambda: colorize_labels(np.zeros((4, 4), np.float32)), ValueError),
    (lambda: colorize_labels(np.full((4, 4), -1)), ValueError),
])
def test_bad_inputs_raise(call, exc):
    with pytest.raises(exc, match="expected.*got"):
        call()


def _leftovers(folder) -> list:
    return sorted(p for p in os.listdir(folder) if ".tmp-" in p)


@pytest.mark.parametrize("shape", [(20, 30), (20, 30, 3), (20, 30, 4)])
def test_save_png_round_trip(tmp_path, shape):
    arr = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    path = tmp_path / "out.png"
    save_png(arr, path)
    with Image.open(path) as im:
        assert im.format == "PNG"
        np.testing.assert_array_equal(np.asarray(im), arr)
    assert os.listdir(tmp_path) == ["out.png"]


def test_save_png_rejects_bad_arrays_and_keeps_old_file(tmp_path):
    path = tmp_path / "out.png"
    save_png(np.zeros((4, 4), np.uint8), path)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="uint8.*got float"):
        save_png(np.zeros((4, 4), np.float64), path)
    with pytest.raises(ValueError, match="HxW.*got \\(4, 4, 2\\)"):
        save_png(np.zeros((4, 4, 2), np.uint8), path)
    with pytest.raises(TypeError, match="numpy array"):
        save_png([[0]], path)
    assert path.read_bytes() == before and _leftovers(tmp_path) == []


def test_failing_write_leaves_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "out.png"
    save_png(np.zeros((4, 4), np.uint8), path)
    before = path.read_bytes()

    def broken_save(self, fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_png(np.full((8, 8), 255, np.uint8), path)
    assert path.read_bytes() == before and _leftovers(tmp_path) == []


def test_atomic_path_and_write_bytes(tmp_path):
    path = tmp_path / "data.bin"
    atomic_write_bytes(path, b"first")
    assert path.read_bytes() == b"first"
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            assert tmp.parent == path.parent and tmp.name.startswith(".data.bin.tmp-")
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert path.read_bytes() == b"first" and _leftovers(tmp_path) == []
    with atomic_path(path) as tmp:
        tmp.write_bytes(b"second")
    assert path.read_bytes() == b"second" and os.listdir(tmp_path) == ["data.bin"]
    with pytest.raises(TypeError, match="bytes"):
        atomic_write_bytes(path, "text")
