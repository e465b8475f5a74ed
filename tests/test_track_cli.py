"""``samforge track`` on clips and volumes (a shrunk random SAM 2.1 tiny), and volumes as clips of slices."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from sam2_oracle import SMALL_OVERRIDES
from test_sam2_video import H, W, write_clip

from samforge.cli import track as track_cli
from samforge.cli.main import main
from samforge.data.volume_clip import read_volume_clip, write_volume_mask
from samforge.models.sam2 import build_sam2

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def small_model(monkeypatch):
    """The CLI's model loader gives a shrunk SAM 2.1 tiny (256 input) with random weights."""

    def load(args):
        torch.manual_seed(args.seed)
        return build_sam2("sam2.1_hiera_t", device="cpu", hydra_overrides_extra=list(SMALL_OVERRIDES))

    monkeypatch.setattr(track_cli, "load_model", load)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("clip"), num_frames=5)


def write_nifti(path, shape=(40, 48, 7)) -> np.ndarray:
    rng = np.random.default_rng(0)
    vol = rng.normal(100, 10, shape).astype(np.float32)
    vol[10:25, 15:30, 1:6] += 300
    nib.save(nib.Nifti1Image(vol, np.diag([0.7, 0.7, 3.0, 1.0])), str(path))
    return vol


def test_track_a_folder_with_a_point(clip_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["track", "--video", clip_dir, "--frame", "2", "--point", "30,40", "--model", "sam2.1_hiera_t",
                 "--out", str(out)]) == 0
    assert "tracked 1 object(s) over 5 of 5 frames" in capsys.readouterr().out
    masks = sorted((out / "masks").iterdir())
    assert [m.name for m in masks] == [f"{t:05d}.png" for t in range(5)]
    assert np.asarray(Image.open(masks[0])).shape == (H, W)
    summary = json.loads((out / "objects.json").read_text())
    assert summary["obj_ids"] == [1] and summary["frames_tracked"] == [0, 1, 2, 3, 4]
    for t, rec in summary["objects"]["1"]["frames"].items():  # boxes and areas agree with the PNGs
        lab = np.asarray(Image.open(out / "masks" / f"{int(t):05d}.png"))
        ys, xs = np.nonzero(lab == 1)
        assert rec["area"] == xs.size and rec["box"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    gif = Image.open(out / "overlay.gif")
    assert gif.n_frames == 5


def test_track_two_objects_from_a_prompts_file(clip_dir, tmp_path):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([
        {"obj_id": 3, "frame": 1, "points": [[36, 42]], "labels": [1]},
        {"obj_id": 8, "frame": 1, "box": [85, 40, 112, 82]},
    ]))
    out = tmp_path / "out"
    assert main(["track", "--video", clip_dir, "--prompts", str(prompts), "--direction", "forward",
                 "--model", "sam2.1_hiera_t", "--out", str(out)]) == 0
    summary = json.loads((out / "objects.json").read_text())
    assert summary["obj_ids"] == [3, 8] and summary["frames_tracked"] == [1, 2, 3, 4]
    assert set(summary["objects"]) == {"3", "8"}


def test_track_a_nifti_volume_writes_its_mask_with_the_affine(tmp_path):
    src = tmp_path / "scan.nii.gz"
    vol = write_nifti(src)
    out = tmp_path / "out"
    assert main(["track", "--volume", str(src), "--frame", "3", "--box", "15,10,30,25",
                 "--model", "sam2.1_hiera_t", "--out", str(out)]) == 0
    mask = nib.load(str(out / "mask.nii.gz"))
    assert mask.shape == vol.shape and np.allclose(mask.affine, nib.load(str(src)).affine)
    data = np.asarray(mask.dataobj)
    for t in range(vol.shape[2]):  # slice t of the volume is frame t's label PNG
        assert np.array_equal(data[:, :, t], np.asarray(Image.open(out / "masks" / f"{t:05d}.png")))


def test_volume_clip_round_trip_along_every_axis(tmp_path):
    src = tmp_path / "scan.nii"
    vol = write_nifti(src)
    for axis in (0, 1, 2):
        clip = read_volume_clip(src, axis=axis)
        assert clip.frames.shape == (vol.shape[axis], *np.delete(vol.shape, axis), 3)
        assert clip.frames.dtype == np.uint8
        labels = (clip.frames[..., 0] > 128).astype(np.uint8)
        write_volume_mask(labels, clip, tmp_path / f"mask{axis}.nii.gz")
        back = np.asarray(nib.load(str(tmp_path / f"mask{axis}.nii.gz")).dataobj)
        assert np.array_equal(back > 0, vol > 250)  # the bright block, in the volume's own orientation


def test_npz_volume(tmp_path):
    src = tmp_path / "case.npz"
    imgs = np.zeros((6, 32, 40), dtype=np.uint8)
    imgs[:, 8:20, 10:30] = 200
    np.savez(src, imgs=imgs, gts=(imgs > 0).astype(np.uint8))
    clip = read_volume_clip(src, axis=0)
    assert clip.frames.shape == (6, 32, 40, 3) and clip.affine is None
    write_volume_mask((clip.frames[..., 0] > 0).astype(np.uint8), clip, tmp_path / "mask.npz")
    assert np.array_equal(np.load(tmp_path / "mask.npz")["gts"], imgs > 0)
    with pytest.raises(ValueError, match="needs a NIfTI input"):
        write_volume_mask(np.zeros((6, 32, 40), np.uint8), clip, tmp_path / "mask.nii.gz")


def test_bad_input(tmp_path, clip_dir, capsys):
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((5, 6, 2, 3), np.float32), np.eye(4)), str(flat))
    with pytest.raises(ValueError, match="3-D"):
        read_volume_clip(flat)
    assert main(["track", "--volume", str(flat), "--point", "1,1", "--model", "sam2.1_hiera_t",
                 "--out", str(tmp_path / "o")]) == 2
    assert "3-D volume" in capsys.readouterr().err
    bad = tmp_path / "bad.npz"
    np.savez(bad, other=np.zeros(3))
    with pytest.raises(ValueError, match="'imgs'"):
        read_volume_clip(bad)
    with pytest.raises(ValueError, match="axis"):
        read_volume_clip(bad, axis=3)
    assert main(["track", "--video", clip_dir, "--frame", "9", "--point", "3,3", "--model", "sam2.1_hiera_t",
                 "--out", str(tmp_path / "o2")]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(["track", "--video", clip_dir, "--model", "sam2.1_hiera_t", "--out", str(tmp_path / "o3")]) == 2
    assert "give a prompt" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["track", "--video", str(empty), "--point", "3,3", "--model", "sam2.1_hiera_t",
                 "--out", str(tmp_path / "o4")]) == 2
    assert "no frames" in capsys.readouterr().err
