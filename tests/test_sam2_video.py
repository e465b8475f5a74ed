"""SAM2VideoPredictor against the official video predictor (same random weights, fp32, a shrunk SAM 2.1 tiny),
and its own behaviour: lazy frames, bounded memory, hole filling, bad input."""

from __future__ import annotations

import os
import re
import warnings

import numpy as np
import pytest
import torch
from conftest import perturb_
from PIL import Image
from sam2.build_sam import build_sam2_video_predictor as official_build_video
from sam2_oracle import SMALL_OVERRIDES

from samforge import SAM2VideoPredictor, build_sam2_video_predictor
from samforge.predict.fill_holes import fill_holes_in_mask_scores
from samforge.predict.video_frames import VideoFrames

pytestmark = pytest.mark.usefixtures("one_thread")

LOGIT_TOL = 1e-3  # max abs difference of low-res and video-resolution logits allowed in fp32
IOU_MIN = 0.999  # IoU of binarised masks on every frame
T, H, W = 6, 96, 128


def write_clip(folder, num_frames: int = T, seed: int = 0) -> str:
    """Two textured ellipses moving towards each other (the second passes over the first) on noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W]
    os.makedirs(folder, exist_ok=True)
    for t in range(num_frames):
        img = rng.random((H, W, 3)) * 60 + 40
        a = ((xx - (30 + 6 * t)) / 18) ** 2 + ((yy - (40 + 2 * t)) / 12) ** 2 < 1
        b = ((xx - (100 - 5 * t)) / 10) ** 2 + ((yy - 60) / 20) ** 2 < 1
        img[a] = [220, 60, 40]
        img[b] = [40, 200, 90]
        Image.fromarray(img.astype(np.uint8)).save(os.path.join(folder, f"{t:05d}.jpg"), quality=95)
    return str(folder)


@pytest.fixture(scope="module")
def predictors():
    """(official, ours) video predictors with identical perturbed weights. Hole filling is off on both: the
    official one needs its CUDA extension for it (tested on its own below)."""
    seed = 3
    torch.manual_seed(seed)
    official = official_build_video(
        "configs/sam2.1/sam2.1_hiera_t.yaml", device="cpu", hydra_overrides_extra=list(SMALL_OVERRIDES)
    )
    perturb_(official, seed)
    official.fill_hole_area = 0
    ours = build_sam2_video_predictor("sam2.1_hiera_t", device="cpu", hydra_overrides_extra=list(SMALL_OVERRIDES))
    assert ours.fill_hole_area == 8 and ours.model.binarize_mask_from_pts_for_mem_enc  # the official defaults
    ours.model.load_state_dict(official.state_dict(), strict=True)
    ours.fill_hole_area = 0
    return official, ours


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("clip"))


def assert_same_masks(ours_out, official_out) -> None:
    f1, ids1, m1 = official_out
    f2, ids2, m2 = ours_out
    assert f1 == f2 and list(ids1) == list(ids2)
    assert m1.shape == m2.shape == (len(ids1), 1, H, W)
    diff = (m1 - m2).abs().max().item()
    assert diff <= LOGIT_TOL, f"frame {f1}: logits differ by {diff}"
    a, b = m1 > 0, m2 > 0
    union = (a | b).sum().item()
    iou = 1.0 if union == 0 else (a & b).sum().item() / union
    assert iou >= IOU_MIN, f"frame {f1}: mask IoU {iou}"


def assert_same_state(ours_state, official_state) -> None:
    """Low-res logits and object pointers of every frame kept in the memory bank agree."""
    assert len(ours_state["output_dict_per_obj"]) == len(official_state["output_dict_per_obj"])
    for idx, official_dict in official_state["output_dict_per_obj"].items():
        ours_dict = ours_state["output_dict_per_obj"][idx]
        for key in ("cond_frame_outputs", "non_cond_frame_outputs"):
            assert sorted(ours_dict[key]) == sorted(official_dict[key]), key
            for t, out in official_dict[key].items():
                for name in ("pred_masks", "obj_ptr"):
                    diff = (ours_dict[key][t][name] - out[name]).abs().max().item()
                    assert diff <= LOGIT_TOL, f"object {idx} frame {t} {name}: {diff}"


def run_both(predictors, clip_dir, script):
    """Apply ``script(predictor, state, call)`` to both predictors; every returned result is compared."""
    official, ours = predictors
    states = official.init_state(clip_dir), ours.init_state(clip_dir)
    results = []
    for pred, state in zip((official, ours), states):
        out = []
        script(pred, state, out.append)
        results.append(out)
    assert len(results[0]) == len(results[1]) > 0
    for official_out, ours_out in zip(*results):
        if isinstance(official_out, list):  # a propagation
            assert [r[0] for r in official_out] == [r[0] for r in ours_out]
            for a, b in zip(ours_out, official_out):
                assert_same_masks(a, b)
        else:
            assert_same_masks(ours_out, official_out)
    assert_same_state(states[1], states[0])
    return results[1]


def test_points_on_first_frame(predictors, clip_dir):
    def script(p, s, out):
        out(p.add_new_points_or_box(s, 0, 1, points=np.array([[30, 40], [35, 44]]), labels=np.array([1, 1])))
        out(list(p.propagate_in_video(s)))

    results = run_both(predictors, clip_dir, script)
    assert [r[0] for r in results[1]] == list(range(T))


def test_box_on_first_frame(predictors, clip_dir):
    def script(p, s, out):
        out(p.add_new_points_or_box(s, 0, 5, box=np.array([85, 40, 112, 82])))
        out(list(p.propagate_in_video(s)))

    run_both(predictors, clip_dir, script)


def test_two_objects_and_correction_on_a_later_frame(predictors, clip_dir):
    def script(p, s, out):
        out(p.add_new_points_or_box(s, 0, 1, points=np.array([[30, 40]]), labels=np.array([1])))
        out(p.add_new_points_or_box(s, 0, 2, box=np.array([85, 40, 112, 82])))
        out(list(p.propagate_in_video(s)))
        out(p.add_new_points_or_box(s, 3, 1, points=[[50, 46]], labels=[0], clear_old_points=False))
        out(p.add_new_points_or_box(s, 3, 1, points=[[48, 45]], labels=[1], clear_old_points=False))
        out(list(p.propagate_in_video(s, start_frame_idx=3)))

    results = run_both(predictors, clip_dir, script)
    assert results[0][1] == [1] and results[2][0][1] == [1, 2]


def test_reverse_propagation_from_a_middle_frame(predictors, clip_dir):
    def script(p, s, out):
        out(p.add_new_points_or_box(s, 3, 7, points=np.array([[48, 46]]), labels=np.array([1])))
        out(list(p.propagate_in_video(s)))
        out(list(p.propagate_in_video(s, reverse=True)))
        out(list(p.propagate_in_video(s, start_frame_idx=4, max_frame_num_to_track=2, reverse=True)))

    results = run_both(predictors, clip_dir, script)
    assert [r[0] for r in results[2]] == [3, 2, 1, 0]
    assert [r[0] for r in results[3]] == [4, 3, 2]


def test_reverse_pass_with_no_object_pointer(predictors, clip_dir):
    """Reverse from a frame after the only prompt: no pointer is in reach (SAM 2.1 reads past ones only), and the
    bf16 memories alone reach the attention. The official code fails there on CPU (a dtype mismatch); ours runs
    and gives a mask for every frame of the pass."""
    _, ours = predictors
    state = ours.init_state(clip_dir)
    ours.add_new_points_or_box(state, 3, 7, points=[[48, 46]], labels=[1])
    list(ours.propagate_in_video(state))
    out = list(ours.propagate_in_video(state, start_frame_idx=5, max_frame_num_to_track=2, reverse=True))
    assert [f for f, _, _ in out] == [5, 4, 3]
    assert all(m.shape == (1, 1, H, W) and torch.isfinite(m).all() for _, _, m in out)


def test_mask_prompt_clear_and_remove(predictors, clip_dir):
    mask = np.zeros((H, W), dtype=bool)
    mask[30:50, 15:45] = True

    def script(p, s, out):
        out(p.add_new_mask(s, 1, 1, mask))
        out(p.add_new_points_or_box(s, 1, 2, points=[[100, 60]], labels=[1]))
        out(p.add_new_points_or_box(s, 4, 2, points=[[80, 60]], labels=[1]))
        out(p.clear_all_prompts_in_frame(s, 4, 2))
        out(list(p.propagate_in_video(s)))
        ids, updated = p.remove_object(s, 1)
        assert ids == [2] and [f for f, _ in updated] == [1]
        out((updated[0][0], ids, updated[0][1]))
        out(list(p.propagate_in_video(s, start_frame_idx=1)))

    run_both(predictors, clip_dir, script)


def test_video_resolution_and_official_frame_order(tmp_path, predictors):
    """Frames named 0.jpg .. 11.jpg are read in numeric order, as the official reader sorts them."""
    _, ours = predictors
    folder = tmp_path / "numbers"
    write_clip(folder, num_frames=12)
    for t in range(12):
        os.rename(folder / f"{t:05d}.jpg", folder / f"{t}.jpg")
    frames = VideoFrames(folder, 64)
    assert frames.names[:3] == ["0.jpg", "1.jpg", "2.jpg"] and frames.names[-1] == "11.jpg"
    state = ours.init_state(str(folder))
    assert (state["video_height"], state["video_width"], state["num_frames"]) == (H, W, 12)


def test_array_clip_equals_folder_clip(predictors, clip_dir):
    """A uint8 T x H x W x 3 array (a volume's slices, say) tracks exactly as the same frames on disk."""
    _, ours = predictors
    frames = np.stack([np.asarray(Image.open(os.path.join(clip_dir, f"{t:05d}.jpg"))) for t in range(T)])
    results = []
    for source in (clip_dir, frames):
        state = ours.init_state(source)
        ours.add_new_points_or_box(state, 0, 1, points=[[30, 40]], labels=[1])
        results.append(torch.cat([m for _, _, m in ours.propagate_in_video(state)]))
    assert torch.equal(results[0], results[1])


def test_video_file_is_read_with_pyav(tmp_path):
    av = pytest.importorskip("av", reason="PyAV is a test dependency (pip install av)")
    path = tmp_path / "clip.mp4"
    rng = np.random.default_rng(0)
    frames = [np.full((64, 80, 3), 30 * t, dtype=np.uint8) + rng.integers(0, 5, (64, 80, 3), dtype=np.uint8)
              for t in range(7)]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 80, 64, "yuv420p"
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode(None))
    video = VideoFrames(path, 32, cache_size=2)
    assert len(video) == 7 and (video.video_height, video.video_width) == (64, 80)
    for t in (0, 6, 3, 5, 1):  # out of order: re-decodes from the start when going back
        assert abs(float(video.rgb(t).mean()) - float(frames[t].mean())) < 4
        assert video[t].shape == (3, 32, 32)


