"""The ``samforge`` command line, driven in-process: what each subcommand writes, and how it fails."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from samforge import SamPredictor, sam_model_registry
from samforge.cli.main import main
from samforge.data import make_scene
from samforge.utils import save_png

H, W = 72, 96


@pytest.fixture(scope="module")
def scene_png(tmp_path_factory) -> Path:
    scene = make_scene(seed=3, image_size=(H, W))
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    save_png(scene.image, path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A vit_small state dict saved as the official files are (a raw state dict)."""
    torch.manual_seed(123)
    path = tmp_path_factory.mktemp("ckpt") / "vit_small.pth"
    torch.save(sam_model_registry["vit_small"]().state_dict(), path)
    return path


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def check_predict_folder(out: Path, image_png: Path, num_masks: int) -> dict:
    """The files ``samforge predict`` writes, and their consistency; returns scores.json."""
    image = read_png(image_png)
    h, w = image.shape[:2]

    mask = read_png(out / "mask.png")
    assert mask.dtype == np.uint8 and mask.shape == (h, w)
    assert set(np.unique(mask)) <= {0, 255}

    mask_files = sorted(p.name for p in (out / "masks").iterdir())
    assert mask_files == [f"mask_{i}.png" for i in range(num_masks)]
    masks = [read_png(out / "masks" / name) for name in mask_files]
    for m in masks:
        assert m.dtype == np.uint8 and m.shape == (h, w) and set(np.unique(m)) <= {0, 255}

    overlay = read_png(out / "overlay.png")
    assert overlay.dtype == np.uint8 and overlay.shape == (h, w, 3)
    assert not np.array_equal(overlay, image)  # the prompt markers at least are drawn

    result = json.loads((out / "scores.json").read_text())
    assert {"scores", "areas", "best", "points", "point_labels", "box"} <= set(result)
    assert len(result["scores"]) == num_masks and len(result["areas"]) == num_masks
    assert all(isinstance(s, float) for s in result["scores"])
    assert result["best"] == int(np.argmax(result["scores"]))
    np.testing.assert_array_equal(mask, masks[result["best"]])
    assert result["areas"] == [int((m > 0).sum()) for m in masks]
    return result


# --------------------------------------------------------------------------------------------------- predict


def test_predict_one_point(tmp_path, capsys, scene_png):
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        capsys, "predict", "--model-type", "vit_small", "--image", scene_png, "--point", "40,30", "--out", out
    )
    assert code == 0, err
    assert "RANDOM weights" in stdout
    assert str(out.resolve()) in stdout
    result = check_predict_folder(out, scene_png, num_masks=3)
    assert result["points"] == [[40.0, 30.0]] and result["point_labels"] == [1] and result["box"] is None


def test_predict_several_points_with_a_negative_one(tmp_path, capsys, scene_png):
    out = tmp_path / "out"
    code, _, err = run_cli(
        capsys, "predict", "--model", "vit_small", "--image", scene_png, "--out", out,
        "--point", "40,30", "--point", "10.5,60,0", "--point", f"{W},{H},1",
    )
    assert code == 0, err
    result = check_predict_folder(out, scene_png, num_masks=3)
    assert result["points"] == [[40.0, 30.0], [10.5, 60.0], [float(W), float(H)]]
    assert result["point_labels"] == [1, 0, 1]


def test_predict_box(tmp_path, capsys, scene_png):
    out = tmp_path / "out"
    code, _, err = run_cli(
        capsys, "predict", "--model-type", "vit_small", "--image", scene_png, "--box", "5,6,50,40", "--out", out
    )
    assert code == 0, err
    result = check_predict_folder(out, scene_png, num_masks=3)
    assert result["box"] == [5.0, 6.0, 50.0, 40.0] and result["points"] is None and result["point_labels"] is None


def test_predict_single_mask(tmp_path, capsys, scene_png):
    out = tmp_path / "out"
    code, _, err = run_cli(
        capsys, "predict", "--model-type", "vit_small", "--image", scene_png, "--out", out,
        "--point", "40,30", "--box", "5,6,50,40", "--single-mask",
    )
    assert code == 0, err
    result = check_predict_folder(out, scene_png, num_masks=1)
    assert result["best"] == 0


