"""Medical inputs: NIfTI volumes sliced into samples, and the synthetic medical-like scenes."""

from __future__ import annotations

import pickle
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from samforge.data.bad_samples import summarize_bad_samples
from samforge.data.nifti_dataset import NiftiDataset, scale_to_uint8
from samforge.data.readers import open_dataset
from samforge.data.synthetic import MIN_VISIBLE_FRACTION, SyntheticScene, make_scene
from samforge.data.synthetic_dataset import SyntheticDataset
from samforge.data.synthetic_medical import make_medical_scene

SHAPE = (6, 7, 5)  # X, Y, Z


def label_volume(shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """Labels 1 and 2 in slice z=1, label 5 in slice z=3 (the other z slices are empty)."""
    lab = np.zeros(shape, dtype=np.uint8)
    lab[1:3, 2:4, 1] = 1
    lab[3:5, 1:2, 1] = 2
    lab[0:2, 5:7, 3] = 5
    return lab


def image_volume(shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape) * 3.0 - 100.0


def save_nii(arr: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(path))
    return path


def write_pair(root: Path, name: str, image: np.ndarray | None = None, label: np.ndarray | None = None,
               image_name: str | None = None) -> tuple[Path, Path]:
    img = save_nii(image_volume() if image is None else image, root / "images" / (image_name or name))
    lab = save_nii(label_volume() if label is None else label, root / "labels" / name)
    return img, lab


def expected_slices(lab: np.ndarray, axis: int) -> list[tuple[int, np.ndarray]]:
    """(z, KxHxW masks) for every slice along ``axis`` with an object, computed slice by slice."""
    out = []
    for z in range(lab.shape[axis]):
        sl = lab[(slice(None),) * axis + (z,)]
        values = sorted(set(sl.ravel().tolist()) - {0})
        if values:
            out.append((z, np.stack([sl == v for v in values])))
    return out


def adjacent(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two disjoint masks touch (4-neighbourhood)."""
    grown = a.copy()
    grown[1:] |= a[:-1]
    grown[:-1] |= a[1:]
    grown[:, 1:] |= a[:, :-1]
    grown[:, :-1] |= a[:, 1:]
    return bool((grown & b).any())


def ring(mask: np.ndarray, width: int) -> np.ndarray:
    """The pixels within ``width`` (4-steps) of ``mask``, outside it."""
    grown = mask.copy()
    for _ in range(width):
        g = grown.copy()
        g[1:] |= grown[:-1]
        g[:-1] |= grown[1:]
        g[:, 1:] |= grown[:, :-1]
        g[:, :-1] |= grown[:, 1:]
        grown = g
    return grown & ~mask


# ------------------------------------------------------------------------------------------------ NIfTI
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slices_along_each_axis(tmp_path, axis):
    img_path, _ = write_pair(tmp_path, "case01.nii.gz")
    ds = NiftiDataset(tmp_path, axis=axis)
    want = expected_slices(label_volume(), axis)
    assert len(ds) == len(want) and ds.bad_samples == [] and ds.num_volumes == 1
    assert ds.skipped_empty_slices == SHAPE[axis] - len(want)
    assert ds.names == [f"{img_path}[axis={axis},z={z}]" for z, _ in want]
    for i, (z, masks) in enumerate(want):
        s = ds[i]
        assert s.name == ds.names[i]
        np.testing.assert_array_equal(s.masks, masks)
        other = [d for d in range(3) if d != axis]
        assert s.image.shape == (SHAPE[other[0]], SHAPE[other[1]], 3) and s.image.dtype == np.uint8
        assert (s.image[..., 0] == s.image[..., 1]).all() and (s.image[..., 0] == s.image[..., 2]).all()
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_axial_slices_by_hand_and_empty_slices_counted(tmp_path):
    write_pair(tmp_path, "a.nii.gz")
    ds = NiftiDataset(tmp_path)  # axis 2 by default
    lab = label_volume()
    assert len(ds) == 2 and ds.skipped_empty_slices == 3
    np.testing.assert_array_equal(ds[0].masks, np.stack([lab[..., 1] == 1, lab[..., 1] == 2]))
    np.testing.assert_array_equal(ds[1].masks, (lab[..., 3] == 5)[None])
    assert ds[0].name.endswith("a.nii.gz[axis=2,z=1]") and ds[1].name.endswith("a.nii.gz[axis=2,z=3]")
    assert "3 empty slices skipped" in repr(ds) and "2 slices from 1 volume," in repr(ds)
    only5 = NiftiDataset(tmp_path, labels=[5])
    assert len(only5) == 1 and only5.skipped_empty_slices == 4 and only5.names[0].endswith("z=3]")
    with pytest.raises(ValueError, match=r"no object with one of the labels \[7\]"):
        NiftiDataset(tmp_path, labels=[7])


def test_ct_window_maps_known_values(tmp_path):
    img = np.zeros(SHAPE, dtype=np.int16)
    img[0, :5, 1] = [-1000, -160, 40, 140, 240]
    img[1, :2, 1] = [1000, 3000]
    write_pair(tmp_path, "ct.nii.gz", image=img)
    s = NiftiDataset(tmp_path, window=(40, 400))[0]  # z = 1
    g = s.image[..., 0].astype(int)
    assert g[0, :2].tolist() == [0, 0] and abs(g[0, 2] - 128) <= 1 and g[0, 3] == 191 and g[0, 4] == 255
    assert g[1, :2].tolist() == [255, 255]
    assert g[2, 0] == round(160 / 400 * 255)  # HU 0


def test_window_uses_the_headers_scaling(tmp_path):
    raw = np.zeros(SHAPE, dtype=np.int16)
    raw[0, 0, 1], raw[0, 1, 1] = 864, 1264  # stored + intercept -1024: HU -160 and 240
    nii = nib.Nifti1Image(raw, np.eye(4))
    nii.header.set_slope_inter(1.0, -1024.0)
    (tmp_path / "images").mkdir()
    nib.save(nii, str(tmp_path / "images" / "s.nii.gz"))
    save_nii(label_volume(), tmp_path / "labels" / "s.nii.gz")
    g = NiftiDataset(tmp_path, window=(40, 400))[0].image[..., 0]
    assert g[0, 0] == 0 and g[0, 1] == 255


def test_percentile_normalisation(tmp_path):
    vol = image_volume()
    write_pair(tmp_path, "mr.nii", image=vol)
    lo, hi = np.percentile(vol, [0.5, 99.5])
    ds = NiftiDataset(tmp_path)
    want = np.clip(np.round((vol[..., 1] - lo) / (hi - lo) * 255), 0, 255)
    np.testing.assert_allclose(ds[0].image[..., 0], want, atol=1)
    full = NiftiDataset(tmp_path, percentiles=(0, 100))[0].image[..., 0].astype(float)
    np.testing.assert_allclose(full, np.round((vol[..., 1] - vol.min()) / np.ptp(vol) * 255), atol=1)
    assert scale_to_uint8(np.full((2, 2), 7.0), 7.0, 7.0).tolist() == [[0, 0], [0, 0]]  # constant volume


def test_nnunet_naming_explicit_pairs_and_cache(tmp_path):
    a_img, a_lab = write_pair(tmp_path, "case01.nii.gz", image_name="case01_0000.nii.gz")
    b_img, b_lab = write_pair(tmp_path, "case02.nii.gz", image_name="case02_0000.nii.gz")
    ds = NiftiDataset(tmp_path)
    assert ds.bad_samples == [] and ds.num_volumes == 2 and len(ds) == 4
    assert ds.names[0] == f"{a_img}[axis=2,z=1]" and ds.names[2] == f"{b_img}[axis=2,z=1]"
    ds[0], ds[3]
    assert ds._cache is not None and ds._cache[0] == 1  # only the last opened volume is held
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._cache is None
    np.testing.assert_array_equal(clone[1].masks, ds[1].masks)
    pairs = NiftiDataset([(b_img, b_lab)], axis=0)
    assert len(pairs) == 5 and pairs.names[0].startswith(str(b_img))


def test_float_labels_and_trailing_singleton_dimension(tmp_path):
    write_pair(tmp_path, "f.nii.gz", image=image_volume()[..., None], label=label_volume().astype(np.float32))
    ds = NiftiDataset(tmp_path)
    assert len(ds) == 2 and ds.bad_samples == []


def test_bad_pairs_reported(tmp_path):
    write_pair(tmp_path, "good.nii.gz")
    mis_img, mis_lab = write_pair(tmp_path, "mismatch.nii.gz", label=label_volume((6, 7, 4)))
    four_d, _ = write_pair(tmp_path, "fourd.nii.gz", image=np.zeros(SHAPE + (2,), dtype=np.float32))
    lonely = save_nii(image_volume(), tmp_path / "images" / "nolabel.nii.gz")
    orphan = save_nii(label_volume(), tmp_path / "labels" / "orphan.nii.gz")
    (tmp_path / "images" / "broken.nii.gz").write_bytes(b"not a nifti file")
    save_nii(label_volume(), tmp_path / "labels" / "broken.nii.gz")
    write_pair(tmp_path, "empty.nii.gz", label=np.zeros(SHAPE, dtype=np.uint8))
    ds = NiftiDataset(tmp_path)
    assert len(ds) == 2 and ds.num_volumes == 1
    bad = {Path(b.path).name: b for b in ds.bad_samples}
    assert set(bad) == {"mismatch.nii.gz", "fourd.nii.gz", "nolabel.nii.gz", "orphan.nii.gz", "broken.nii.gz",
                        "empty.nii.gz"}
    assert str(mis_img) in str(bad["mismatch.nii.gz"]) and str(mis_lab) in str(bad["mismatch.nii.gz"])
    assert "(6, 7, 5)" in bad["mismatch.nii.gz"].reason and "(6, 7, 4)" in bad["mismatch.nii.gz"].reason
    assert bad["fourd.nii.gz"].path == str(four_d) and "expected a 3D volume, got 4D" in bad["fourd.nii.gz"].reason
    assert bad["nolabel.nii.gz"].path == str(lonely) and "no label file" in bad["nolabel.nii.gz"].reason
    assert bad["orphan.nii.gz"].path == str(orphan) and "no image" in bad["orphan.nii.gz"].reason
    assert "unreadable NIfTI" in bad["broken.nii.gz"].reason
    assert "has no object in its 5 slices along axis 2" in bad["empty.nii.gz"].reason
    assert "6 bad sample" in summarize_bad_samples(ds)


def test_data_corrupt_beyond_the_header_raises_on_read(tmp_path):
    img, _ = write_pair(tmp_path, "t.nii.gz", image=np.random.default_rng(0).random((16, 16, 8), dtype=np.float32),
                        label=label_volume((16, 16, 8)))
    img.write_bytes(img.read_bytes()[:-2000])  # the header survives, the data does not
    ds = NiftiDataset(tmp_path)
    with pytest.raises(ValueError, match=r"t.nii.gz: unreadable NIfTI data"):
        ds[0]


def test_all_bad_folder_raises(tmp_path):
    write_pair(tmp_path, "a.nii.gz", label=label_volume((6, 7, 4)))
    with pytest.raises(ValueError, match=r"no usable NIfTI slices(.|\n)*a.nii.gz(.|\n)*differs from label"):
        NiftiDataset(tmp_path)
    with pytest.raises(ValueError, match=r"expected images/ and labels/"):
        NiftiDataset(tmp_path / "images")
    with pytest.raises(FileNotFoundError):
        NiftiDataset(tmp_path / "nope")


@pytest.mark.parametrize("kw,match", [
    (dict(axis=3), "axis"), (dict(window=(40, 0)), "width > 0"), (dict(window=(40,)), "window"),
    (dict(window=(40, 400), percentiles=(1, 99)), "not both"), (dict(percentiles=(99, 1)), "percentiles"),
    (dict(labels=[0]), "nonzero"), (dict(labels=[]), "labels")])
def test_bad_arguments(tmp_path, kw, match):
    write_pair(tmp_path, "a.nii.gz")
    with pytest.raises(ValueError, match=match):
        NiftiDataset(tmp_path, **kw)


def test_open_dataset_recognises_nifti_folder(tmp_path):
    write_pair(tmp_path, "a.nii.gz")
    (tmp_path / "labels").rename(tmp_path / "masks")
    ds = open_dataset(tmp_path)
    assert isinstance(ds, NiftiDataset) and len(ds) == 2 and ds.axis == 2 and ds.percentiles == (0.5, 99.5)
    (tmp_path / "masks").rename(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="labels/"):
        open_dataset(str(tmp_path))


# ------------------------------------------------------------------------------------ synthetic medical
def test_medical_scene_deterministic_and_seeds_differ():
    a, b = make_medical_scene(3, image_size=(96, 96)), make_medical_scene(3, image_size=(96, 96))
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.masks, b.masks)
    others = [make_medical_scene(s, image_size=(96, 96)) for s in (4, 5)]
    assert all(not np.array_equal(a.image, o.image) for o in others)
    assert len({a.masks.tobytes()} | {o.masks.tobytes() for o in others}) == 3


@pytest.mark.parametrize("size", [(128, 128), (32, 32), (48, 200), (300, 40)])
def test_medical_scene_properties(size):
    h, w = size
    for seed in range(4):
        scene = make_medical_scene(seed, image_size=size)
        assert isinstance(scene, SyntheticScene)
        assert scene.image.shape == (h, w, 3) and scene.image.dtype == np.uint8
        assert (scene.image[..., 0] == scene.image[..., 1]).all() and (scene.image[..., 0] == scene.image[..., 2]).all()
        k = len(scene.masks)
        assert 1 <= k <= 5 and scene.masks.shape == (k, h, w) and scene.masks.dtype == bool
        assert scene.shapes == ["organ"] * k
        assert scene.masks.sum(axis=0).max() <= 1
        assert (scene.masks.sum(axis=(1, 2)) >= MIN_VISIBLE_FRACTION * h * w).all()


def test_medical_objects_touch_and_have_low_contrast():
    touching, diffs, default_diffs = 0, [], []
    for seed in range(4):
        scene = make_medical_scene(seed, image_size=(128, 128))
        masks = scene.masks
        touching += any(adjacent(masks[i], masks[j]) for i in range(len(masks)) for j in range(i + 1, len(masks)))
        g = scene.image[..., 0].astype(float)
        diffs += [abs(g[m].mean() - g[ring(m, 4)].mean()) for m in masks]
        ref = make_scene(seed, image_size=(128, 128))
        gd = ref.image.astype(float).mean(axis=2)
        default_diffs += [abs(gd[m].mean() - gd[ring(m, 4)].mean()) for m in ref.masks]
    assert touching >= 2
    assert max(diffs) < 60 and np.median(diffs) < 40
    assert np.median(diffs) < np.median(default_diffs)  # a lower-contrast domain than the default scenes


@pytest.mark.parametrize("kw", [dict(seed=-1), dict(seed=0, num_objects=(0, 2)), dict(seed=0, image_size=(16, 64))])
def test_medical_scene_bad_arguments(kw):
    with pytest.raises(ValueError):
        make_medical_scene(**kw)


def test_open_synthetic_medical():
    ds = open_dataset("synthetic-medical:3:48x64:7")
    assert isinstance(ds, SyntheticDataset) and ds.kind == "medical"
    assert len(ds) == 3 and ds.image_size == (48, 64) and ds.bad_samples == []
    assert ds.names == ["synthetic-medical:7", "synthetic-medical:8", "synthetic-medical:9"]
    ref = make_medical_scene(8, image_size=(48, 64))
    s = ds[1]
    np.testing.assert_array_equal(s.image, ref.image)
    np.testing.assert_array_equal(s.masks, ref.masks)
    assert s.name == "synthetic-medical:8"
    default = open_dataset("synthetic-medical")
    assert len(default) == 64 and default.image_size == (256, 256) and default.num_objects == (2, 5)
    plain = open_dataset("synthetic:2:48:3")  # the default kind is unchanged
    assert plain.kind == "default" and plain.names == ["synthetic:3", "synthetic:4"]
    np.testing.assert_array_equal(plain[0].image, make_scene(3, image_size=(48, 48)).image)


@pytest.mark.parametrize("spec", ["synthetic-medical:0", "synthetic-medical:x", "synthetic-medical:4:16",
                                  "synthetic-medical:4:64:1:2", "synthetic-medicals", "synthetic-medical:"])
def test_bad_synthetic_medical_specs(spec):
    with pytest.raises((ValueError, FileNotFoundError), match="synthetic-medical|not found"):
        open_dataset(spec)


def test_synthetic_dataset_bad_kind():
    with pytest.raises(ValueError, match="kind"):
        SyntheticDataset(2, kind="ultrasound")