def test_release_old_memory_bounds_the_state_and_keeps_results(tmp_path):
    """With release_old_memory, memory features outside the window are dropped while propagating, and
    every yielded mask is unchanged (a forward and a reverse pass from a middle prompt)."""
    torch.manual_seed(0)
    pred = build_sam2_video_predictor(
        "sam2.1_hiera_t",
        device="cpu",
        hydra_overrides_extra=[*SMALL_OVERRIDES, "++model.num_maskmem=3", "++model.max_obj_ptrs_in_encoder=4"],
    )
    folder = write_clip(tmp_path / "long", num_frames=24)
    runs = []
    for release in (False, True):
        state = pred.init_state(folder, release_old_memory=release, frame_cache_size=2)
        pred.add_new_points_or_box(state, 8, 1, points=[[60, 50]], labels=[1])
        forward = [m for _, _, m in pred.propagate_in_video(state)]
        kept = state["output_dict_per_obj"][0]["non_cond_frame_outputs"]
        with_memory = sorted(t for t, o in kept.items() if o["maskmem_features"] is not None)
        num_kept = len(kept)
        backward = [m for _, _, m in pred.propagate_in_video(state, reverse=True)]
        runs.append((torch.cat(forward), torch.cat(backward), with_memory, num_kept))
    (f0, b0, mem0, n0), (f1, b1, mem1, n1) = runs
    assert torch.equal(f0, f1) and torch.equal(b0, b1)
    assert mem0 == list(range(9, 24)) and n0 == 15
    window = 1 + (3 - 2)  # memory_window(num_maskmem=3, stride=1): the last frames plus those near the prompt
    assert mem1 == [9, 10, 22, 23]
    pointer_reach = 4  # max(max_obj_ptrs_in_encoder, window + stride): whole outputs kept within it
    assert n1 == len([t for t in range(9, 24) if t > 23 - pointer_reach or t - 8 <= pointer_reach]) < n0
    assert window == 2


