"""Tests for the built-in synthetic scene generator."""

import numpy as np
import pytest

from samforge.data.synthetic import (
    SHAPE_KINDS, MIN_VISIBLE_FRACTION, SyntheticScene, make_scene, make_scenes)


def _check_scene(scene: SyntheticScene, h: int, w: int, max_objects: int = 6) -> None:
    assert isinstance(scene, SyntheticScene)
    assert scene.image.shape == (h, w, 3) and scene.image.dtype == np.uint8
    k = scene.masks.shape[0]
    assert scene.masks.shape == (k, h, w) and scene.masks.dtype == bool
    assert 1 <= k <= max_objects
    assert len(scene.shapes) == k and set(scene.shapes) <= set(SHAPE_KINDS)
    areas = scene.masks.sum(axis=(1, 2))
    assert (areas >= MIN_VISIBLE_FRACTION * h * w).all() and (areas > 0).all()
    # Visible masks after occlusion never overlap.
    assert scene.masks.sum(axis=0).max() <= 1


def test_deterministic():
    a, b = make_scene(3), make_scene(3)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.masks, b.masks)
    assert a.shapes == b.shapes


def test_different_seeds_differ():
    scenes = make_scenes(4, seed=10, image_size=(64, 64))
    for i in range(4):
        for j in range(i + 1, 4):
            assert not np.array_equal(scenes[i].image, scenes[j].image)
    assert len({s.masks.tobytes() for s in scenes}) == 4


def test_make_scenes_uses_consecutive_seeds():
    scenes = make_scenes(3, seed=5, image_size=(48, 64), num_objects=(2, 4))
    assert len(scenes) == 3
    ref = make_scene(6, image_size=(48, 64), num_objects=(2, 4))
    np.testing.assert_array_equal(scenes[1].image, ref.image)
    np.testing.assert_array_equal(scenes[1].masks, ref.masks)
    assert make_scenes(0) == []


def test_default_scene_properties():
    for seed in range(6):
        _check_scene(make_scene(seed), 256, 256)


@pytest.mark.parametrize("size", [(32, 32), (48, 200), (300, 40), (100, 131)])
def test_non_square_and_small_sizes(size):
    for seed in range(3):
        _check_scene(make_scene(seed, image_size=size), *size)


def test_num_objects_bounds_and_variety():
    counts, kinds = [], set()
    for seed in range(30):
        scene = make_scene(seed, image_size=(96, 96), num_objects=(2, 3))
        _check_scene(scene, 96, 96, max_objects=3)
        counts.append(len(scene.shapes))
        kinds |= set(scene.shapes)
    assert set(counts) >= {2, 3}  # both ends of the range occur
    assert kinds == set(SHAPE_KINDS)  # every kind of shape shows up
    assert all(len(make_scene(s, image_size=(64, 64), num_objects=1).shapes) == 1
               for s in range(3))


def test_masks_follow_image_edges():
    """Mask boundaries are real edges in the image: objects are visibly separable."""
    for seed in range(5):
        scene = make_scene(seed, image_size=(128, 128))
        lab = (scene.masks * np.arange(1, len(scene.masks) + 1)[:, None, None]).sum(0)
        grad = np.abs(np.diff(scene.image.astype(np.float64), axis=1)).sum(-1)
        edge = lab[:, 1:] != lab[:, :-1]
        assert grad[edge].mean() > 3 * grad[~edge].mean()


def test_objects_have_distinct_colours():
    scene = make_scene(1)
    means = np.array([scene.image[m].mean(0) for m in scene.masks])
    dists = np.linalg.norm(means[:, None] - means[None], axis=-1)
    assert dists[np.triu_indices(len(means), 1)].min() > 10


@pytest.mark.parametrize("kwargs", [
    dict(seed=-1), dict(seed=1.5), dict(seed=True), dict(seed="0"),
    dict(seed=0, image_size=(31, 64)), dict(seed=0, image_size=(64,)),
    dict(seed=0, image_size=(64.0, 64)), dict(seed=0, image_size="64"),
    dict(seed=0, num_objects=(0, 3)), dict(seed=0, num_objects=(4, 2)),
    dict(seed=0, num_objects=(1, 2, 3)), dict(seed=0, num_objects=0),
])
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError, match="expected.*got"):
        make_scene(**kwargs)


def test_make_scenes_bad_n():
    with pytest.raises(ValueError, match="expected"):
        make_scenes(-1)


def _erode(m: np.ndarray) -> np.ndarray:
    """Binary erosion by a 3x3 square (outside the image counts as background)."""
    p = np.pad(m, 1)
    return np.logical_and.reduce([p[dy:dy + m.shape[0], dx:dx + m.shape[1]] for dy in range(3) for dx in range(3)])


def test_thin_objects_are_a_few_pixels_wide():
    thin = other = 0
    for seed in range(30):
        scene = make_scene(seed, image_size=(128, 128))
        for mask, kind in zip(scene.masks, scene.shapes):
            gone = not _erode(_erode(mask)).any()  # at most ~4 px across everywhere
            if kind == "thin":
                assert gone, (seed, mask.sum())
                thin += 1
            other += not gone
    assert thin >= 5 and other >= 50  # thin ones do occur, and the other kinds are not thin
