"""Video metrics (DAVIS J, F, recall, decay) on hand-computed cases, the evaluation protocol with a perfect
fake tracker, and ``samforge evaluate --video`` on a tiny random SAM 2."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from test_cli import run_cli

from samforge.data.davis_dataset import VideoClip
from samforge.evaluate.video_metrics import (
    boundary_f,
    boundary_map,
    davis_statistics,
    evaluate_video,
    jaccard,
)


def _square(h=40, w=40, rows=(10, 20), cols=(10, 20)) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[rows[0]:rows[1], cols[0]:cols[1]] = True
    return m


def test_identical_masks_score_one():
    m = _square(256, 256, (50, 120), (40, 200))
    assert jaccard(m, m) == 1.0 and boundary_f(m, m) == 1.0


def test_disjoint_masks_score_zero():
    a, b = _square(100, 100, (5, 20), (5, 20)), _square(100, 100, (60, 90), (60, 90))
    assert jaccard(a, b) == 0.0 and boundary_f(a, b) == 0.0


def test_empty_prediction_and_empty_ground_truth():
    empty, m = np.zeros((30, 30), bool), _square(30, 30, (5, 10), (5, 10))
    assert jaccard(empty, empty) == 1.0 and boundary_f(empty, empty) == 1.0
    assert jaccard(empty, m) == 0.0 and boundary_f(empty, m) == 0.0  # precision 1, recall 0
    assert jaccard(m, empty) == 0.0 and boundary_f(m, empty) == 0.0


def test_one_pixel_shift_is_within_the_boundary_tolerance():
    gt = _square(256, 256, (60, 160), (60, 160))  # tolerance: ceil(0.008 * 362) = 3 px
    pred = np.roll(gt, 1, axis=1)
    assert jaccard(pred, gt) == pytest.approx(9900 / 10100)
    assert boundary_f(pred, gt) == 1.0
    far = np.roll(gt, 4, axis=1)  # beyond 3 px: the two vertical sides no longer match
    assert boundary_f(far, gt) < 1.0
    assert boundary_f(far, gt, bound_th=4) == 1.0  # a tolerance in pixels


def test_boundary_map_is_seg2bmap():
    m = np.zeros((5, 5), bool)
    m[1:4, 1:4] = True
    expected = np.zeros((5, 5), bool)  # the 4x4 ring shifted half a pixel towards the origin
    expected[0:4, 0:4] = True
    expected[1:3, 1:3] = False
    assert np.array_equal(boundary_map(m), expected)
    assert not boundary_map(np.ones((6, 7), bool)).any()


def test_boundary_f_hand_computed():
    """40x40 image: tolerance ceil(0.008 * 56.6) = 1 px (a plus-shaped disk). GT 10x10 square, prediction 3 px
    wider. Boundaries (seg2bmap) are the rectangles' rings shifted half a pixel up-left: GT 11x11 (40 px), the
    prediction 11x14 (46 px). GT boundary: all matched but its right side's 7 middle pixels (its end pixels
    touch the prediction's top and bottom rows); prediction: all matched but its right side (9 px) and the two
    last pixels of its top and bottom rows (2 + 2)."""
    gt = _square(40, 40, (10, 20), (10, 20))
    pred = _square(40, 40, (10, 20), (10, 23))
    precision, recall = 33 / 46, 33 / 40
    assert boundary_f(pred, gt) == pytest.approx(2 * precision * recall / (precision + recall))
    assert jaccard(pred, gt) == pytest.approx(100 / 130)


def test_void_pixels_are_left_out():
    gt = _square(40, 40, (10, 20), (10, 20))
    pred = _square(40, 40, (10, 20), (10, 25))
    void = _square(40, 40, (0, 40), (20, 40))
    assert jaccard(pred, gt, void) == 1.0 and boundary_f(pred, gt, void) == 1.0


def test_per_frame_arrays_and_statistics():
    gt = np.stack([_square(), _square(), np.zeros((40, 40), bool)])
    pred = np.stack([_square(), np.zeros((40, 40), bool), np.zeros((40, 40), bool)])
    assert np.array_equal(jaccard(pred, gt), [1.0, 0.0, 1.0])
    assert np.array_equal(boundary_f(pred, gt), [1.0, 0.0, 1.0])
    mean, recall, decay = davis_statistics([1.0, 1.0, 0.0, 0.0])  # bins [0, 1] and [2, 3]
    assert (mean, recall, decay) == (0.5, 0.5, 1.0)
    assert davis_statistics([0.7]) == pytest.approx((0.7, 1.0, 0.0))
    # 8 frames: bin edges round(linspace(1, 8, 5)) - 1 = [0, 2, 4, 5, 7]; first bin frames 0..2, last 5..7
    assert davis_statistics([0.2, 0.4, 0.6, 0.8, 1.0, 0.9, 0.3, 0.5]) == pytest.approx((4.7 / 8, 0.5, 0.4 - 1.7 / 3))


def test_bad_metric_inputs():
    m = _square()
    with pytest.raises(ValueError, match=r"gt must have pred's shape \(40, 40\), got \(40, 41\)"):
        jaccard(m, np.zeros((40, 41), bool))
    with pytest.raises(ValueError, match="pred must be a bool"):
        jaccard(m.astype(np.float32) * 0.5, m)
    with pytest.raises(TypeError, match="gt must be a numpy array"):
        boundary_f(m, m.tolist())
    with pytest.raises(ValueError, match="bound_th must be a positive number"):
        boundary_f(m, m, bound_th=0)
    with pytest.raises(ValueError, match="H x W or T x H x W"):
        jaccard(m[None, None], m[None, None])
    with pytest.raises(ValueError, match="non-empty 1-D"):
        davis_statistics([])


class _PerfectTracker:
    """A stand-in for SAM2VideoPredictor that returns the ground truth of every prompted object."""

    def __init__(self, clip: VideoClip) -> None:
        self.model = torch.nn.Linear(1, 1)
        self.clip = clip
        self.prompts: list = []
        self.passes: list = []

    def init_state(self, video):
        return {"num_frames": self.clip.num_frames, "objs": []}

    def reset_state(self, state):
        state["objs"] = []

    def add_new_points_or_box(self, state, frame_idx, obj_id, points=None, labels=None, box=None):
        self.prompts.append((frame_idx, obj_id, "box" if box is not None else "point"))
        state["objs"].append(obj_id)

    def add_new_mask(self, state, frame_idx, obj_id, mask):
        self.prompts.append((frame_idx, obj_id, "mask"))
        state["objs"].append(obj_id)

    def propagate_in_video(self, state, start_frame_idx=None):
        self.passes.append(start_frame_idx)
        for t in range(start_frame_idx, self.clip.num_frames):
            gt = np.stack([self.clip.labels[t] == o for o in state["objs"]])
            yield t, list(state["objs"]), torch.from_numpy(np.where(gt, 5.0, -5.0))[:, None]


def test_protocol_with_a_perfect_tracker():
    labels = np.zeros((5, 32, 32), np.uint8)
    labels[:, 2:12, 2:12] = 1  # object 1 from frame 0
    labels[2:, 20:30, 20:30] = 4  # object 4 appears on frame 2
    labels[4, 14:18, 14:18] = 7  # object 7 only on the last frame: nothing left to track
    clip = VideoClip("c", np.zeros((5, 32, 32, 3), np.uint8), labels, [1, 4, 7], [f"{t:05d}" for t in range(5)])
    tracker = _PerfectTracker(clip)
    result = evaluate_video(tracker, [clip], prompt="mask", progress=False)
    assert tracker.prompts == [(0, 1, "mask"), (2, 4, "mask")] and tracker.passes == [0, 2]
    assert [(o.obj_id, o.prompt_frame, o.frames) for o in result.objects] == [(1, 0, [1, 2, 3, 4]), (4, 2, [3, 4])]
    metrics = result.to_metrics_dict()
    assert metrics["J"] == metrics["F"] == metrics["J&F"] == 1.0 and metrics["J_recall"] == 1.0
    assert metrics["num_objects"] == 2 and metrics["num_clips"] == 1
    assert result.skipped == ["c/7: first visible on the last frame, nothing left to track"]
    assert len(result.overlay_rows) == 1 and [t for t, _ in result.overlay_rows[0][1]] == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="prompt: expected one of"):
        evaluate_video(tracker, [clip], prompt="scribble")
    with pytest.raises(TypeError, match="predictor: expected a SAM2VideoPredictor"):
        evaluate_video(object(), [clip])


# ------------------------------------------------------------------------------------------------------------
# samforge evaluate --video on a tiny random SAM 2 (a shrunk SAM 2.1 tiny, 256 input)


@pytest.fixture()
def tiny_sam2(tmp_path):
    """A samforge checkpoint of a shrunk SAM 2.1 tiny: like the trainer's, it records its config and overrides,
    so the CLI rebuilds the shrunk model from the file alone."""
    from sam2_oracle import SMALL_OVERRIDES

    from samforge.models.sam2 import build_sam2

    torch.manual_seed(5)
    model = build_sam2("sam2.1_hiera_t", device="cpu", hydra_overrides_extra=list(SMALL_OVERRIDES))
    checkpoint = tmp_path / "tiny.pt"
    record = {"family": "sam2", "config_name": "sam2.1_hiera_t", "overrides": list(SMALL_OVERRIDES)}
    torch.save({"model": model.state_dict(), "sam_config": record}, checkpoint)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield checkpoint
    torch.set_num_threads(threads)


def test_evaluate_video_cli_on_a_synthetic_clip(tmp_path, capsys, tiny_sam2):
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "evaluate", "--video", "synthetic-video:1:64:4:2",
                                "--model", "sam2.1_hiera_t", "--checkpoint", tiny_sam2, "--out", out)
    assert code == 0, err
    assert str(out.resolve()) in stdout and "RANDOM" not in stdout
    metrics = json.loads((out / "video_metrics.json").read_text())
    assert {"J", "F", "J&F", "per_clip", "num_clips", "num_objects"} <= set(metrics)
    assert metrics["num_clips"] == 1 and metrics["num_objects"] >= 1 and metrics["prompt"] == "box"
    assert 0.0 <= metrics["J"] <= 1.0 and 0.0 <= metrics["F"] <= 1.0
    assert metrics["J&F"] == pytest.approx((metrics["J"] + metrics["F"]) / 2)
    clip = metrics["per_clip"]["synthetic-video:2"]
    assert {"J", "F", "J&F", "num_objects", "objects"} <= set(clip)
    with open(out / "per_object.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == metrics["num_objects"]
    assert {"clip", "obj_id", "prompt_frame", "num_frames", "J", "F", "J&F", "J_recall", "J_decay"} <= set(rows[0])
    assert (out / "overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_video_cli_on_a_davis_folder_with_points(tmp_path, capsys, tiny_sam2):
    data = tmp_path / "davis"
    code, _, err = run_cli(capsys, "synth", "--video", "1", "--frames", "4", "--size", "64", "--seed", "3", "--out", data)
    assert code == 0, err
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "evaluate", "--video", data, "--model", "sam2.1_hiera_t",
                                "--checkpoint", tiny_sam2, "--prompt", "point", "--out", out)
    assert code == 0, err
    metrics = json.loads((out / "video_metrics.json").read_text())
    assert list(metrics["per_clip"]) == ["clip_0000"] and metrics["prompt"] == "point"


def test_evaluate_video_cli_errors(tmp_path, capsys):
    code, _, err = run_cli(capsys, "evaluate", "--video", "synthetic-video:1:64:4", "--model", "vit_small",
                           "--out", tmp_path / "o")
    assert code == 2 and "--video needs a SAM 2 model" in err
    code, _, err = run_cli(capsys, "evaluate", "--video", "synthetic-video:1", "--data", "synthetic:1",
                           "--model", "sam2.1_hiera_t", "--out", tmp_path / "o")
    assert code == 2 and "give exactly one of --data (images), --video (clips) or --volumes (3D)" in err
    code, _, err = run_cli(capsys, "evaluate", "--video", tmp_path / "nope", "--model", "sam2.1_hiera_t",
                           "--out", tmp_path / "o")
    assert code == 2 and "video dataset not found" in err
    assert not (tmp_path / "o").exists()