def test_fill_holes_in_mask_scores():
    logits = torch.full((2, 1, 12, 12), 5.0)
    logits[0, 0, 2:4, 2:4] = -3  # a 4-pixel hole: filled
    logits[0, 0, 6:9, 6:9] = -3  # a 9-pixel hole: kept
    logits[0, 0, 0, 11] = -1  # a 1-pixel hole at the border: filled, as official (any small background part)
    filled = fill_holes_in_mask_scores(logits, max_area=8)
    assert torch.all(filled[0, 0, 2:4, 2:4] == 0.1) and filled[0, 0, 0, 11] == 0.1
    assert torch.all(filled[0, 0, 6:9, 6:9] == -3) and torch.equal(filled[1], logits[1])
    with pytest.raises(ValueError, match="max_area"):
        fill_holes_in_mask_scores(logits, 0)


def test_bad_input_is_refused_and_nothing_is_lost(predictors, clip_dir, tmp_path):
    _, ours = predictors
    with pytest.raises(ValueError, match="no frames"):
        ours.init_state(str(tmp_path))  # an empty folder
    broken = tmp_path / "broken"
    write_clip(broken, num_frames=3)
    (broken / "00001.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="00001.jpg"):
        ours.init_state(str(broken))
    with pytest.raises(FileNotFoundError):
        ours.init_state(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="uint8"):
        ours.init_state(np.zeros((4, 8, 8, 3), dtype=np.float32))
    with pytest.raises(TypeError, match="SAM2Base"):
        SAM2VideoPredictor(object())

    state = ours.init_state(clip_dir)
    ours.add_new_points_or_box(state, 0, 1, points=[[30, 40]], labels=[1])
    before = [m.clone() for _, _, m in ours.propagate_in_video(state)]
    with pytest.raises(IndexError, match="out of range"):
        ours.add_new_points_or_box(state, T, 1, points=[[30, 40]], labels=[1])
    with pytest.raises(ValueError, match="points must have shape Nx2"):
        ours.add_new_points_or_box(state, 1, 1, points=[[30, 40, 1]], labels=[1])
    with pytest.raises(ValueError, match=r"labels must have shape \(1,\) to match points"):
        ours.add_new_points_or_box(state, 1, 1, points=[[30, 40]], labels=[1, 0])
    with pytest.raises(ValueError, match="box"):
        ours.add_new_points_or_box(state, 1, 1, box=[1, 2, 3])
    with pytest.raises(ValueError, match="2-D"):
        ours.add_new_mask(state, 1, 1, np.zeros((2, 3, 4)))
    with pytest.raises(RuntimeError, match="doesn't exist"):
        ours.remove_object(state, 99, strict=True)
    with pytest.warns(UserWarning, match="doesn't exist"):
        assert ours.remove_object(state, 99)[0] == [1]
    assert state["obj_ids"] == [1]  # no object was created by the refused calls
    after = [m for _, _, m in ours.propagate_in_video(state)]
    assert all(torch.equal(a, b) for a, b in zip(before, after))


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(points=[[30, 40], [50, 60]], labels=[1, 0.7]), ValueError,
         "labels must be 1 (foreground), 0 (background), -1 (ignore) or 2/3 (box corners), got [0.7, 1.0]"),
        (dict(points=[[30, 40]], labels=[2.9]), ValueError, "got [2.9]"),
        (dict(points=[[30, 40]], labels=[7]), ValueError, "got [7]"),
        (dict(points=[[np.nan, 40]], labels=[1]), ValueError, "points must be finite"),
        (dict(points=[[30, 40]], labels=[1], box=[10, 50, 40, 20]), ValueError,
         "box must be [x0, y0, x1, y1] with x0 <= x1 and y0 <= y1, got [[10.0, 50.0, 40.0, 20.0]]"),
        (dict(box=[50, 5, 40, 20]), ValueError, "x0 <= x1 and y0 <= y1"),
        (dict(box=[1, 2, np.inf, 4]), ValueError, "box must be finite"),
        (dict(box=[1, 2, 3]), ValueError, "box must be 4 numbers [x0, y0, x1, y1], got shape (3,)"),
        (dict(points=np.zeros((2, 1, 2)), labels=np.ones((2, 1))), ValueError, "for one object"),
        (dict(obj_id=[1], points=[[30, 40]], labels=[1]), TypeError, "obj_id must be hashable (an int, usually), got list"),
    ],
    ids=["label-0.7", "label-2.9", "label-7", "point-nan", "box-y0>y1", "box-x0>x1", "box-inf", "box-3", "two-objects",
         "obj-id-list"],
)
def test_video_prompts_are_checked_as_the_image_predictors_check_them(predictors, clip_dir, kwargs, error, message):
    _, ours = predictors
    state = ours.init_state(clip_dir)
    kwargs = {"obj_id": 1, **kwargs}
    with pytest.raises(error, match=re.escape(message)):
        ours.add_new_points_or_box(state, 0, **kwargs)
    assert state["obj_ids"] == []  # nothing was created


