"""The seeds' folder layouts (masks/<name>_mask.png and its kin) and prompts stored with the data: read in each
documented form, trained on as given (prompts.source=stored) and evaluated on as given (--prompts stored)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import samforge.train.step as step_module
from samforge.cli.main import main
from samforge.data.mask_folder import MaskFolderDataset
from samforge.data.prompts import pack_stored_prompts
from samforge.data.stored_prompts import StoredPrompt, read_dataset_info
from samforge.evaluate.evaluator import evaluate_dataset
from samforge.models.build import build_sam
from samforge.models.configs import SAM_CONFIGS
from samforge.train.batches import TrainingSamples, collate_samples
from samforge.train.config import PromptConfig, load_config
from samforge.train.losses import SamLoss
from samforge.train.step import training_losses
from samforge.train.trainer import train
from samforge.utils.atomic import save_png
from test_train_run import TINY

pytestmark = pytest.mark.usefixtures("one_thread")
H, W = 96, 128  # images larger than the tiny model's 64 input: stored prompts must be scaled by 0.5


def image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (H, W, 3), dtype=np.uint8)


def two_objects() -> np.ndarray:
    lab = np.zeros((H, W), dtype=np.uint8)
    lab[10:40, 10:50] = 3
    lab[50:90, 60:120] = 7
    return lab


def write_folder(root: Path, with_prompts: bool = True) -> Path:
    """a, b: label maps (values 3 and 7) named a_mask.png and b_seg.png; c: a per-object folder (two files).
    Prompts: annotations/a.json by mask_value, dataset_info.json for b (in order, COCO bbox) and c (by file)."""
    (root / "images").mkdir(parents=True)
    (root / "masks" / "c").mkdir(parents=True)
    for n, name in enumerate("abc"):
        save_png(image(n), root / "images" / f"{name}.png")
    save_png(two_objects(), root / "masks" / "a_mask.png")
    save_png(two_objects(), root / "masks" / "b_seg.png")
    save_png(((two_objects() == 3) * 255).astype(np.uint8), root / "masks" / "c" / "disc.png")
    save_png(((two_objects() == 7) * 255).astype(np.uint8), root / "masks" / "c" / "cup.png")
    if with_prompts:
        (root / "annotations").mkdir()
        (root / "annotations" / "a.json").write_text(json.dumps({"objects": [
            {"mask_value": 7, "points": [[90, 70], [20, 20]], "point_labels": [1, 0]},
            {"mask_value": 3, "box": [10, 10, 49, 39]}]}))
        (root / "dataset_info.json").write_text(json.dumps({"images": [
            {"image": "b.png", "objects": [{"point": [30, 25]}, {"point": [100, 70]}]},
            {"file_name": "c.png", "objects": [{"mask": "cup", "bbox": [60, 50, 60, 40]},
                                               {"mask": "disc.png", "points": [[30, 20]], "labels": [1]}]}]}))
    return root


def test_mask_name_suffixes_pair_with_images_and_orphans_are_named(tmp_path):
    root = write_folder(tmp_path / "d", with_prompts=False)
    save_png(two_objects(), root / "masks" / "ghost_mask.png")  # no images/ghost.*
    save_png(two_objects(), root / "masks" / "a_gt.png")  # a second mask for a (a_mask.png pairs first)
    data = MaskFolderDataset(root)
    assert [Path(n).name for n in data.names] == ["a.png", "b.png", "c.png"]
    assert [len(data[i].masks) for i in range(3)] == [2, 2, 2]
    bad = {Path(b.path).name: b.reason for b in data.bad_samples}
    assert "no image with this name in images/: expected images/ghost.*" in bad["ghost_mask.png"]
    assert "not used: a.png pairs with masks/a_mask.png" in bad["a_gt.png"]
    assert not data.has_stored_prompts and data[0].prompts is None


def test_stored_prompts_are_read_in_each_form(tmp_path):
    data = MaskFolderDataset(write_folder(tmp_path / "d"))
    assert data.has_stored_prompts and not data.bad_samples
    a, b, c = (data[i].prompts for i in range(3))
    # a: label values 3, 7 -> objects 0, 1; entries paired by mask_value
    assert a[0].box.tolist() == [10, 10, 49, 39] and a[0].points is None
    assert a[1].points.tolist() == [[90, 70], [20, 20]] and a[1].labels.tolist() == [1, 0]
    # b: in order, labels default to 1
    assert b[0].points.tolist() == [[30, 25]] and b[0].labels.tolist() == [1] and b[1].points.tolist() == [[100, 70]]
    # c: per-object files in natural order (cup, disc); COCO bbox x, y, w, h -> XYXY
    assert c[0].box.tolist() == [60, 50, 120, 90] and c[1].points.tolist() == [[30, 20]]
    assert read_dataset_info(tmp_path / "d" / "dataset_info.json").keys() == {"b", "c"}


@pytest.mark.parametrize("objects, reason", [
    ([{"points": [[500, 10]]}], "lies outside the 128x96"),
    ([{"mask_value": 5, "box": [0, 0, 5, 5]}], "mask_value=5 names no object"),
    ([{"points": [[5, 5]], "point_labels": [2]}], "each 1 (object) or 0"),
    ([{"box": [20, 20, 10, 30]}], "x0 < x1 and y0 < y1"),
    ([{"point": [1, 1]}, {"point": [2, 2]}, {"point": [3, 3]}], "3 stored objects for 2 object"),
])
def test_malformed_stored_prompts_make_a_named_bad_sample(tmp_path, objects, reason):
    root = write_folder(tmp_path / "d", with_prompts=False)
    (root / "annotations").mkdir()
    (root / "annotations" / "b.json").write_text(json.dumps(objects))
    data = MaskFolderDataset(root)
    assert len(data) == 2
    [bad] = data.bad_samples
    assert bad.path.endswith("annotations/b.json") and reason in bad.reason


def test_a_malformed_dataset_info_is_an_error_naming_it(tmp_path):
    root = write_folder(tmp_path / "d", with_prompts=False)
    (root / "dataset_info.json").write_text(json.dumps({"something": 1}))
    with pytest.raises(ValueError, match=r"dataset_info.json: expected \{\"images\""):
        MaskFolderDataset(root)


def tiny_sam():
    import dataclasses

    import yaml

    arch = yaml.safe_load(TINY[1].split("=", 1)[1])
    return build_sam(dataclasses.replace(SAM_CONFIGS["vit_small"], **arch))


def test_training_decodes_exactly_the_stored_prompts(tmp_path, monkeypatch):
    data = MaskFolderDataset(write_folder(tmp_path / "d"))
    samples = TrainingSamples(data, 64, max_objects=8)
    batch = collate_samples([samples[0], samples[2]])
    seen = []
    original = step_module._decode_once

    def recording_decode(model, embeddings, points, boxes, mask_input, multimask, *shared):
        seen.append((None if points is None else [t.clone() for t in points], None if boxes is None else boxes.clone()))
        return original(model, embeddings, points, boxes, mask_input, multimask, *shared)

    monkeypatch.setattr(step_module, "_decode_once", recording_decode)
    cfg = PromptConfig(source="stored", correction_rounds=0, mask_only_rounds=0)
    out = training_losses(tiny_sam(), batch, cfg, SamLoss(), np.random.default_rng(0))
    assert torch.isfinite(out["loss"])
    # objects: a#0 box, a#1 two points, c#0 box, c#1 one point; those with a box decode apart from the others
    (box_points, boxes), (pt_points, no_box) = seen
    assert no_box is None and boxes.tolist() == [[5, 5, 24.5, 19.5], [30, 25, 60, 45]]  # XYXY x 0.5
    assert pt_points[0].tolist() == [[[45, 35], [10, 10]], [[15, 10], [0, 0]]]  # padded with a label -1 point
    assert pt_points[1].tolist() == [[1, 0], [1, -1]]
    assert box_points[1].tolist() == [[-1, -1], [-1, -1]]  # box-only objects carry only "not a point" pads


def test_an_object_without_a_stored_prompt_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"1 object\(s\) have no stored prompt.*img7.png object 1"):
        pack_stored_prompts([StoredPrompt(box=np.array([0.0, 0, 4, 4])), None], ["img7.png", "img7.png"])


class RecordingPredictor:
    """A predictor that answers every prompt with the ground truth it was built with, and records the prompts."""

    def __init__(self, masks: np.ndarray) -> None:
        self.masks, self.calls = masks, []

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        pass

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None, multimask_output=True,
                return_logits=False):
        self.calls.append((None if point_coords is None else np.asarray(point_coords).tolist(),
                           None if point_labels is None else np.asarray(point_labels).tolist(),
                           None if box is None else np.asarray(box).tolist(), multimask_output))
        m = self.masks[len(self.calls) - 1]
        return m[None], np.ones(1), np.zeros((1, 64, 64), dtype=np.float32)


def test_evaluation_prompts_with_exactly_the_stored_prompts(tmp_path):
    data = MaskFolderDataset(write_folder(tmp_path / "d"))
    sample = data[0]
    predictor = RecordingPredictor(sample.masks)
    result = evaluate_dataset(predictor, [sample], progress=False, prompts="stored")
    assert predictor.calls == [(None, None, [10, 10, 49, 39], False),
                               ([[90, 70], [20, 20]], [1, 0], None, False)]
    metrics = result.to_metrics_dict()
    assert metrics["stored"] == {"miou": 1.0, "dice": 1.0} and "interactive" not in metrics and "box" not in metrics
    with pytest.raises(ValueError, match="prompts: expected one of"):
        evaluate_dataset(predictor, [sample], prompts="clicked")
    with pytest.raises(ValueError, match="stores no prompts"):
        evaluate_dataset(predictor, MaskFolderDataset(write_folder(tmp_path / "e", with_prompts=False)),
                         prompts="stored")


def test_train_and_evaluate_on_stored_prompts_end_to_end(tmp_path, capsys):
    root, out = write_folder(tmp_path / "d"), tmp_path / "run"
    overrides = [o for o in TINY if not o.startswith("data.")] + [
        f"data.train={root}", f"data.val={root}", "data.num_workers=0", "prompts.source=stored", f"out={out}",
        "steps=1", "val_images=3"]
    train(load_config(None, overrides))
    metrics = json.loads((out / "eval/metrics.json").read_text())
    assert metrics["num_objects"] == 6 and 0 <= metrics["stored"]["miou"] <= 1 and "interactive" not in metrics
    code = main(["evaluate", "--checkpoint", str(out / "checkpoints/last.pt"), "--data", str(root), "--prompts",
                 "stored", "--out", str(tmp_path / "eval")])
    assert code == 0 and json.loads((tmp_path / "eval/metrics.json").read_text())["stored"] == metrics["stored"]
    header = (tmp_path / "eval/per_image.csv").read_text().splitlines()[0]
    assert header == "image,num_objects,stored_iou,stored_dice"


@pytest.mark.parametrize("extra, match", [
    (["data.train=synthetic:4:64"], "stores no prompts"),
    (["model.type=sam2.1_hiera_t", "model.arch={}"], "prompts.source=stored trains SAM"),
    (["prompts.source=clicked"], "prompts.source must be simulated or stored"),
])
def test_stored_prompts_bad_input(tmp_path, extra, match):
    overrides = [*TINY, "prompts.source=stored", f"out={tmp_path / 'run'}", "steps=1", *extra]
    with pytest.raises(ValueError, match=match):
        train(load_config(None, overrides))


def test_evaluate_cli_refuses_stored_prompts_for_video(tmp_path, capsys):
    code = main(["evaluate", "--model-type", "sam2.1_hiera_t", "--video", "synthetic-video:1:64:3",
                 "--prompts", "stored", "--out", str(tmp_path / "e")])
    assert code == 2 and "--prompts stored applies to --data (images) only" in capsys.readouterr().err


def test_entries_without_a_prompt_pair_with_nothing(tmp_path):
    root = write_folder(tmp_path / "d", with_prompts=False)
    (root / "annotations").mkdir()
    (root / "annotations" / "b.json").write_text(json.dumps({"objects": [
        {"id": 1, "label": "cell"}, {"id": 2, "label": "cell"}, {"id": 3, "label": "cell"},
        {"mask_value": 7, "point": [100, 70]}]}))
    data = MaskFolderDataset(root)
    assert not data.bad_samples
    prompts = data[1].prompts
    assert prompts[0] is None and prompts[1].points.tolist() == [[100, 70]]
