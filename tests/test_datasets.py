"""Dataset readers: every on-disk format read back exactly, bad samples reported and skipped, dispatch."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from samforge.cli.synth import write_scenes
from samforge.data.coco_dataset import CocoDataset
from samforge.data.mask_folder import MaskFolderDataset
from samforge.data.npz_dataset import NpzDataset
from samforge.data.readers import open_dataset, summarize_bad_samples
from samforge.data.sample import Sample
from samforge.data.synthetic import make_scene
from samforge.data.synthetic_dataset import SyntheticDataset

H, W = 24, 32

# pycocotools' decode (its compiled part) trips a numpy 2 deprecation; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def rgb(seed: int, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(arr: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def label_map(dtype=np.uint8, values=(3, 7, 200)) -> np.ndarray:
    """Three objects (the values given) on background 0, in three vertical bands of rows."""
    lab = np.zeros((H, W), dtype=dtype)
    lab[2:6, 3:10] = values[0]
    lab[10:15, 5:25] = values[1]
    lab[18:22, 20:30] = values[2]
    return lab


def expected_masks(lab: np.ndarray, values) -> np.ndarray:
    return np.stack([lab == v for v in values])


def check_sample(s: Sample, image: np.ndarray, masks: np.ndarray, name: str | None = None) -> None:
    assert isinstance(s, Sample)
    np.testing.assert_array_equal(s.image, image)
    assert s.masks.dtype == bool and s.masks.shape == masks.shape
    np.testing.assert_array_equal(s.masks, masks)
    if name is not None:
        assert s.name == name


# ------------------------------------------------------------------------------------------- mask folders
@pytest.mark.parametrize("dtype,values", [(np.uint8, (3, 7, 200)), (np.uint16, (1, 300, 65535))])
def test_label_png_8_and_16_bit(tmp_path, dtype, values):
    lab = label_map(dtype, values[::-1])  # written in reverse: masks come back ordered by label value
    img = save(rgb(0), tmp_path / "images" / "a.png")
    save(lab, tmp_path / "masks" / "a.png")
    with Image.open(tmp_path / "masks" / "a.png") as im:
        assert im.mode == ("L" if dtype == np.uint8 else "I;16")
    ds = MaskFolderDataset(tmp_path)
    assert len(ds) == 1 and ds.bad_samples == [] and ds.names == [str(img)]
    check_sample(ds[0], rgb(0), expected_masks(lab, values), name=str(img))
    with pytest.raises(IndexError):
        ds[1]


def test_labels_folder_and_16bit_grayscale_image(tmp_path):
    gray = (np.arange(H * W, dtype=np.uint16).reshape(H, W) * 50)
    save(gray, tmp_path / "images" / "g.png")
    lab = label_map()
    save(lab, tmp_path / "labels" / "g.png")
    s = MaskFolderDataset(tmp_path)[0]
    assert s.image.shape == (H, W, 3) and s.image.min() == 0 and s.image.max() == 255
    np.testing.assert_array_equal(s.image[..., 0], s.image[..., 2])
    np.testing.assert_array_equal(s.masks, expected_masks(lab, (3, 7, 200)))


def test_rgb_label_png_each_colour_is_an_instance(tmp_path):
    lab = np.zeros((H, W, 3), np.uint8)
    lab[1:5, 1:5] = (255, 0, 0)
    lab[6:9, 1:20] = (0, 0, 255)
    lab[12:20, 10:14] = (0, 255, 0)
    lab[12:20, 14:18] = (0, 255, 1)  # a different colour, touching: a separate instance
    save(rgb(1), tmp_path / "images" / "c.png")
    save(lab, tmp_path / "masks" / "c.png")
    s = MaskFolderDataset(tmp_path)[0]
    packed = (lab[..., 0].astype(int) << 16) | (lab[..., 1].astype(int) << 8) | lab[..., 2]
    order = sorted(set(np.unique(packed)) - {0})  # packed colour order: blue, green, green+1, red
    assert len(order) == 4
    np.testing.assert_array_equal(s.masks, np.stack([packed == v for v in order]))


def test_per_object_png_folders(tmp_path):
    save(rgb(2), tmp_path / "images" / "p.png")
    objs = {}
    for name, (ys, xs) in {"obj1.png": (slice(0, 5), slice(0, 5)), "obj10.png": (slice(8, 12), slice(2, 30)),
                           "obj2.png": (slice(3, 20), slice(20, 25))}.items():
        m = np.zeros((H, W), np.uint8)
        m[ys, xs] = 255 if name != "obj2.png" else 1  # any nonzero value marks the object
        objs[name] = save(m, tmp_path / "masks" / "p" / name)
    save(np.zeros((H, W), np.uint8), tmp_path / "masks" / "p" / "obj3.png")  # empty: dropped, counted
    ds = MaskFolderDataset(tmp_path)
    assert len(ds) == 1 and ds.bad_samples == [] and ds.dropped_objects == 1
    want = np.stack([np.asarray(Image.open(objs[n])) > 0 for n in ("obj1.png", "obj2.png", "obj10.png")])
    check_sample(ds[0], rgb(2), want)


def test_synth_output_round_trip(tmp_path):
    write_scenes(tmp_path, 4, (40, 56), 11)
    ds = MaskFolderDataset(tmp_path)
    assert len(ds) == 4 and ds.bad_samples == []
    for i in range(4):
        scene = make_scene(11 + i, image_size=(40, 56))
        check_sample(ds[i], scene.image, scene.masks, name=str(tmp_path / "images" / f"{i:05d}.png"))


def make_bad_folder(root: Path) -> dict[str, str]:
    """Two good samples and one of each kind of bad one; returns {bad path: expected reason word}."""
    for stem in ("good1", "good2"):
        save(rgb(3), root / "images" / f"{stem}.png")
        save(label_map(), root / "masks" / f"{stem}.png")
    bad = {}
    (root / "images" / "notimage.png").write_bytes(b"this is not a png")
    save(label_map(), root / "masks" / "notimage.png")
    bad[str(root / "images" / "notimage.png")] = "unreadable"
    full = (root / "images" / "trunc.png")
    save(rgb(4, 64, 64), full)
    full.write_bytes(full.read_bytes()[:-200])
    save(np.ones((64, 64), np.uint8), root / "masks" / "trunc.png")
    bad[str(full)] = "unreadable"
    save(rgb(5), root / "images" / "truncmask.png")
    m = save(label_map(), root / "masks" / "truncmask.png")
    m.write_bytes(m.read_bytes()[:60])
    bad[str(m)] = "unreadable"
    save(rgb(6), root / "images" / "size.png")
    bad[str(save(np.ones((H + 1, W), np.uint8), root / "masks" / "size.png"))] = "differs"
    save(rgb(7), root / "images" / "empty.png")
    bad[str(save(np.zeros((H, W), np.uint16), root / "masks" / "empty.png"))] = "no object"
    bad[str(save(rgb(8), root / "images" / "nomask.png"))] = "no mask"
    save(rgb(9), root / "images" / "emptydir.png")
    save(np.zeros((H, W), np.uint8), root / "masks" / "emptydir" / "0.png")
    bad[str(root / "masks" / "emptydir")] = "no non-empty"
    bad[str(save(label_map(), root / "masks" / "orphan.png"))] = "no image"
    return bad


def test_bad_samples_reported_counted_and_skipped(tmp_path):
    bad = make_bad_folder(tmp_path)
    ds = MaskFolderDataset(tmp_path)
    assert len(ds) == 2 and [Path(n).name for n in ds.names] == ["good1.png", "good2.png"]
    got = {b.path: b.reason for b in ds.bad_samples}
    assert set(got) == set(bad) and len(ds.bad_samples) == len(bad)
    for path, word in bad.items():
        assert word in got[path], (path, got[path])
    assert ds.dropped_objects == 1  # the empty object file of emptydir/
    for i in range(len(ds)):
        check_sample(ds[i], rgb(3), expected_masks(label_map(), (3, 7, 200)))
    report = summarize_bad_samples(ds)
    assert report.splitlines()[0].startswith(f"2 samples usable, {len(bad)} bad samples skipped")
    assert all(p in report for p in bad)


def test_summary_lists_at_most_ten(tmp_path):
    save(rgb(0), tmp_path / "images" / "ok.png")
    save(label_map(), tmp_path / "masks" / "ok.png")
    for i in range(13):
        save(rgb(0), tmp_path / "images" / f"m{i}.png")
    report = summarize_bad_samples(MaskFolderDataset(tmp_path))
    lines = report.splitlines()
    assert lines[0] == "1 samples usable, 13 bad samples skipped"
    assert len(lines) == 12 and lines[-1].strip() == "... and 3 more"


def test_all_bad_raises_with_reasons(tmp_path):
    save(rgb(0), tmp_path / "images" / "a.png")
    save(np.zeros((H, W), np.uint8), tmp_path / "masks" / "a.png")
    save(rgb(0), tmp_path / "images" / "b.png")
    with pytest.raises(ValueError, match=r"all 2 found were bad(.|\n)*no object(.|\n)*no mask"):
        MaskFolderDataset(tmp_path)
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "masks").mkdir()
    with pytest.raises(ValueError, match="no images"):
        MaskFolderDataset(tmp_path / "empty")
    with pytest.raises(ValueError, match="expected images/ and masks/"):
        MaskFolderDataset(tmp_path / "empty" / "images")


# ---------------------------------------------------------------------------------------------------- npz
def scale(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.round((v.astype(np.float64) - lo) / (hi - lo) * 255).astype(np.uint8)


def test_npz_2d_uint16_and_rgb(tmp_path):
    imgs = (np.arange(H * W, dtype=np.uint16).reshape(H, W) * 7 + 1000)
    gts = label_map(np.uint8, (5, 1, 2))
    np.savez_compressed(tmp_path / "a.npz", imgs=imgs, gts=gts)
    ds = NpzDataset(tmp_path / "a.npz")
    want = np.repeat(scale(imgs, imgs.min(), imgs.max())[..., None], 3, axis=2)
    check_sample(ds[0], want, expected_masks(gts, (1, 2, 5)), name=str(tmp_path / "a.npz"))
    np.savez(tmp_path / "b.npz", imgs=rgb(1), gts=gts)  # uint8 RGB passes through untouched
    ds = NpzDataset(tmp_path / "b.npz")
    ds[0].image[:] = 0  # a caller changing its sample in place does not change the next one
    check_sample(ds[0], rgb(1), expected_masks(gts, (1, 2, 5)))
    clone = pickle.loads(pickle.dumps(ds))  # as DataLoader workers receive it: without the cached arrays
    assert clone._cache is None and clone.names == ds.names
    check_sample(clone[0], rgb(1), expected_masks(gts, (1, 2, 5)))


def test_npz_3d_volume_slices_with_objects(tmp_path):
    d = 5
    rng = np.random.default_rng(0)
    imgs = rng.integers(100, 3000, (d, H, W)).astype(np.uint16)
    imgs[0, 0, 0], imgs[4, 1, 1] = 7, 60000  # the volume's extremes lie in slices without objects
    gts = np.zeros((d, H, W), np.uint8)
    gts[1, 2:6, 2:6] = 4
    gts[3] = label_map(np.uint8, (1, 9, 2))
    path = tmp_path / "vol.npz"
    np.savez_compressed(path, imgs=imgs, gts=gts)
    ds = NpzDataset(path)
    assert len(ds) == 2 and ds.names == [f"{path}[1]", f"{path}[3]"]
    for i, z in enumerate((1, 3)):
        want_img = np.repeat(scale(imgs[z], 7, 60000)[..., None], 3, axis=2)  # per-volume min/max
        values = sorted(set(np.unique(gts[z])) - {0})
        check_sample(ds[i], want_img, expected_masks(gts[z], values), name=f"{path}[{z}]")


def test_npz_folder_with_bad_files(tmp_path):
    good = label_map()
    np.savez(tmp_path / "ok.npz", imgs=rgb(0), gts=good)
    (tmp_path / "sub").mkdir()
    np.savez(tmp_path / "sub" / "ok2.npz", imgs=rgb(1), gts=good)
    np.savez(tmp_path / "nogts.npz", imgs=rgb(0))
    np.savez(tmp_path / "shape.npz", imgs=rgb(0), gts=good[:-1])
    np.savez(tmp_path / "empty.npz", imgs=rgb(0), gts=np.zeros_like(good))
    np.savez(tmp_path / "vol_empty.npz", imgs=np.zeros((3, H, W), np.int16), gts=np.zeros((3, H, W), np.uint8))
    np.savez(tmp_path / "floatgts.npz", imgs=rgb(0), gts=good + 0.5)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    ds = NpzDataset(tmp_path)
    assert ds.names == [str(tmp_path / "ok.npz"), str(tmp_path / "sub" / "ok2.npz")]
    got = {Path(b.path).name: b.reason for b in ds.bad_samples}
    assert set(got) == {"nogts.npz", "shape.npz", "empty.npz", "vol_empty.npz", "floatgts.npz", "junk.npz"}
    assert "gts" in got["nogts.npz"] and "does not match" in got["shape.npz"]
    assert "no object" in got["empty.npz"] and "no object" in got["vol_empty.npz"]
    assert "integer" in got["floatgts.npz"] and "unreadable" in got["junk.npz"]
    check_sample(ds[1], rgb(1), expected_masks(good, (3, 7, 200)))
    (tmp_path / "ok.npz").unlink()
    (tmp_path / "sub" / "ok2.npz").unlink()
    with pytest.raises(ValueError, match="all 6 found were bad"):
        NpzDataset(tmp_path)


def test_npz_is_never_unpickled(tmp_path):
    np.savez(tmp_path / "obj.npz", imgs=np.array([{"a": 1}], dtype=object), gts=label_map())
    np.savez(tmp_path / "ok.npz", imgs=rgb(0), gts=label_map())
    ds = NpzDataset(tmp_path)
    assert len(ds) == 1 and [Path(b.path).name for b in ds.bad_samples] == ["obj.npz"]


# --------------------------------------------------------------------------------------------------- COCO
def write_coco(path: Path, images: list[dict], annotations: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "thing"}]}))
    return path


def rle_str(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def uncompressed_rle(mask: np.ndarray) -> dict:
    flat = mask.astype(np.uint8).ravel(order="F")
    change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return {"size": list(mask.shape), "counts": np.diff(np.concatenate([[0], change])).tolist()}


def test_coco_polygons_rles_and_crowd(tmp_path):
    save(rgb(0), tmp_path / "imgs" / "x.png")
    rect = np.zeros((H, W), bool)
    rect[1:4, 2:6] = True
    blob = np.zeros((H, W), bool)
    blob[10:20, 3:9] = blob[12:14, 9:30] = True
    ring = label_map() == 200
    ring[19:21, 24:26] = False
    anns = [
        {"id": 1, "image_id": 7, "iscrowd": 0, "segmentation": [[2, 1, 6, 1, 6, 4, 2, 4]]},
        {"id": 2, "image_id": 7, "iscrowd": 0, "segmentation": rle_str(blob)},
        {"id": 3, "image_id": 7, "iscrowd": 1, "segmentation": uncompressed_rle(label_map() == 3)},
        {"id": 4, "image_id": 7, "segmentation": uncompressed_rle(ring)},
        {"id": 5, "image_id": 7, "iscrowd": 0, "segmentation": [[1, 1, 2, 2]]},  # degenerate: dropped
        {"id": 6, "image_id": 7, "iscrowd": 0, "segmentation": rle_str(np.zeros((H, W), bool))},  # empty: dropped
    ]
    js = write_coco(tmp_path / "ann" / "coco.json", [{"id": 7, "file_name": "x.png", "height": H, "width": W}],
                    anns)
    ds = CocoDataset(js, images_dir=tmp_path / "imgs")
    assert len(ds) == 1 and ds.bad_samples == []
    assert ds.crowd_skipped == 1 and ds.dropped_objects == 2
    check_sample(ds[0], rgb(0), np.stack([rect, blob, ring]), name=str(tmp_path / "imgs" / "x.png"))


def test_coco_round_trip_of_synthetic_masks(tmp_path):
    images, anns = [], []
    scenes = [make_scene(s, image_size=(48, 40)) for s in range(3)]
    for i, scene in enumerate(scenes):
        save(scene.image, tmp_path / "images" / f"s{i}.png")
        images.append({"id": i + 1, "file_name": f"images/s{i}.png", "height": 48, "width": 40})
        for m in scene.masks:
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "iscrowd": 0, "segmentation": rle})
    ds = CocoDataset(write_coco(tmp_path / "coco.json", images, anns))
    assert len(ds) == 3
    for i, scene in enumerate(scenes):
        check_sample(ds[i], scene.image, scene.masks)


def test_coco_bad_samples(tmp_path):
    m = label_map() == 7
    save(rgb(0), tmp_path / "good.png")
    save(rgb(1), tmp_path / "based.png")  # the JSON says sub/dir/based.png: found by its base name
    save(rgb(2), tmp_path / "size.png")
    save(rgb(3), tmp_path / "noann.png")
    save(rgb(4), tmp_path / "badrle.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    names = ["good.png", "sub/dir/based.png", "missing.png", "size.png", "noann.png", "badrle.png", "broken.png"]
    images = [{"id": i, "file_name": n, "height": H, "width": W if n != "size.png" else W + 1}
              for i, n in enumerate(names)]
    anns = [{"id": 10 + i, "image_id": i, "iscrowd": 0, "segmentation": rle_str(m)} for i in (0, 1, 2, 3, 6)]
    anns.append({"id": 30, "image_id": 5, "iscrowd": 0, "segmentation": {"size": [H + 2, W], "counts": "abc"}})
    anns.append({"id": 31, "image_id": 99, "iscrowd": 0, "segmentation": rle_str(m)})
    ds = CocoDataset(write_coco(tmp_path / "c.json", images, anns))
    assert ds.names == [str(tmp_path / "good.png"), str(tmp_path / "based.png")]
    got = {Path(b.path).name: b.reason for b in ds.bad_samples}
    assert set(got) == {"missing.png", "size.png", "noann.png", "badrle.png", "broken.png", "c.json"}
    assert "not found" in got["missing.png"] and "size mismatch" in got["size.png"]
    assert "no non-empty object" in got["noann.png"] and "annotation 30" in got["badrle.png"]
    assert "unreadable" in got["broken.png"] and "annotation 31" in got["c.json"]
    for i in range(2):
        check_sample(ds[i], rgb(i), m[None])
    with pytest.raises(ValueError, match="all 1 found were bad(.|\n)*not found"):
        CocoDataset(write_coco(tmp_path / "d.json", [images[2]], [anns[2]]))
    (tmp_path / "e.json").write_text("{\"images\": 3}")
    with pytest.raises(ValueError, match="not a COCO instances file"):
        CocoDataset(tmp_path / "e.json")


# ---------------------------------------------------------------------------------------- open_dataset
@pytest.mark.parametrize("spec,n,size", [("synthetic", 64, (256, 256)), ("synthetic:5", 5, (256, 256)),
                                         ("synthetic:3:48", 3, (48, 48)), ("synthetic:2:48x64", 2, (48, 64))])
def test_open_synthetic(spec, n, size):
    ds = open_dataset(spec)
    assert isinstance(ds, SyntheticDataset) and len(ds) == n and ds.image_size == size


def test_open_dataset_dispatch(tmp_path):
    write_scenes(tmp_path / "folder", 2, (32, 32), 0)
    assert isinstance(open_dataset(tmp_path / "folder"), MaskFolderDataset)
    (tmp_path / "folder" / "masks").rename(tmp_path / "folder" / "labels")
    assert len(open_dataset(str(tmp_path / "folder"))) == 2
    (tmp_path / "npz").mkdir()
    np.savez(tmp_path / "npz" / "a.npz", imgs=rgb(0), gts=label_map())
    assert isinstance(open_dataset(tmp_path / "npz" / "a.npz"), NpzDataset)
    assert isinstance(open_dataset(tmp_path / "npz"), NpzDataset)
    save(rgb(0), tmp_path / "pics" / "x.png")
    js = write_coco(tmp_path / "c.json", [{"id": 1, "file_name": "x.png"}],
                    [{"id": 1, "image_id": 1, "segmentation": rle_str(label_map() == 3)}])
    ds = open_dataset(js, images=tmp_path / "pics")
    assert isinstance(ds, CocoDataset) and len(ds) == 1


@pytest.mark.parametrize("spec", ["synthetic:0", "synthetic:x", "synthetic:4:16", "synthetic:4:64:64:x", "synthetic:4:64:1:2", "synthetics"])
def test_open_dataset_bad_synthetic_specs(spec):
    with pytest.raises((ValueError, FileNotFoundError), match="synthetic|not found"):
        open_dataset(spec)


def test_open_dataset_bad_specs(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        open_dataset(tmp_path / "nope")
    with pytest.raises(ValueError, match=r"cannot tell(.|\n)*synthetic(.|\n)*images/ and masks/"):
        open_dataset(tmp_path)  # an empty folder
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="a.txt"):
        open_dataset(tmp_path / "a.txt")
    np.savez(tmp_path / "a.npz", imgs=rgb(0), gts=label_map())
    with pytest.raises(ValueError, match="only applies to a COCO"):
        open_dataset(tmp_path / "a.npz", images=tmp_path)
    with pytest.raises(ValueError, match="only applies to a COCO"):
        open_dataset("synthetic", images=tmp_path)
    with pytest.raises(FileNotFoundError, match="images folder"):
        open_dataset(write_coco(tmp_path / "c.json", [], []), images=tmp_path / "none")
    with pytest.raises(TypeError, match="str or path"):
        open_dataset(3)