@pytest.mark.parametrize(
    "kwargs, warned",
    [
        (dict(points=np.array([[W + 5, 40], [35, 44]]), labels=np.array([1, 1])), "points: a point lies outside"),
        (dict(box=np.array([-4, -2, 70, H + 3])), None),  # overshoots the border, as detector boxes do
        (dict(box=np.array([W + 1, 10, W + 30, 50])), "box: a box lies entirely outside the image"),
        (dict(points=np.array([[1.5, 0.5]]), labels=np.array([1]), normalize_coords=False), "points: a point lies"),
    ],
    ids=["point-outside", "box-overshooting", "box-outside", "normalized-outside"],
)
def test_prompts_outside_the_frame_are_used_as_the_official_uses_them(predictors, clip_dir, kwargs, warned):
    official, ours = predictors
    results = []
    for p in (ours, official):
        state = p.init_state(clip_dir)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            results.append(p.add_new_points_or_box(state, 0, 1, **kwargs))
        if p is ours:
            messages = [str(w.message) for w in caught]
            assert (messages == []) if warned is None else (len(messages) == 1 and messages[0].startswith(warned))
    (f1, ids1, m1), (f2, ids2, m2) = results
    assert (f1, list(ids1)) == (f2, list(ids2)) and torch.equal(m1, m2)


