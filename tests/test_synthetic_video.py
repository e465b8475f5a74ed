"""Synthetic video clips (the embedded default for video), the DAVIS-layout writer / reader and
``samforge synth --video``."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from test_cli import run_cli

from samforge.data.davis_dataset import (
    DavisDataset,
    davis_palette,
    open_video_dataset,
    read_annotation,
    write_davis_clip,
)
from samforge.data.synthetic import MIN_VISIBLE_FRACTION
from samforge.data.synthetic_video import MOTION_KINDS, SyntheticVideoDataset, make_clip

SMALL = dict(num_frames=8, image_size=(64, 80))


@pytest.fixture(scope="module")
def clips():
    return {seed: make_clip(seed, **SMALL) for seed in range(10)}


def test_same_seed_same_clip_and_others_differ(clips):
    again = make_clip(3, **SMALL)
    clip = clips[3]
    assert np.array_equal(again.frames, clip.frames) and np.array_equal(again.masks, clip.masks)
    assert again.shapes == clip.shapes and again.motions == clip.motions
    assert not np.array_equal(clips[4].frames, clip.frames)


def test_shapes_dtypes_and_disjoint_visible_masks(clips):
    for clip in clips.values():
        t, k = clip.masks.shape[:2]
        assert clip.frames.shape == (8, 64, 80, 3) and clip.frames.dtype == np.uint8
        assert clip.masks.dtype == bool and t == 8 and 1 <= k <= 3
        assert len(clip.shapes) == len(clip.motions) == k and set(clip.motions) <= set(MOTION_KINDS)
        assert clip.masks.sum(axis=1).max() <= 1  # pairwise disjoint on every frame
        assert not (clip.masks & ~clip.amodal).any()  # visible parts of each object's whole
        best = clip.masks.sum(axis=(2, 3)).max(axis=0)
        assert (best >= MIN_VISIBLE_FRACTION * 64 * 80).all()  # every object is properly visible somewhere
        labels = clip.labels()
        assert labels.shape == (8, 64, 80) and labels.max() <= k
        assert np.array_equal(labels[:, None] == np.arange(1, k + 1)[None, :, None, None], clip.masks)


def _centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def test_objects_move_and_the_background_shifts(clips):
    moved = 0
    for clip in clips.values():
        for k in range(clip.num_objects):
            amodal = clip.amodal[:, k]
            present = [t for t in range(clip.num_frames) if amodal[t].any()]
            if len(present) >= 2 and np.linalg.norm(_centroid(amodal[present[-1]]) - _centroid(amodal[present[0]])) > 3:
                moved += 1
    assert moved >= 10
    clip = make_clip(0, num_frames=2, image_size=(64, 64), num_objects=1, speed=0.0, deform=0.0)
    background = ~clip.amodal[0, 0] & ~clip.amodal[1, 0]
    assert np.abs(clip.frames[0].astype(int) - clip.frames[1].astype(int))[background].mean() > 2  # the pan


def test_occlusion_and_changing_depth_order_happen(clips):
    def partly_hidden(c) -> bool:
        visible, whole = c.masks.sum((2, 3)), c.amodal.sum((2, 3))
        return bool(((visible > 0) & (visible < whole)).any())

    occluded = [s for s, c in clips.items() if partly_hidden(c)]
    assert len(occluded) >= 3
    reordered = [s for s, c in clips.items() if (c.depth != c.depth[0]).any()]
    assert reordered


def test_objects_leave_and_enter_the_frame(clips):
    areas = {s: c.masks.sum((2, 3)) for s, c in clips.items()}
    left = [(s, k) for s, c in clips.items() for k, m in enumerate(c.motions)
            if m == "leave" and areas[s][0, k] > 0 and not c.amodal[-1, k].any()]
    entered = [(s, k) for s, c in clips.items() for k, m in enumerate(c.motions)
               if m == "enter" and not c.amodal[0, k].any() and areas[s][-1, k] > 0]
    assert left and entered
    assert all(c.motions[0] == "stay" for c in clips.values())


def test_davis_round_trip(tmp_path, clips):
    clip = clips[1]
    frame_dir = clip.write_davis(tmp_path, "one")
    assert frame_dir == tmp_path / "JPEGImages" / "one"
    assert sorted(p.name for p in frame_dir.iterdir()) == [f"{t:05d}.jpg" for t in range(8)]
    with Image.open(tmp_path / "Annotations" / "one" / "00000.png") as im:
        assert im.mode == "P" and im.getpalette()[:6] == [0, 0, 0, 128, 0, 0]
    data = DavisDataset(tmp_path)
    assert data.names == ["one"] and len(data) == 1
    read = data[0]
    assert read.name == "one" and read.video == frame_dir and read.num_frames == 8 and read.size == (64, 80)
    assert np.array_equal(read.labels, clip.labels())
    assert read.obj_ids == [k + 1 for k in range(clip.num_objects) if clip.masks[:, k].any()]
    assert np.array_equal(read.mask(1), clip.masks[:, 0]) and read.void() is None
    assert np.abs(read.frame(5).astype(int) - clip.frames[5].astype(int)).mean() < 6  # JPEG
    assert np.array_equal(davis_palette()[1], [128, 0, 0]) and np.array_equal(davis_palette()[2], [0, 128, 0])


def test_reader_finds_the_resolution_folder_and_void(tmp_path):
    frames = np.zeros((2, 40, 40, 3), np.uint8)
    labels = np.zeros((2, 40, 40), np.uint8)
    labels[:, 5:15, 5:15] = 3
    labels[1, 30:, 30:] = 255
    write_davis_clip(tmp_path, "x", frames, labels)  # the plain layout, then moved under 480p/
    for top in ("JPEGImages", "Annotations"):
        (tmp_path / top / "480p").mkdir()
        (tmp_path / top / "x").rename(tmp_path / top / "480p" / "x")
    clip = open_video_dataset(tmp_path)[0]
    assert clip.obj_ids == [3] and clip.void()[1].sum() == 100 and not clip.void()[0].any()


def test_synthetic_video_dataset_and_spec():
    data = open_video_dataset("synthetic-video:2:48x64:3:7")
    assert isinstance(data, SyntheticVideoDataset) and len(data) == 2
    assert data.names == ["synthetic-video:7", "synthetic-video:8"]
    clip = data[1]
    direct = make_clip(8, num_frames=3, image_size=(48, 64))
    assert np.array_equal(clip.video, direct.frames) and np.array_equal(clip.labels, direct.labels())
    assert clip.obj_ids == list(range(1, direct.num_objects + 1))
    with pytest.raises(IndexError, match="out of range"):
        data[2]


def test_synth_cli_writes_clips(tmp_path, capsys):
    code, out, err = run_cli(capsys, "synth", "--video", "2", "--frames", "3", "--size", "48", "--out", tmp_path)
    assert code == 0, err
    assert str(tmp_path.resolve()) in out
    data = DavisDataset(tmp_path)
    assert data.names == ["clip_0000", "clip_0001"]
    assert np.array_equal(data[1].labels, make_clip(1, num_frames=3, image_size=(48, 48)).labels())


@pytest.mark.parametrize("kwargs, match", [
    (dict(seed=-1), "seed"),
    (dict(seed=0, num_frames=0), "num_frames"),
    (dict(seed=0, num_frames=2.5), "num_frames"),
    (dict(seed=0, image_size=(16, 64)), "image_size"),
    (dict(seed=0, num_objects=0), "num_objects"),
    (dict(seed=0, deform=0.9), "deform"),
    (dict(seed=0, speed=-1), "speed"),
    (dict(seed=0, leave_prob=0.8, enter_prob=0.5), "leave_prob"),
])
def test_bad_generator_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_clip(**kwargs)


@pytest.fixture()
def davis_dir(tmp_path):
    frames = np.full((3, 32, 40, 3), 100, np.uint8)
    labels = np.zeros((3, 32, 40), np.uint8)
    labels[:, 4:12, 4:12] = 1
    write_davis_clip(tmp_path, "c", frames, labels)
    return tmp_path


def test_bad_davis_folders_are_named(davis_dir, tmp_path_factory):
    ann = davis_dir / "Annotations" / "c"
    (ann / "00001.png").unlink()
    with pytest.raises(ValueError, match=r"no annotation PNG for 1 of 3 frames \(00001.png\)"):
        DavisDataset(davis_dir)[0]
    Image.fromarray(np.zeros((32, 40, 3), np.uint8)).save(ann / "00001.png")
    with pytest.raises(ValueError, match=r"00001.png is a RGB picture"):
        DavisDataset(davis_dir)[0]
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(ann / "00001.png")
    with pytest.raises(ValueError, match=r"00001.png is 40x30 but the frames are 40x32"):
        DavisDataset(davis_dir)[0]
    (davis_dir / "JPEGImages" / "c" / "00002.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"unreadable frame .*00002.jpg"):
        DavisDataset(davis_dir)[0]
    (ann / "00000.png").write_bytes(b"broken")
    with pytest.raises(ValueError, match=r"unreadable annotation .*00000.png"):
        read_annotation(ann / "00000.png")
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(ValueError, match="JPEGImages is missing"):
        DavisDataset(empty)
    (empty / "JPEGImages").mkdir()
    (empty / "Annotations").mkdir()
    with pytest.raises(ValueError, match="no clips in"):
        DavisDataset(empty)
    with pytest.raises(ValueError, match=r"clips not found .*\['nope'\]"):
        DavisDataset(davis_dir, clips=["nope"])
    with pytest.raises(FileNotFoundError, match="video dataset not found"):
        open_video_dataset(empty / "missing")
    with pytest.raises(ValueError, match="bad synthetic video spec"):
        open_video_dataset("synthetic-video:2:big")
    with pytest.raises(ValueError, match="N and FRAMES must be >= 1"):
        open_video_dataset("synthetic-video:1:64:0")


def test_bad_writer_inputs(tmp_path):
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="frames: expected a T x H x W x 3 uint8"):
        write_davis_clip(tmp_path, "a", frames.astype(np.float32), np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(ValueError, match=r"labels: expected shape \(2, 8, 8\)"):
        write_davis_clip(tmp_path, "a", frames, np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="overlap"):
        write_davis_clip(tmp_path, "a", frames, np.ones((2, 2, 8, 8), bool))
    with pytest.raises(ValueError, match="labels in 0..255"):
        write_davis_clip(tmp_path, "a", frames, np.full((2, 8, 8), 300, np.int32))
    with pytest.raises(ValueError, match="without path separators"):
        write_davis_clip(tmp_path, "../a", frames, np.zeros((2, 8, 8), np.uint8))
