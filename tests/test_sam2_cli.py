"""``samforge predict`` with SAM 2 models: the same command, files and errors as with SAM."""

from __future__ import annotations

import pytest
import torch
from test_cli import check_predict_folder, run_cli

from samforge import build_sam2
from samforge.data import make_scene
from samforge.utils import save_png

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def scene_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    save_png(make_scene(seed=4, image_size=(72, 96)).image, path)
    return path


def test_predict_with_an_official_sam2_checkpoint(tmp_path, capsys, scene_png):
    """Points and a box on a SAM 2.1 tiny checkpoint in the official layout (what predict writes is the
    predictor's output: SAM2ImagePredictor itself is checked against the official one elsewhere)."""
    torch.manual_seed(3)
    checkpoint = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": build_sam2("sam2.1_hiera_t", device="cpu").state_dict()}, checkpoint)
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        capsys, "predict", "--model", "sam2.1_hiera_t", "--checkpoint", checkpoint, "--image", scene_png,
        "--point", "40,30", "--point", "70,50,0", "--box", "5,6,90,60", "--out", out,
    )
    assert code == 0, err
    assert "RANDOM" not in stdout and str(out.resolve()) in stdout
    result = check_predict_folder(out, scene_png, num_masks=3)
    assert result["model_type"] == "sam2.1_hiera_t" and result["box"] == [5.0, 6.0, 90.0, 60.0]
    assert all(0.0 <= s <= 1.0 for s in result["scores"])  # SAM 2's IoU head ends in a sigmoid


def test_predict_with_a_checkpoint_of_another_model(tmp_path, capsys, scene_png):
    torch.manual_seed(3)
    checkpoint = tmp_path / "tiny.pt"
    torch.save({"model": build_sam2("sam2.1_hiera_t", device="cpu").state_dict()}, checkpoint)
    code, _, err = run_cli(
        capsys, "predict", "--model", "sam2.1_hiera_s", "--checkpoint", checkpoint, "--image", scene_png,
        "--point", "40,30", "--out", tmp_path / "o",
    )
    assert code == 2
    assert err.startswith("samforge predict: error: checkpoint") and "missing keys" in err
    assert "looks like a 'sam2.1_hiera_t' checkpoint" in err
    assert not (tmp_path / "o").exists()