def test_predict_with_checkpoint_matches_python(tmp_path, capsys, scene_png, checkpoint):
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        capsys, "predict", "--model-type", "vit_small", "--checkpoint", checkpoint, "--image", scene_png,
        "--point", "40,30", "--point", "70,50,0", "--out", out,
    )
    assert code == 0, err
    assert "RANDOM" not in stdout
    result = check_predict_folder(out, scene_png, num_masks=3)

    sam = sam_model_registry["vit_small"]()
    sam.load_state_dict(torch.load(checkpoint, weights_only=True))
    predictor = SamPredictor(sam)
    predictor.set_image(read_png(scene_png))
    masks, scores, _ = predictor.predict(np.array([[40.0, 30.0], [70.0, 50.0]]), np.array([1, 0]))
    np.testing.assert_allclose(result["scores"], scores, rtol=1e-5, atol=1e-5)
    assert result["areas"] == [int(m.sum()) for m in masks]


@pytest.mark.parametrize("precision", ["fp32-fast", "bf16"])
def test_predict_precision_flag_uses_that_fast_path(tmp_path, capsys, scene_png, checkpoint, precision):
    """--precision reaches the predictor: the scores are those of SamPredictor(precision=...) and agree with the
    exact path to that path's tolerance; the choice is recorded in scores.json."""
    out = tmp_path / "out"
    code, _, err = run_cli(
        capsys, "predict", "--model-type", "vit_small", "--checkpoint", checkpoint, "--image", scene_png,
        "--box", "5,6,50,40", "--precision", precision, "--out", out,
    )
    assert code == 0, err
    result = check_predict_folder(out, scene_png, num_masks=3)
    assert result["precision"] == precision
    sam = sam_model_registry["vit_small"]()
    sam.load_state_dict(torch.load(checkpoint, weights_only=True))
    scores = {}
    for p in ("fp32", precision):
        predictor = SamPredictor(sam, precision=p)
        predictor.set_image(read_png(scene_png))
        scores[p] = predictor.predict(box=np.array([5.0, 6.0, 50.0, 40.0]))[1]
    np.testing.assert_allclose(result["scores"], scores[precision], rtol=1e-5, atol=1e-5)
    tol = 1e-4 if precision == "fp32-fast" else 5e-2  # bf16 encoder: ~3 significant digits
    np.testing.assert_allclose(result["scores"], scores["fp32"], atol=tol)


def test_predict_bad_precision_exits_2(tmp_path, capsys, scene_png):
    with pytest.raises(SystemExit) as e:  # argparse's choices
        run_cli(capsys, *predict_argv(scene_png, tmp_path / "o", "--point", "4,4", "--precision", "fp16"))
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--precision" in err and "'fp16'" in err and "fp32-fast" in err


# ---------------------------------------------------------------------------------------------- predict errors


def assert_one_line_error(capsys, argv, match: str) -> str:
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("samforge predict: error: ")
    assert match in lines[0], lines[0]
    return lines[0]


def predict_argv(image, out, *extra) -> list:
    return ["predict", "--model-type", "vit_small", "--image", image, "--out", out, *extra]


def test_predict_without_a_prompt(tmp_path, capsys, scene_png):
    assert_one_line_error(capsys, predict_argv(scene_png, tmp_path / "o"), "give at least one prompt")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--point", "1,2,3,4"], "--point expects 2 or 3 comma-separated numbers, got '1,2,3,4'"),
        (["--point", "a,b"], "--point expects 2 or 3 comma-separated numbers, got 'a,b'"),
        (["--box", "1,2,3"], "--box expects 4 comma-separated numbers, got '1,2,3'"),
    ],
    ids=["point-4-values", "point-not-numbers", "box-3-values"],
)
def test_predict_malformed_prompts(tmp_path, capsys, scene_png, extra, match):
    assert_one_line_error(capsys, predict_argv(scene_png, tmp_path / "o", *extra), match)


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--point", f"{W + 1},10"], f"point_coords must lie inside the image (0 <= x <= {W}, 0 <= y <= {H})"),
        (["--point=-3,10,0"], f"point_coords must lie inside the image (0 <= x <= {W}, 0 <= y <= {H})"),
        (["--box", f"0,0,10,{H + 5}"], f"box must lie inside the image (0 <= x <= {W}, 0 <= y <= {H})"),
        (["--box", "20,0,10,10"], "x0 <= x1 and y0 <= y1"),
        (["--point", "5,5,2"], "point_labels must be 1 (foreground), 0 (background) or -1 (ignore), got [2]"),
        (["--point", "5,5,0.5"], "point_labels must be 1 (foreground), 0 (background) or -1 (ignore), got [0.5]"),
    ],
    ids=["point-x>W", "point-x<0", "box-y>H", "box-swapped", "label-2", "label-0.5"],
)
def test_predict_prompts_outside_the_image(tmp_path, capsys, scene_png, extra, match):
    code, stdout, err = run_cli(capsys, *predict_argv(scene_png, tmp_path / "o", *extra))
    assert code == 2
    assert err.strip().splitlines() == [err.strip()] and err.startswith("samforge predict: error: ")
    assert match in err
    assert "RANDOM" not in stdout  # refused before the model was built and the image embedded
    assert not (tmp_path / "o").exists()


