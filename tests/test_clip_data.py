"""Clip data for SAM 2 training: synthetic medical volumes, the clip datasets of every source, training windows."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from samforge.data.clip_dataset import (
    Clip,
    ImageClipDataset,
    NiftiClipDataset,
    NpzClipDataset,
    SyntheticVolumeClipDataset,
    VideoClipDataset,
    open_clip_dataset,
)
from samforge.data.nifti_dataset import NiftiDataset
from samforge.data.npz_dataset import NpzDataset
from samforge.data.synthetic_medical_volume import (
    make_medical_volume,
    nifti_affine,
    write_medical_volumes,
    write_medsam_npz,
    write_nifti_pair,
)
from samforge.data.synthetic_video import make_clip
from samforge.predict.sam2_transforms import SAM2Transforms
from samforge.train.clip_batches import TrainingClips, collate_clips, prepare_clip_frames, prepare_clip_masks

SMALL = dict(depth=8, image_size=(48, 64))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class ListClips:
    """An in-memory clip dataset."""

    def __init__(self, clips: list) -> None:
        self.clips = clips
        self.bad_samples: list = []

    @property
    def names(self) -> list:
        return [c.name for c in self.clips]

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> Clip:
        return self.clips[i]


def striped_clip(name: str, num_frames: int, obj_frames: dict | None = None, size: tuple = (32, 40)) -> Clip:
    """Object k (label 10 * k) fills column band k on the frames ``obj_frames[k]`` (default: all); frame t has
    grey value 20 * t, so frames and objects can be told apart after any window is taken."""
    h, w = size
    ids = [10, 20, 30]
    obj_frames = obj_frames or {k: range(num_frames) for k in range(3)}
    labels = np.zeros((num_frames, h, w), np.uint8)
    for k, ts in obj_frames.items():
        for t in ts:
            labels[t, 4:h - 4, 2 + 12 * k: 12 + 12 * k] = ids[k]
    frames = np.broadcast_to((20 * np.arange(num_frames, dtype=np.uint8))[:, None, None, None],
                             (num_frames, h, w, 3)).copy()
    present = sorted({ids[k] for k, ts in obj_frames.items() if len(ts)})
    return Clip(name, frames, present, labels=labels)


# --- the synthetic volumes ---------------------------------------------------------------------------------------

def test_volume_deterministic_and_well_formed():
    a, b = make_medical_volume(3, **SMALL), make_medical_volume(3, **SMALL)
    assert np.array_equal(a.volume, b.volume) and np.array_equal(a.labels, b.labels)
    c = make_medical_volume(4, **SMALL)
    assert not np.array_equal(a.volume, c.volume)
    assert a.volume.shape == a.labels.shape == (8, 48, 64)
    assert a.volume.dtype == a.labels.dtype == np.uint8
    k = int(a.labels.max())
    assert 1 <= k <= 3 and set(np.unique(a.labels)) == set(range(k + 1))  # 0 and organs 1..K
    assert a.volume[:, 0, 0].max() < 60 and a.volume[:, 24, 32].mean() > 60  # dark outside, brighter body


def test_volume_slices_change_smoothly_and_organs_come_and_go():
    come_and_go = 0
    for seed in range(3):
        vol = make_medical_volume(seed)  # default 16 x 128 x 128
        for k in range(1, int(vol.labels.max()) + 1):
            m = vol.labels == k
            areas = m.sum(axis=(1, 2))
            present = np.flatnonzero(areas)
            assert np.all(np.diff(present) == 1), "an organ occupies one run of slices"
            come_and_go += int(present[0] > 0 or present[-1] < len(areas) - 1)
            assert np.abs(np.diff(areas[present])).max() <= 0.6 * areas.max()
            ious = [(m[z] & m[z + 1]).sum() / (m[z] | m[z + 1]).sum() for z in present[:-1]]
            if ious:
                assert np.mean(ious) > 0.5
        # the image follows the labels: organs differ from the tissue around them, a little
        organ = vol.volume[vol.labels > 0].astype(float).mean()
        assert abs(organ - np.median(vol.volume[vol.volume > 50])) < 60
    assert come_and_go >= 3


def test_volume_checks_its_arguments():
    with pytest.raises(ValueError, match="seed"):
        make_medical_volume(-1)
    with pytest.raises(ValueError, match="depth"):
        make_medical_volume(0, depth=0)
    with pytest.raises(ValueError, match="image_size"):
        make_medical_volume(0, image_size=(16, 64))
    with pytest.raises(ValueError, match="num_organs"):
        make_medical_volume(0, num_organs=0)


def test_writers_round_trip(tmp_path):
    vol = make_medical_volume(1, **SMALL)
    img_path, lab_path = write_nifti_pair(tmp_path / "nii", "case1", vol.volume, vol.labels)
    assert img_path.name == "case1.nii.gz" and lab_path.parent.name == "labels"
    img = nib.load(str(img_path))
    assert img.shape == (48, 64, 8)
    assert np.allclose(img.affine, nifti_affine((8, 48, 64)))
    assert np.allclose(sorted(img.header.get_zooms()), [0.8, 0.8, 2.5])
    assert np.array_equal(np.asarray(nib.load(str(lab_path)).dataobj), np.transpose(vol.labels, (1, 2, 0)))
    npz = write_medsam_npz(tmp_path / "npz" / "case1.npz", vol.volume, vol.labels)
    with np.load(npz) as z:
        assert np.array_equal(z["imgs"], vol.volume) and np.array_equal(z["gts"], vol.labels)
    # the 2D readers read them too
    assert len(NiftiDataset(tmp_path / "nii")) == len(NpzDataset(npz)) == int((vol.labels.max(axis=(1, 2)) > 0).sum())
    with pytest.raises(ValueError, match="differ"):
        write_medsam_npz(tmp_path / "x.npz", vol.volume, vol.labels[:, :10])
    with pytest.raises(ValueError, match="name"):
        write_nifti_pair(tmp_path, "a/b", vol.volume, vol.labels)


# --- every source opens as clips ---------------------------------------------------------------------------------

def test_synthetic_specs_open_as_clips():
    ds = open_clip_dataset("synthetic-medical-volume:2:48x64:6:5")
    assert isinstance(ds, SyntheticVolumeClipDataset) and len(ds) == 2
    clip = ds[1]
    vol = make_medical_volume(6, depth=6, image_size=(48, 64))
    assert clip.name == "synthetic-medical-volume:6" == ds.names[1]
    assert np.array_equal(clip.frames[..., 0], vol.volume) and clip.frames.shape == (6, 48, 64, 3)
    assert clip.obj_ids == sorted(set(np.unique(vol.labels)) - {0})
    assert np.array_equal(clip.masks, vol.labels[:, None] == np.array(clip.obj_ids)[None, :, None, None])
    video = open_clip_dataset("synthetic-video:1:48:3")
    assert isinstance(video, VideoClipDataset) and video[0].frames.shape == (3, 48, 48, 3)
    images = open_clip_dataset("synthetic:2:48")
    assert isinstance(images, ImageClipDataset) and images[0].num_frames == 1 and images[0].masks.ndim == 4
    with pytest.raises(ValueError, match="synthetic-medical-volume"):
        open_clip_dataset("synthetic-medical-volume:x")
    with pytest.raises(TypeError, match="str or path"):
        open_clip_dataset(3)
    with pytest.raises(ValueError, match="window"):
        open_clip_dataset("synthetic-medical-volume:1", window=(40, 400))


def test_files_open_as_clips(tmp_path):
    vols = [make_medical_volume(s, **SMALL) for s in range(2)]
    # NIfTI: a (0, 255) window keeps the uint8 values, so the clip is the volume itself
    write_medical_volumes(tmp_path / "nii", 2, image_size=(48, 64), depth=8, fmt="nifti")
    nii = open_clip_dataset(tmp_path / "nii", window=(127.5, 255))
    assert isinstance(nii, NiftiClipDataset) and len(nii) == 2 and nii.names[0].endswith("vol_0000.nii.gz")
    assert np.array_equal(nii[0].frames[..., 0], vols[0].volume)
    assert np.array_equal(nii[1].masks.any(1), vols[1].labels > 0)
    assert open_clip_dataset(tmp_path / "nii", axis=0)[0].frames.shape == (48, 64, 8, 3)
    # npz: a file and a folder
    write_medical_volumes(tmp_path / "npz", 2, image_size=(48, 64), depth=8, fmt="npz")
    one = open_clip_dataset(tmp_path / "npz" / "vol_0001.npz")
    assert isinstance(one, NpzClipDataset) and len(one) == 1
    assert np.array_equal(one[0].frames[..., 0], vols[1].volume)
    assert one[0].obj_ids == sorted(set(np.unique(vols[1].labels)) - {0})
    assert len(open_clip_dataset(tmp_path / "npz")) == 2
    # a 2D npz is a one-frame clip; an RGB volume keeps its colours
    np.savez(tmp_path / "npz" / "flat.npz", imgs=np.full((40, 40), 7, np.uint8), gts=np.eye(40, dtype=np.uint8) * 4)
    rgb = np.random.default_rng(0).integers(0, 255, (3, 40, 40, 3), dtype=np.uint8)
    np.savez(tmp_path / "npz" / "rgb.npz", imgs=rgb, gts=np.ones((3, 40, 40), np.uint8))
    ds = open_clip_dataset(tmp_path / "npz")
    flat = ds[ds.names.index(str(tmp_path / "npz" / "flat.npz"))]
    assert flat.num_frames == 1 and flat.obj_ids == [4] and flat.frames.shape == (1, 40, 40, 3)
    assert np.array_equal(ds[ds.names.index(str(tmp_path / "npz" / "rgb.npz"))].frames, rgb)
    # DAVIS layout
    make_clip(0, num_frames=3, image_size=(48, 48)).write_davis(tmp_path / "davis", "c0")
    davis = open_clip_dataset(tmp_path / "davis")
    assert isinstance(davis, VideoClipDataset) and davis.names == ["c0"]
    clip = davis[0]
    assert clip.frames.shape == (3, 48, 48, 3) and clip.masks.shape[:2] == (3, len(clip.obj_ids))
    # an images/ + masks/ folder: one-frame clips
    (tmp_path / "folder" / "images").mkdir(parents=True)
    (tmp_path / "folder" / "masks").mkdir()
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(tmp_path / "folder" / "images" / "a.png")
    lab = np.zeros((40, 40), np.uint8)
    lab[5:15, 5:15], lab[20:30, 20:35] = 1, 2
    Image.fromarray(lab).save(tmp_path / "folder" / "masks" / "a.png")
    folder = open_clip_dataset(tmp_path / "folder")
    assert isinstance(folder, ImageClipDataset) and folder[0].masks.shape == (1, 2, 40, 40)
    with pytest.raises(FileNotFoundError, match="not found"):
        open_clip_dataset(tmp_path / "missing")


def test_bad_files_are_named_and_counted(tmp_path):
    vol = make_medical_volume(0, **SMALL)
    write_medsam_npz(tmp_path / "npz" / "good.npz", vol.volume, vol.labels)
    (tmp_path / "npz" / "broken.npz").write_bytes(b"not a zip")
    np.savez(tmp_path / "npz" / "mismatch.npz", imgs=vol.volume, gts=vol.labels[:, :40])
    np.savez(tmp_path / "npz" / "empty.npz", imgs=vol.volume, gts=np.zeros_like(vol.labels))
    ds = open_clip_dataset(tmp_path / "npz")
    assert len(ds) == 1 and len(ds.bad_samples) == 3
    reasons = {b.path.rsplit("/", 1)[-1]: b.reason for b in ds.bad_samples}
    assert "unreadable" in reasons["broken.npz"]
    assert "does not match" in reasons["mismatch.npz"] and "(8, 40, 64)" in reasons["mismatch.npz"]
    assert "no object" in reasons["empty.npz"]
    # NIfTI: shapes that differ are refused, named
    write_nifti_pair(tmp_path / "nii", "good", vol.volume, vol.labels)
    write_nifti_pair(tmp_path / "nii", "bad", vol.volume[:, :, :32], vol.labels[:, :, :32])
    bad_label = tmp_path / "nii" / "labels" / "bad.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((48, 64, 8), np.uint8), np.eye(4)), str(bad_label))
    nii = open_clip_dataset(tmp_path / "nii")
    assert len(nii) == 1 and len(nii.bad_samples) == 1
    assert nii.bad_samples[0].path.endswith("bad.nii.gz") and "differs" in nii.bad_samples[0].reason
    # DAVIS: a clip missing an annotation is named; a dataset with nothing usable is an error that says why
    make_clip(0, num_frames=2, image_size=(48, 48)).write_davis(tmp_path / "davis", "ok")
    make_clip(1, num_frames=2, image_size=(48, 48)).write_davis(tmp_path / "davis", "bad")
    (tmp_path / "davis" / "Annotations" / "bad" / "00001.png").unlink()
    davis = open_clip_dataset(tmp_path / "davis")
    assert davis.names == ["ok"] and "bad" in davis.bad_samples[0].path
    assert "no annotation" in davis.bad_samples[0].reason
    (tmp_path / "only_bad").mkdir()
    (tmp_path / "only_bad" / "x.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="x.npz"):
        open_clip_dataset(tmp_path / "only_bad")


def test_clip_checks_its_inputs():
    labels = np.zeros((2, 8, 8), np.uint8)
    with pytest.raises(ValueError, match="frames"):
        Clip("c", np.zeros((2, 8, 9, 3), np.uint8), [1], labels=labels)
    with pytest.raises(ValueError, match="exactly one"):
        Clip("c", np.zeros((2, 8, 8, 3), np.uint8), [1])
    with pytest.raises(ValueError, match="objects"):
        Clip("c", np.zeros((2, 8, 8, 3), np.uint8), [1], masks=np.zeros((2, 2, 8, 8), bool))
    with pytest.raises(IndexError, match="frame index"):
        Clip("c", np.zeros((2, 8, 8, 3), np.uint8), [1], labels=labels).frame(2)


# --- training windows --------------------------------------------------------------------------------------------

def test_windows_have_the_length_and_keep_object_identity():
    clip = striped_clip("long", 9)
    tc = TrainingClips(ListClips([clip]), image_size=32, num_frames=4, max_objects=2, seed=0, random_reverse=True)
    seen_reverse = set()
    for draw in range(6):
        item = tc[(0, draw)]
        idx = item["frame_indices"]
        assert item["frames"].shape == (4, 3, 32, 32) and item["masks"].shape == (4, 2, 32, 32)
        assert len(idx) == 4 and np.all(np.abs(np.diff(idx)) == 1)
        assert np.all(np.diff(idx) == (-1 if item["reversed"] else 1))
        seen_reverse.add(item["reversed"])
        expected = prepare_clip_masks(clip.object_masks(idx, [clip.obj_ids.index(v) for v in item["obj_ids"]]), 32)
        assert torch.equal(item["masks"], expected)
        for j, v in enumerate(item["obj_ids"]):  # object j is the same band on every frame
            cols = item["masks"][:, j].any(1)
            assert torch.equal(cols, cols[:1].expand_as(cols))
        assert torch.equal(item["frames"], prepare_clip_frames(np.stack([clip.frame(t) for t in idx]), 32))
        assert item["skipped"] == [] and item["padded_frames"] == 0
    assert seen_reverse == {False, True}


def test_windows_are_deterministic_and_follow_the_first_frame():
    ds = open_clip_dataset("synthetic-medical-volume:2:48x64:8")
    tc = TrainingClips(ds, image_size=32, num_frames=3, max_objects=1, seed=7)
    a, b = tc[(1, 5)], TrainingClips(ds, image_size=32, num_frames=3, max_objects=1, seed=7)[(1, 5)]
    assert torch.equal(a["frames"], b["frames"]) and torch.equal(a["masks"], b["masks"])
    assert a["frame_indices"] == b["frame_indices"] and a["obj_ids"] == b["obj_ids"]
    starts = {tc[(1, d)]["frame_indices"][0] for d in range(8)}
    assert len(starts) > 1
    for d in range(4):
        item = tc[(0, d)]
        assert item["masks"].shape[1] == 1 and item["masks"][0].flatten(1).any(1).all()
    # an object seen only late: windows start where it is visible
    late = striped_clip("late", 6, {0: range(3, 6)})
    tc = TrainingClips(ListClips([late]), image_size=32, num_frames=2, max_objects=3)
    assert all(tc[(0, d)]["frame_indices"][0] >= 3 for d in range(5))


def test_short_and_objectless_clips_are_skipped_or_padded_and_counted():
    short, long = striped_clip("short", 2), striped_clip("long", 6)
    tc = TrainingClips(ListClips([short, long]), image_size=32, num_frames=4, max_objects=3, short_clips="skip")
    item = tc[(0, 0)]
    assert item["name"] == "long" and len(item["frame_indices"]) == 4
    assert item["skipped"] and all(s == ("short", "short") for s in item["skipped"])
    assert tc.counts["skipped_short"] == len(item["skipped"])
    assert tc[(0, 0)]["frame_indices"] == item["frame_indices"]  # the redraw is deterministic too
    tc = TrainingClips(ListClips([short, long]), image_size=32, num_frames=4, max_objects=3, short_clips="pad")
    item = tc[(0, 0)]
    assert item["name"] == "short" and item["frame_indices"] == [0, 1, 1, 1] and item["padded_frames"] == 2
    assert torch.equal(item["frames"][3], item["frames"][1]) and tc.counts["padded"] == 1
    batch = collate_clips([item, tc[(1, 0)]])
    assert batch["padded"] == ["short"] and batch["skipped"] == []
    # no object on the first frame of any window
    hidden = striped_clip("hidden", 4, {0: [3]})
    tc = TrainingClips(ListClips([hidden, long]), image_size=32, num_frames=4, max_objects=3)
    item = tc[(0, 0)]
    assert item["name"] == "long" and ("hidden", "no_object") in item["skipped"]
    assert tc.counts["skipped_no_object"] >= 1
    with pytest.raises(ValueError, match="no usable clip"):
        TrainingClips(ListClips([short]), image_size=32, num_frames=4, max_objects=1, max_redraws=3)[(0, 0)]


def test_collate_shapes():
    ds = open_clip_dataset("synthetic-video:3:48:5")
    tc = TrainingClips(ds, image_size=32, num_frames=3, max_objects=2, seed=1)
    items = [tc[(i, i)] for i in range(3)]
    batch = collate_clips(items)
    n = sum(it["masks"].shape[1] for it in items)
    assert batch["frames"].shape == (3, 3, 3, 32, 32) and batch["frames"].dtype == torch.float32
    assert batch["masks"].shape == (3, n, 32, 32) and batch["masks"].dtype == torch.bool
    assert batch["obj_to_clip"].dtype == torch.long and batch["obj_to_clip"].tolist() == [
        b for b, it in enumerate(items) for _ in range(it["masks"].shape[1])]
    assert batch["names"] == [it["name"] for it in items] and len(batch["obj_ids"]) == n
    assert torch.equal(batch["frames"][:, 1], items[1]["frames"])
    with pytest.raises(ValueError, match="one T x 3 x S x S"):
        collate_clips([items[0], TrainingClips(ds, 32, 2, 1)[(0, 0)]])


def test_sam2_preprocessing_matches_the_predictor():
    frame = make_clip(2, num_frames=1, image_size=(48, 80)).frames
    ours = prepare_clip_frames(frame, 64)[0]
    assert torch.equal(ours, SAM2Transforms(64, mask_threshold=0.0)(frame[0]))
    masks = prepare_clip_masks(np.ones((1, 1, 48, 80), bool), 64)
    assert masks.shape == (1, 1, 64, 64) and bool(masks.all())


def test_training_clips_check_inputs():
    ds = ListClips([striped_clip("a", 3)])
    with pytest.raises(ValueError, match="short_clips"):
        TrainingClips(ds, 32, 2, 1, short_clips="drop")
    with pytest.raises(ValueError, match="num_frames"):
        TrainingClips(ds, 32, 0, 1)
    with pytest.raises(ValueError, match="max_objects"):
        TrainingClips(ds, 32, 2, 0)
    with pytest.raises(IndexError, match="index"):
        TrainingClips(ds, 32, 2, 1)[(5, 0)]
    with pytest.raises(ValueError, match="uint8"):
        prepare_clip_frames(np.zeros((2, 8, 8, 3), np.float32), 16)


def test_loader_with_the_resumable_sampler(tmp_path):
    import pickle

    from samforge.data.sampler import ResumableSampler

    write_medical_volumes(tmp_path, 2, image_size=(48, 64), depth=6, fmt="npz")
    ds = pickle.loads(pickle.dumps(open_clip_dataset(tmp_path)))  # DataLoader workers get a copy
    tc = TrainingClips(ds, image_size=32, num_frames=3, max_objects=2, seed=3)
    loader = torch.utils.data.DataLoader(tc, batch_size=2, sampler=ResumableSampler(len(tc), seed=3),
                                         collate_fn=collate_clips)
    batch = next(iter(loader))
    assert batch["frames"].shape == (3, 2, 3, 32, 32) and batch["masks"].shape[0] == 3
    resumed = next(iter(torch.utils.data.DataLoader(tc, batch_size=2, collate_fn=collate_clips,
                                                    sampler=ResumableSampler(len(tc), seed=3))))
    assert torch.equal(batch["masks"], resumed["masks"]) and batch["names"] == resumed["names"]
