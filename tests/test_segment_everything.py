"""``samforge segment-everything`` over a folder, driven in-process, and the output builders of
``samforge.predict.amg_outputs``: per-image JSON / label PNG / overlay, annotations.json read back as a
COCO dataset, skipped files, conversions, resuming, and how bad arguments fail."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from samforge import build_sam2
from samforge.cli.main import build_parser, main
from samforge.cli.folder_masks import check_generator_flags
from samforge.data.readers import open_dataset
from samforge.data.synthetic import make_scene
from samforge.predict import amg_utils
from samforge.predict.amg_outputs import (
    coco_instances,
    label_image_from_records,
    paint_order,
    records_to_json,
    segmentation_to_coco_rle,
    segmentation_to_mask,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools"),  # numpy 2 note inside decode
    pytest.mark.usefixtures("one_thread"),
]

HW = (96, 128)
STEMS = ("a", "b", "c")  # a.png RGB, b.jpg grayscale, c.png RGBA
RECORD_KEYS = {"segmentation", "area", "bbox", "predicted_iou", "point_coords", "stability_score", "crop_box"}
FLAGS = ("--model-type", "vit_small", "--points-per-side", "4", "--pred-iou-thresh", "0",
         "--stability-score-thresh", "0", "--box-nms-thresh", "1.0")  # random weights: keep every mask


def make_folder(root: Path) -> Path:
    images = root / "images"
    images.mkdir()
    scenes = [make_scene(seed, image_size=HW).image for seed in range(3)]
    Image.fromarray(scenes[0]).save(images / "a.png")
    Image.fromarray(scenes[1]).convert("L").save(images / "b.jpg", quality=95)
    rgba = np.concatenate([scenes[2], np.full((*HW, 1), 200, np.uint8)], axis=2)
    Image.fromarray(rgba).save(images / "c.png")  # HxWx4 uint8: RGBA
    (images / "notes.txt").write_text("not an image")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # a PNG signature, then nothing usable
    return images


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(["segment-everything", *(str(a) for a in argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def decode_records(records: list[dict]) -> np.ndarray:
    return np.stack([mask_utils.decode(r["segmentation"]).astype(bool) for r in records])


def output_mtimes(out: Path) -> dict:
    return {p.relative_to(out).as_posix(): p.stat().st_mtime_ns for d in ("masks", "labels", "overlays")
            for p in (out / d).iterdir()}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """One run over the folder; the tests below read what it wrote (and copy it before changing anything)."""
    root = tmp_path_factory.mktemp("segment_everything")
    images = make_folder(root)
    out = root / "out"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["segment-everything", str(images), *FLAGS, "--out", str(out)])
    return {"images": images, "out": out, "code": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}


# ------------------------------------------------------------------------------------------ first run
def test_writes_every_output(first_run):
    out = first_run["out"]
    assert first_run["code"] == 0, first_run["stderr"]
    for stem in STEMS:
        records = json.loads((out / "masks" / f"{stem}.json").read_text())
        assert isinstance(records, list) and len(records) > 1
        for r in records:
            assert set(r) == RECORD_KEYS
            assert isinstance(r["segmentation"]["counts"], str) and r["segmentation"]["size"] == list(HW)
            masks = mask_utils.decode(r["segmentation"])
            assert r["area"] == int(masks.sum()) > 0
            assert r["crop_box"] == [0, 0, HW[1], HW[0]]
        overlay = read_png(out / "overlays" / f"{stem}.png")
        assert overlay.shape == (*HW, 3) and overlay.dtype == np.uint8
    assert "segment-everything: 100%" in first_run["stderr"]  # the tqdm bar, on stderr
    assert "segment-everything:" not in first_run["stdout"]


def test_label_png_agrees_with_masks(first_run):
    """Label k is record k - 1; 0 where no mask is; elsewhere the smallest mask covering the pixel."""
    out = first_run["out"]
    for stem in STEMS:
        with Image.open(out / "labels" / f"{stem}.png") as im:
            assert im.mode.startswith("I;16")
            labels = np.asarray(im).astype(np.int64)
        masks = decode_records(json.loads((out / "masks" / f"{stem}.json").read_text()))
        assert labels.shape == HW and labels.max() <= len(masks)
        covered = masks.any(0)
        assert np.array_equal(labels > 0, covered)
        ys, xs = np.nonzero(covered)
        k = labels[ys, xs] - 1
        assert masks[k, ys, xs].all()  # the label's mask covers the pixel
        areas = masks.reshape(len(masks), -1).sum(1)
        smallest = np.where(masks, areas[:, None, None], np.iinfo(np.int64).max).min(0)
        assert np.array_equal(areas[k], smallest[ys, xs])  # painted largest first: small masks stay visible
        assert len(np.unique(labels)) > 2


def test_annotations_load_back_as_coco(first_run):
    images, out = first_run["images"], first_run["out"]
    coco = json.loads((out / "annotations.json").read_text())
    assert [im["file_name"] for im in coco["images"]] == ["a.png", "b.jpg", "c.png"]
    assert all((im["height"], im["width"]) == HW for im in coco["images"])
    assert coco["categories"] == [{"id": 1, "name": "object", "supercategory": "object"}]
    assert all(a["iscrowd"] == 0 and a["category_id"] == 1 for a in coco["annotations"])
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])

    dataset = open_dataset(out / "annotations.json", images=images)
    assert len(dataset) == 3 and dataset.bad_samples == [] and dataset.dropped_objects == 0
    for i, stem in enumerate(STEMS):
        sample = dataset[i]
        assert Path(sample.name).stem == stem
        expected = decode_records(json.loads((out / "masks" / f"{stem}.json").read_text()))
        assert np.array_equal(sample.masks, expected)
        for ann in (a for a in coco["annotations"] if a["image_id"] == i + 1):
            m = mask_utils.decode(ann["segmentation"])
            assert ann["area"] == int(m.sum())
            ys, xs = np.nonzero(m)
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def test_skipped_files_and_conversions_are_said(first_run):
    stdout = first_run["stdout"]
    assert "b.jpg: grayscale (mode L) converted to RGB" in stdout
    assert "c.png: RGBA converted to RGB, alpha channel dropped" in stdout
    assert "a.png:" not in stdout
    tail = stdout[stdout.index("skipped 2 files:"):]
    assert "notes.txt: not an image" in tail and "broken.png: unreadable image" in tail
    assert "RANDOM weights" in stdout
    assert "3 images, " in stdout


# ------------------------------------------------------------------------------------------- resuming
def test_rerun_skips_done_images(first_run, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(first_run["out"], out)  # copy2: mtimes kept
    before = output_mtimes(out)
    annotations = json.loads((out / "annotations.json").read_text())

    code, stdout, stderr = run_cli(capsys, first_run["images"], *FLAGS, "--out", out)
    assert code == 0, stderr
    assert "3 already done, 0 to segment" in stdout
    assert "RANDOM weights" not in stdout  # nothing to do: the model is not even built
    assert output_mtimes(out) == before
    assert json.loads((out / "annotations.json").read_text()) == annotations
    assert "notes.txt" in stdout and "broken.png" in stdout

    # an image whose JSON is gone is segmented again; the others stay as they were
    (out / "masks" / "b.json").unlink()
    code, stdout, stderr = run_cli(capsys, first_run["images"], *FLAGS, "--out", out)
    assert code == 0, stderr
    assert "2 already done, 1 to segment" in stdout and "b.jpg: grayscale" in stdout
    after = output_mtimes(out)
    assert {k for k in before if after[k] != before[k]} <= {"masks/b.json", "labels/b.png", "overlays/b.png"}
    assert (out / "masks" / "b.json").is_file()
    # same weights (seed), same image: the same masks come back, and annotations.json holds all three images
    assert json.loads((out / "masks" / "b.json").read_text()) == \
        json.loads((first_run["out"] / "masks" / "b.json").read_text())
    assert json.loads((out / "annotations.json").read_text()) == annotations


def test_rerun_with_other_settings_is_refused(first_run, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(first_run["out"], out)
    flags = [f if f != "1.0" else "0.5" for f in FLAGS]
    code, _, stderr = run_cli(capsys, first_run["images"], *flags, "--out", out)
    assert code == 2 and "box_nms_thresh: 1.0 then, 0.5 now" in stderr


def test_precision_is_recorded_and_a_rerun_with_another_is_refused(first_run, tmp_path, capsys):
    settings = json.loads((first_run["out"] / "settings.json").read_text())
    assert settings["precision"] == "fp32"
    out = tmp_path / "out"
    shutil.copytree(first_run["out"], out)
    code, _, stderr = run_cli(capsys, first_run["images"], *FLAGS, "--precision", "fp32-fast", "--out", out)
    assert code == 2 and "precision: 'fp32' then, 'fp32-fast' now" in stderr
    # a folder written before the flag existed (no "precision" in settings.json) counts as fp32
    del settings["precision"]
    (out / "settings.json").write_text(json.dumps(settings))
    code, stdout, stderr = run_cli(capsys, first_run["images"], *FLAGS, "--out", out)
    assert code == 0 and "3 already done" in stdout, stderr


def test_fp32_fast_segments_a_folder_like_fp32(first_run, tmp_path, capsys):
    """--precision fp32-fast reaches the generator: the same records as the exact run, to float rounding."""
    out = tmp_path / "out"
    code, _, stderr = run_cli(capsys, first_run["images"], *FLAGS, "--precision", "fp32-fast", "--out", out)
    assert code == 0, stderr
    assert json.loads((out / "settings.json").read_text())["precision"] == "fp32-fast"
    for stem in ("a", "c"):
        exact = json.loads((first_run["out"] / "masks" / f"{stem}.json").read_text())
        fast = json.loads((out / "masks" / f"{stem}.json").read_text())
        assert len(fast) == len(exact)
        np.testing.assert_allclose([r["predicted_iou"] for r in fast], [r["predicted_iou"] for r in exact],
                                   atol=1e-4)
        inter = (decode_records(fast) & decode_records(exact)).sum()
        union = (decode_records(fast) | decode_records(exact)).sum()
        assert inter / union > 0.99


# ---------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("flag, value, said", [
    ("--points-per-side", "0", "--points-per-side must be an int >= 1, got 0"),
    ("--points-per-batch", "0", "--points-per-batch must be an int >= 1, got 0"),
    ("--pred-iou-thresh", "1.5", "--pred-iou-thresh must be a number in [0.0, 1.0], got 1.5"),
    ("--crop-n-layers", "-1", "--crop-n-layers must be an int >= 0, got -1"),
])
def test_bad_flags_exit_2(first_run, tmp_path, capsys, flag, value, said):
    argv = [first_run["images"], "--model-type", "vit_small", "--out", tmp_path / "out", flag, value]
    code, _, stderr = run_cli(capsys, *argv)
    assert code == 2 and said in stderr
    assert not (tmp_path / "out").exists()  # checked before anything is written


def test_use_m2m_with_a_sam_model_exits_2(first_run, tmp_path, capsys):
    code, _, stderr = run_cli(capsys, first_run["images"], "--model-type", "vit_small", "--use-m2m",
                              "--out", tmp_path / "out")
    assert code == 2 and "--use-m2m is for SAM 2 models" in stderr and "got --model-type vit_small" in stderr
    assert not (tmp_path / "out").exists()


def test_bad_folders_exit_2(tmp_path, capsys):
    missing = tmp_path / "nope"
    code, _, stderr = run_cli(capsys, missing, "--model-type", "vit_small", "--out", tmp_path / "o1")
    assert code == 2 and f"images folder not found: {missing}" in stderr

    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, stderr = run_cli(capsys, empty, "--model-type", "vit_small", "--out", tmp_path / "o2")
    assert code == 2 and "no images in" in stderr and "the folder is empty" in stderr

    (empty / "readme.md").write_text("x")
    code, _, stderr = run_cli(capsys, empty, "--model-type", "vit_small", "--out", tmp_path / "o3")
    assert code == 2 and "found only 1 other entries: readme.md" in stderr

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.png").write_bytes(b"not a png")
    code, _, stderr = run_cli(capsys, broken, "--model-type", "vit_small", "--out", tmp_path / "o4")
    assert code == 2 and "could be segmented" in stderr and "x.png" in stderr

    clash = tmp_path / "clash"
    clash.mkdir()
    for name in ("s.png", "s.jpg"):
        Image.new("RGB", (40, 40)).save(clash / name)
    code, _, stderr = run_cli(capsys, clash, "--model-type", "vit_small", "--out", tmp_path / "o5")
    assert code == 2 and "s.jpg and s.png" in stderr

    with pytest.raises(SystemExit) as e:  # argparse: not an int
        main(["segment-everything", str(empty), "--model-type", "vit_small", "--out", str(tmp_path / "o6"),
              "--points-per-side", "x"])
    assert e.value.code == 2
    assert "--points-per-side: invalid int value: 'x'" in capsys.readouterr().err


# ----------------------------------------------------------------------------------- amg_outputs
def _record(mask: np.ndarray, **extra) -> dict:
    return {"segmentation": mask, "area": int(mask.sum()), **extra}


def test_label_image_paints_largest_first():
    big = np.zeros((6, 8), bool)
    big[1:5, 1:7] = True
    small = np.zeros((6, 8), bool)
    small[2:4, 2:4] = True
    # the small mask comes first in the records, yet it stays visible on top of the big one
    records = [_record(small), _record(big)]
    assert paint_order(records) == [1, 0]
    labels = label_image_from_records(records, 6, 8)
    assert labels.dtype == np.uint16
    assert np.array_equal(labels == 1, small) and np.array_equal(labels == 2, big & ~small)
    assert label_image_from_records([], 6, 8).sum() == 0


def test_segmentation_kinds_round_trip():
    mask = np.zeros((5, 7), bool)
    mask[1:4, 2:6] = True
    mask[0, 0] = True
    uncompressed = amg_utils.mask_to_rle(torch.from_numpy(mask)[None])[0]
    coco = segmentation_to_coco_rle(mask)
    assert isinstance(coco["counts"], str) and coco["size"] == [5, 7]
    for seg in (mask, mask.astype(np.uint8), uncompressed, coco, {**coco, "counts": coco["counts"].encode()}):
        assert segmentation_to_coco_rle(seg) == coco
        assert np.array_equal(segmentation_to_mask(seg), mask)
    record = {"segmentation": uncompressed, "area": np.int64(13), "bbox": np.array([0, 0, 5, 3]),
              "predicted_iou": np.float32(0.5), "point_coords": [[1.0, 2.0]], "stability_score": float("nan"),
              "crop_box": [0, 0, 7, 5]}
    (out,) = records_to_json([record])
    assert out == {"segmentation": coco, "area": 13, "bbox": [0, 0, 5, 3], "predicted_iou": 0.5,
                   "point_coords": [[1.0, 2.0]], "stability_score": None, "crop_box": [0, 0, 7, 5]}
    json.dumps(out, allow_nan=False)


def test_coco_instances_fields():
    mask = np.zeros((5, 7), bool)
    mask[1:4, 2:6] = True
    coco = coco_instances([
        {"file_name": "x.png", "height": 5, "width": 7, "records": [_record(mask, predicted_iou=0.9)]},
        {"file_name": "sub/y.png", "height": 5, "width": 7, "records": []},
    ], info={"k": 1})
    assert [im["id"] for im in coco["images"]] == [1, 2] and coco["info"] == {"k": 1}
    (ann,) = coco["annotations"]
    assert ann["bbox"] == [2.0, 1.0, 4.0, 3.0] and ann["area"] == 12 and ann["score"] == 0.9
    assert ann["image_id"] == 1 and ann["iscrowd"] == 0


@pytest.mark.parametrize("call, error, said", [
    (lambda: label_image_from_records("x", 4, 4), TypeError, "records must be a list of mask records"),
    (lambda: label_image_from_records([{"area": 1}], 4, 4), TypeError,
     "records[0] must be a dict with a 'segmentation'"),
    (lambda: label_image_from_records([], 0, 4), ValueError, "height must be an int >= 1, got 0"),
    (lambda: label_image_from_records([_record(np.ones((3, 4), bool))], 4, 4), ValueError,
     "must be of the image's size 4x4 (HxW), got 3x4"),
    (lambda: segmentation_to_mask({"size": [2, 2], "counts": [1, 2]}), ValueError, "summing to h * w = 4"),
    (lambda: segmentation_to_mask(np.full((2, 2), 0.5)), ValueError, "bool (or 0/1 integer) mask, got dtype float64"),
    (lambda: segmentation_to_mask([1, 2]), TypeError, "an RLE dict"),
    (lambda: coco_instances([{"file_name": "x.png"}]), TypeError, "images[0] must be a dict with file_name"),
    (lambda: coco_instances([{"file_name": "x.png", "height": 2, "width": 3,
                              "records": [_record(np.ones((3, 2), bool))]}]), ValueError, "image's size 2x3"),
])
def test_amg_outputs_input_errors(call, error, said):
    with pytest.raises(error) as e:
        call()
    assert said in str(e.value)


# ------------------------------------------------------------------------------------------------ SAM 2
def test_sam2_model_segments_a_folder(tmp_path, capsys):
    """A SAM 2.1 tiny checkpoint in the official layout (random weights): the same outputs as with SAM, holding
    SAM2AutomaticMaskGenerator's records (that generator is checked against the official one in test_sam2_amg)."""
    torch.manual_seed(3)
    model = build_sam2("sam2.1_hiera_t", device="cpu")
    checkpoint = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": model.state_dict()}, checkpoint)
    images = tmp_path / "images"
    images.mkdir()
    scene = make_scene(5, image_size=HW).image
    Image.fromarray(scene).save(images / "s.png")
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(
        capsys, images, "--model", "sam2.1_hiera_t", "--checkpoint", checkpoint, "--points-per-side", "2",
        "--pred-iou-thresh", "0", "--stability-score-thresh", "0", "--box-nms-thresh", "1.0", "--out", out)
    assert code == 0, stderr
    assert "RANDOM" not in stdout and "1 images, 12 masks" in stdout  # 4 points, 3 masks each, none dropped

    records = json.loads((out / "masks" / "s.json").read_text())
    h, w = HW
    grid = {(x * w / 4, y * h / 4) for x in (1, 3) for y in (1, 3)}  # the 2x2 grid's cell centres
    assert {tuple(r["point_coords"][0]) for r in records} == grid
    masks = decode_records(records)
    for r, m in zip(records, masks):
        assert set(r) == RECORD_KEYS and r["crop_box"] == [0, 0, w, h] and r["area"] == int(m.sum())
        assert 0.0 <= r["predicted_iou"] <= 1.0  # SAM 2's IoU head ends in a sigmoid
    with Image.open(out / "labels" / "s.png") as im:
        assert np.asarray(im).shape == HW
    assert read_png(out / "overlays" / "s.png").shape == (*HW, 3)
    settings = json.loads((out / "settings.json").read_text())
    assert settings["model_type"] == "sam2.1_hiera_t" and settings["use_m2m"] is False
    assert settings["pred_iou_thresh"] == 0.0
    dataset = open_dataset(out / "annotations.json", images=images)
    assert len(dataset) == 1 and dataset[0].masks.shape[1:] == HW


def test_pred_iou_thresh_defaults_to_each_generators_own(tmp_path):
    """0.88 for SAM (segment_anything's default), 0.8 for SAM 2 (sam2's), unless given."""
    parser = build_parser()

    def flags(*argv):
        argv = ["segment-everything", str(tmp_path), "--out", str(tmp_path), *argv]
        return check_generator_flags(parser.parse_args(argv))

    assert flags("--model", "vit_b")["pred_iou_thresh"] == 0.88 and "use_m2m" not in flags("--model", "vit_b")
    assert flags("--model", "sam2.1_hiera_s") == {**flags("--model", "vit_b"), "pred_iou_thresh": 0.8,
                                                  "use_m2m": False}
    assert flags("--model", "sam2.1_hiera_t", "--pred-iou-thresh", "0.5", "--use-m2m")["use_m2m"] is True
    assert flags("--model", "sam2.1_hiera_t", "--pred-iou-thresh", "0.5")["pred_iou_thresh"] == 0.5
