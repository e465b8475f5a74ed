"""3D Dice evaluation of SAM 2 on volumes: the metric, and the protocol on a shrunk random SAM 2.1 tiny."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sam2_oracle import SMALL_OVERRIDES

from samforge.cli.main import main
from samforge.data.clip_dataset import open_clip_dataset
from samforge.evaluate.volume_metrics import dice_iou_3d, evaluate_volumes
from samforge.models.sam2 import build_sam2
from samforge.predict.sam2_video_predictor import build_sam2_video_predictor

pytestmark = pytest.mark.usefixtures("one_thread")


def test_dice_iou_3d():
    a = np.zeros((4, 5, 5), bool)
    b = np.zeros((4, 5, 5), bool)
    assert dice_iou_3d(a, b) == (1.0, 1.0)
    a[:2, :2, :2] = True  # 8 voxels
    b[:2, :2, :1] = True  # 4 voxels, inside a
    dice, iou = dice_iou_3d(a, b)
    assert dice == pytest.approx(2 * 4 / 12) and iou == pytest.approx(4 / 8)
    with pytest.raises(ValueError, match="one shape"):
        dice_iou_3d(a, b[:3])


def test_evaluate_volumes_protocol(tmp_path):
    torch.manual_seed(0)
    predictor = build_sam2_video_predictor("sam2.1_hiera_t", device="cpu", hydra_overrides_extra=list(SMALL_OVERRIDES))
    data = open_clip_dataset("synthetic-medical-volume:1:64:4:0")
    result = evaluate_volumes(predictor, data, prompt="box", progress=False)
    clip = data[0]
    assert len(result.objects) == clip.num_objects > 0
    for obj in result.objects:
        k = clip.obj_ids.index(obj["obj_id"])
        areas = clip.masks[:, k].reshape(clip.num_frames, -1).sum(1)
        assert obj["prompt_slice"] == int(areas.argmax()) and 0 <= obj["dice_3d"] <= 1
    paths = result.write(tmp_path)
    metrics = json.loads(paths["volume_metrics.json"].read_text())
    assert metrics["num_objects"] == clip.num_objects and 0 <= metrics["dice_3d"] <= 1
    rows = paths["per_object.csv"].read_text().splitlines()
    assert rows[0] == "clip,obj_id,prompt_slice,dice_3d,iou_3d" and len(rows) == 1 + clip.num_objects
    assert paths["overlay.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the overlay: the prompt slice and slices spread over each object's extent, for at most overlay_objects
    assert len(result.overlay_rows) == min(4, clip.num_objects)
    for (name, tiles), obj in zip(result.overlay_rows, result.objects):
        assert name == f"{obj['clip']}/{obj['obj_id']}" and obj["prompt_slice"] in [t for t, _ in tiles]
        assert all(tile.shape == clip.frames[t].shape[:2] + (3,) and tile.dtype == np.uint8 for t, tile in tiles)
    assert evaluate_volumes(predictor, data, progress=False, overlay_objects=0).overlay_rows == []
    with pytest.raises(ValueError, match="prompt"):
        evaluate_volumes(predictor, data, prompt="mask")


# ------------------------------------------------------------------------------------------------------------
# samforge evaluate --volumes (a samforge checkpoint of a shrunk SAM 2 records its overrides: no --model needed)


def _checkpoint(path, seed):
    torch.manual_seed(seed)
    model = build_sam2("sam2.1_hiera_t", device="cpu", hydra_overrides_extra=list(SMALL_OVERRIDES))
    record = {"family": "sam2", "config_name": "sam2.1_hiera_t", "overrides": list(SMALL_OVERRIDES)}
    torch.save({"model": model.state_dict(), "sam_config": record}, path)
    return path


def test_evaluate_volumes_cli_with_a_baseline(tmp_path, capsys):
    model, base = _checkpoint(tmp_path / "model.pt", 1), _checkpoint(tmp_path / "base.pt", 2)
    out = tmp_path / "out"
    code = main(["evaluate", "--volumes", "synthetic-medical-volume:2:64:4:0", "--checkpoint", str(model),
                 "--baseline", str(base), "--out", str(out)])
    stdout = capsys.readouterr().out
    assert code == 0 and "3D Dice" in stdout and "RANDOM" not in stdout
    after = json.loads((out / "volume_metrics.json").read_text())
    before = json.loads((out / "baseline" / "volume_metrics.json").read_text())
    assert after["num_volumes"] == 2 and after["num_objects"] == before["num_objects"] > 0
    assert after["per_object"] != before["per_object"]  # two different models really ran
    comparison = json.loads((out / "comparison.json").read_text())
    for key in ("dice_3d", "iou_3d"):
        assert comparison[key]["model"] == pytest.approx(after[key])
        assert comparison[key]["delta"] == pytest.approx(after[key] - before[key])
    for name in ("overlay.png", "per_object.csv", "before_after.png", "baseline/overlay.png"):
        assert (out / name).read_bytes()[:4] != b"", name
    assert (out / "before_after.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_volumes_cli_errors(tmp_path, capsys):
    model = _checkpoint(tmp_path / "model.pt", 1)
    cases = [
        (["--volumes", "synthetic-medical-volume:1:64:4", "--model", "vit_small"], "--volumes needs a SAM 2 model"),
        (["--volumes", "synthetic-medical-volume:1:64:4", "--checkpoint", str(model), "--prompt", "mask"],
         "--volumes takes --prompt box or point"),
        (["--data", "synthetic:1:64", "--checkpoint", str(model), "--axis", "1"], "--axis applies to --volumes"),
        (["--volumes", str(tmp_path / "nope.npz"), "--checkpoint", str(model)], "not found"),
        (["--volumes", "synthetic-medical-volume:1:64:4", "--checkpoint", str(model), "--model", "sam2.1_hiera_s"],
         "holds a 'sam2.1_hiera_t' SAM 2 model"),
        (["--volumes", "synthetic-medical-volume:1:64:4", "--checkpoint", str(model), "--baseline",
          str(tmp_path / "missing.pt")], "--baseline file not found"),
    ]
    for args, message in cases:
        code = main(["evaluate", *args, "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert code == 2 and message in err, (args, err)
    assert not (tmp_path / "o").exists()