def test_predict_missing_image(tmp_path, capsys):
    missing = tmp_path / "nope.png"
    argv = predict_argv(missing, tmp_path / "o", "--point", "1,1")
    line = assert_one_line_error(capsys, argv, "image file not found")
    assert str(missing) in line


def test_predict_unreadable_image(tmp_path, capsys):
    bad = tmp_path / "x.png"
    bad.write_text("this is not a PNG\n")
    line = assert_one_line_error(capsys, predict_argv(bad, tmp_path / "o", "--point", "1,1"), "could not read image")
    assert str(bad) in line


def test_predict_missing_checkpoint(tmp_path, capsys, scene_png):
    missing = tmp_path / "nope.pth"
    line = assert_one_line_error(
        capsys, predict_argv(scene_png, tmp_path / "o", "--point", "1,1", "--checkpoint", missing),
        "checkpoint file not found",
    )
    assert str(missing) in line


def test_predict_truncated_checkpoint(tmp_path, capsys, scene_png, checkpoint):
    data = checkpoint.read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    line = assert_one_line_error(
        capsys, predict_argv(scene_png, tmp_path / "o", "--point", "1,1", "--checkpoint", truncated),
        "could not read checkpoint",
    )
    assert str(truncated) in line and "truncated or corrupted" in line


# -------------------------------------------------------------------------------------------- synth, quickstart


def test_synth(tmp_path, capsys):
    out = tmp_path / "synth"
    code, stdout, err = run_cli(capsys, "synth", "--out", out, "--num-images", "3", "--size", "64,96")
    assert code == 0, err
    names = [f"{i:05d}.png" for i in range(3)]
    assert sorted(p.name for p in (out / "images").iterdir()) == names
    assert sorted(p.name for p in (out / "masks").iterdir()) == names
    for name in names:
        with Image.open(out / "images" / name) as im:
            assert im.mode == "RGB" and im.size == (96, 64)
        labels = read_png(out / "masks" / name)
        assert labels.dtype == np.uint16 and labels.shape == (64, 96)
        assert labels.max() >= 1
    images = [read_png(out / "images" / n) for n in names]
    assert not np.array_equal(images[0], images[1])  # scene i uses seed + i


def test_synth_bad_size(tmp_path, capsys):
    code, _, err = run_cli(capsys, "synth", "--out", tmp_path / "s", "--size", "64,x")
    assert code == 2 and err.strip() == "samforge synth: error: --size expects H or H,W, got '64,x'"


def test_quickstart(tmp_path, capsys):
    """The quickstart job end to end (a tiny model and a few steps instead of the preset's minutes)."""
    from test_train_run import TINY

    out = tmp_path / "qs"
    tiny = [o for o in TINY if not o.startswith(("data.train", "data.val", "val_images"))]
    code, stdout, err = run_cli(capsys, "quickstart", "--out", out, "--val-images", "2", "steps=3", "val_every=3",
                                "data.train=synthetic:6:64", *tiny)
    assert code == 0, err
    for name in ("data/val/images/00000.png", "checkpoints/best.pt", "checkpoints/last.pt", "metrics.jsonl",
                 "curves.png", "eval/metrics.json", "eval/per_image.csv", "eval/best_worst.png",
                 "segment_box/overlay.png", "segment_point/overlay.png", "segment_point/scores.json"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert metrics["num_images"] == 2 and set(metrics["box"]) == {"miou", "dice"}
    assert "protocol" in stdout and "4/4" in stdout



# ---------------------------------------------------------------------------------------------- entry point


def test_python_m_samforge_help():
    proc = subprocess.run(
        [sys.executable, "-m", "samforge", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "predict" in proc.stdout and "synth" in proc.stdout and "quickstart" in proc.stdout
