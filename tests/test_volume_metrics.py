"""3D Dice evaluation of SAM 2 on volumes: the metric, and the protocol on a shrunk random SAM 2.1 tiny."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sam2_oracle import SMALL_OVERRIDES

from samforge.data.clip_dataset import open_clip_dataset
from samforge.evaluate.volume_metrics import dice_iou_3d, evaluate_volumes
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
    metrics = json.loads(result.write(tmp_path).read_text())
    assert metrics["num_objects"] == clip.num_objects and 0 <= metrics["dice_3d"] <= 1
    with pytest.raises(ValueError, match="prompt"):
        evaluate_volumes(predictor, data, prompt="mask")