def test_real_hiera_tiny_shapes(clip_dir):
    """SAM 2.1 hiera tiny with its real widths, depths and memory sizes (input 512 instead of 1024 to keep the
    suite fast: weights do not depend on it; RoPE and position tables follow the feature size): points on frame
    0, a second object's box, propagation through the clip."""
    seed = 5
    overrides = ["++model.image_size=512"]
    torch.manual_seed(seed)
    official = official_build_video("configs/sam2.1/sam2.1_hiera_t.yaml", device="cpu", hydra_overrides_extra=overrides)
    perturb_(official, seed)
    official.fill_hole_area = 0
    ours = build_sam2_video_predictor("sam2.1_hiera_t", device="cpu", hydra_overrides_extra=overrides)
    ours.model.load_state_dict(official.state_dict(), strict=True)
    ours.fill_hole_area = 0

    def script(p, s, out):
        out(p.add_new_points_or_box(s, 0, 1, points=np.array([[30, 40]]), labels=np.array([1])))
        out(p.add_new_points_or_box(s, 0, 2, box=np.array([85, 40, 112, 82])))
        out(list(p.propagate_in_video(s, max_frame_num_to_track=3)))

    run_both((official, ours), clip_dir, script)


def test_video_predictor_for_an_image_model_matches_the_video_build():
    """A model built for images and wrapped with video_predictor_for gets the official video build's settings."""
    from samforge.models.sam2 import build_sam2
    from samforge.predict.sam2_video_predictor import video_predictor_for

    built = build_sam2_video_predictor("sam2.1_hiera_t", device="meta", hydra_overrides_extra=list(SMALL_OVERRIDES))
    wrapped = video_predictor_for(build_sam2("sam2.1_hiera_t", device="meta", hydra_overrides_extra=list(SMALL_OVERRIDES)))
    for p in (built, wrapped):
        assert p.fill_hole_area == 8 and p.model.binarize_mask_from_pts_for_mem_enc
    plain = video_predictor_for(build_sam2("sam2.1_hiera_t", device="meta"), video_postprocessing=False)
    assert plain.fill_hole_area == 0 and not plain.model.binarize_mask_from_pts_for_mem_enc
    with pytest.raises(TypeError, match="SAM2Base"):
        video_predictor_for(object())
