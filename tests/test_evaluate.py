"""Evaluation engine: metrics by hand, protocols and the click loop on controlled fake predictors,
the report files, and ``samforge evaluate`` end to end."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from samforge.cli import evaluate as evaluate_cli
from samforge.cli import main as cli_main
from samforge.data.prompts import interior_point, mask_to_box
from samforge.data.sample import Sample
from samforge.data.synthetic_dataset import SyntheticDataset
from samforge.evaluate import (
    click_loop,
    evaluate_dataset,
    format_table,
    iou_dice,
    iou_dice_torch,
    mask_dice,
    mask_iou,
    noc,
    predict_prompts,
    protocol_prompts,
    run_protocols,
)
from samforge.models.build import build_sam
from samforge.evaluate.protocols import Prompt, predict_prompt
from samforge.models.configs import SAM_CONFIGS
from samforge.predict.predictor import SamPredictor

pytestmark = pytest.mark.usefixtures("one_thread")  # many tiny decodes: OpenMP spinning, not logic
STABLE_KEYS = {"box", "center_point", "random_point", "points_3", "interactive", "num_objects", "num_images"}
CLICK_KEYS = {"1", "2", "3", "5", "9"}


# ---------------------------------------------------------------- metrics


def test_metrics_by_hand():
    pred = np.array([[1, 1, 0]], dtype=bool)
    gt = np.array([[0, 1, 1]], dtype=bool)
    assert mask_iou(pred, gt) == pytest.approx(1 / 3)
    assert mask_dice(pred, gt) == pytest.approx(1 / 2)
    empty = np.zeros((1, 3), dtype=bool)
    assert iou_dice(empty, empty) == (1.0, 1.0)  # both empty: perfect agreement
    assert iou_dice(empty, gt) == (0.0, 0.0)
    assert iou_dice(gt, empty) == (0.0, 0.0)
    assert iou_dice(gt, gt) == (1.0, 1.0)


def test_metrics_torch_match_numpy():
    pred = torch.tensor([[[1, 1, 0]], [[0, 0, 0]], [[1, 0, 0]], [[0, 1, 1]]], dtype=torch.bool)
    gt = torch.tensor([[[0, 1, 1]], [[0, 0, 0]], [[0, 0, 0]], [[0, 1, 1]]], dtype=torch.bool)
    iou, dice = iou_dice_torch(pred, gt)
    assert iou.tolist() == pytest.approx([1 / 3, 1.0, 0.0, 1.0])
    assert dice.tolist() == pytest.approx([1 / 2, 1.0, 0.0, 1.0])
    for b in range(4):
        assert (iou[b].item(), dice[b].item()) == pytest.approx(iou_dice(pred[b].numpy(), gt[b].numpy()))


def test_metrics_reject_bad_input():
    m = np.zeros((2, 2), dtype=bool)
    with pytest.raises(ValueError, match="bool"):
        mask_iou(m.astype(np.uint8), m)
    with pytest.raises(ValueError, match="same shape"):
        mask_iou(m, np.zeros((2, 3), dtype=bool))
    with pytest.raises(ValueError, match="BxHxW"):
        iou_dice_torch(torch.zeros(2, 2, dtype=torch.bool), torch.zeros(2, 2, dtype=torch.bool))


# ---------------------------------------------------------------- fake predictors


def square_gt(h: int = 20, w: int = 20, y0: int = 5, x0: int = 5, side: int = 10) -> np.ndarray:
    gt = np.zeros((h, w), dtype=bool)
    gt[y0 : y0 + side, x0 : x0 + side] = True
    return gt


class GrowingPredictor:
    """After n clicks, predicts the first ``fractions[n - 1]`` of ``gt``'s pixels (raster order), so IoU
    after n clicks is exactly that fraction. With multimask it hides the right mask among wrong ones
    with a lower predicted IoU. Records every call."""

    def __init__(self, gt: np.ndarray, fractions: list[float]) -> None:
        self.gt, self.fractions, self.calls = gt, fractions, []

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        pass

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None,
                multimask_output=True, return_logits=False):
        n = 1 if point_coords is None else len(point_coords)
        self.calls.append({"n": n, "multimask": multimask_output, "mask_input": mask_input,
                           "labels": np.asarray(point_labels).tolist()})
        ys, xs = np.nonzero(self.gt)
        keep = round(self.fractions[min(n, len(self.fractions)) - 1] * len(ys))
        mask = np.zeros_like(self.gt)
        mask[ys[:keep], xs[:keep]] = True
        logits = np.full((1, 8, 8), float(n))
        if not multimask_output:
            return mask[None], np.array([0.5]), logits
        wrong = np.ones_like(self.gt)
        return np.stack([wrong, mask, ~wrong]), np.array([0.2, 0.9, 0.4]), np.concatenate([-logits, logits, -logits])


class OraclePredictor:
    """Returns the ground-truth object under the first click (or whose tight box is the box prompt)."""

    def __init__(self, samples: list[Sample]) -> None:
        self.samples, self.current = samples, None

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        self.current = next(s for s in self.samples if s.image is image)

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None,
                multimask_output=True, return_logits=False):
        masks = self.current.masks
        if point_coords is not None:
            x, y = np.asarray(point_coords[0]).astype(int)
            gt = next(m for m in masks if m[y, x])
        else:
            gt = next(m for m in masks if np.array_equal(mask_to_box(m), box))
        c = 3 if multimask_output else 1
        out = np.stack([gt] + [np.zeros_like(gt)] * (c - 1))
        return out, np.array([1.0] + [0.0] * (c - 1)), np.zeros((c, 8, 8))


# ---------------------------------------------------------------- protocols


def test_protocol_prompts_follow_sam_conventions():
    gt = square_gt()
    prompts = protocol_prompts(gt, np.random.default_rng(0))
    np.testing.assert_array_equal(prompts["center_point"].points, interior_point(gt)[None])
    np.testing.assert_array_equal(prompts["box"].box, [5, 5, 14, 14])
    assert prompts["box"].points is None
    p3 = prompts["points_3"]
    assert p3.points.shape == (3, 2) and p3.labels.tolist() == [1, 1, 1]
    np.testing.assert_array_equal(p3.points[0], interior_point(gt))
    for name in ("random_point", "points_3"):
        xs, ys = prompts[name].points.astype(int).T
        assert gt[ys, xs].all(), f"{name} points must lie inside the object"
    # one click is ambiguous (three masks); a box or several clicks are not (one mask)
    assert [prompts[n].multimask for n in ("center_point", "random_point", "box", "points_3")] == [True, True, False, False]
    again = protocol_prompts(gt, np.random.default_rng(0))
    np.testing.assert_array_equal(again["random_point"].points, prompts["random_point"].points)


def test_protocols_pick_best_scored_mask():
    gt = square_gt()
    fake = GrowingPredictor(gt, [0.5, 0.6, 0.7])
    preds = run_protocols(fake, gt, np.random.default_rng(0))
    assert [c["multimask"] for c in fake.calls] == [True, True, False, False]
    assert mask_iou(preds["center_point"].mask, gt) == pytest.approx(0.5)  # the 0.9-scored one, not "wrong"
    assert mask_iou(preds["points_3"].mask, gt) == pytest.approx(0.7)


def test_oracle_gives_perfect_protocols_and_noc_one():
    gt = square_gt()
    sample = Sample(np.zeros((20, 20, 3), np.uint8), gt[None], "square")
    oracle = OraclePredictor([sample])
    oracle.set_image(sample.image)
    for pred in run_protocols(oracle, gt, np.random.default_rng(0)).values():
        assert iou_dice(pred.mask, gt) == (1.0, 1.0)
    trace = click_loop(oracle, gt)
    assert trace.ious[0] == 1.0 and trace.noc(0.85) == 1 and trace.noc(0.90) == 1


# ---------------------------------------------------------------- interactive


def test_noc_function():
    assert noc([0.5, 0.86, 0.95], 0.85) == 2
    assert noc([0.5, 0.86, 0.95], 0.90) == 3
    assert noc([0.5] * 20, 0.85) == 20
    assert noc([0.5] * 30 + [1.0], 0.85, max_clicks=20) == 20
    with pytest.raises(ValueError, match="threshold"):
        noc([0.5], 85)


def test_click_loop_known_noc_and_miou():
    gt = square_gt()  # 100 pixels: IoU after n clicks is fractions[n - 1] exactly
    fractions = [0.5, 0.6, 0.7, 0.8, 0.84, 0.86, 0.88, 0.89, 0.9, 0.95, 0.97]
    fake = GrowingPredictor(gt, fractions)
    trace = click_loop(fake, gt, stop_at=None)
    assert len(trace.ious) == 20
    assert trace.ious[:11] == pytest.approx(fractions)
    assert trace.noc(0.85) == 6 and trace.noc(0.90) == 9
    assert {k: trace.ious[k - 1] for k in (1, 2, 3, 5, 9)} == pytest.approx({1: 0.5, 2: 0.6, 3: 0.7, 5: 0.84, 9: 0.9})
    # first click: multimask, no mask_input; then single mask fed the previous chosen logits
    assert fake.calls[0]["multimask"] and fake.calls[0]["mask_input"] is None
    for k, call in enumerate(fake.calls[1:], start=2):
        assert call["n"] == k and not call["multimask"]
        np.testing.assert_array_equal(call["mask_input"], np.full((1, 8, 8), k - 1.0))
    assert fake.calls[1]["labels"] == [1, 1]  # pred inside gt: the error is a missed region -> positive click
    # early stop (default) gives the same NoC and the same IoU up to 9 clicks
    short = click_loop(GrowingPredictor(gt, fractions), gt)
    assert len(short.ious) == 9 and short.ious == trace.ious[:9]
    assert short.noc(0.85) == 6 and short.noc(0.90) == 9


def test_click_loop_never_reaching_gives_max_clicks():
    gt = square_gt()
    trace = click_loop(GrowingPredictor(gt, [0.5]), gt)
    assert len(trace.ious) == 20 and trace.noc(0.85) == 20 and trace.noc(0.90) == 20


def test_click_loop_rejects_empty_gt():
    with pytest.raises(ValueError, match="empty"):
        click_loop(GrowingPredictor(square_gt(), [0.5]), np.zeros((20, 20), dtype=bool))


# ---------------------------------------------------------------- dataset evaluation and report


@pytest.fixture(scope="module")
def synthetic_samples() -> list[Sample]:
    ds = SyntheticDataset(3, image_size=(64, 64), seed=5)
    return [ds[i] for i in range(len(ds))]


@pytest.fixture(scope="module")
def oracle_result(synthetic_samples):
    return evaluate_dataset(OraclePredictor(synthetic_samples), synthetic_samples, progress=False)


def check_metrics_shape(metrics: dict) -> None:
    assert set(metrics) == STABLE_KEYS
    for p in ("box", "center_point", "random_point", "points_3"):
        assert set(metrics[p]) == {"miou", "dice"}
        assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in metrics[p].values())
    assert set(metrics["interactive"]) == {"miou_at_clicks", "noc85", "noc90"}
    assert set(metrics["interactive"]["miou_at_clicks"]) == CLICK_KEYS
    assert 1.0 <= metrics["interactive"]["noc85"] <= metrics["interactive"]["noc90"] <= 20.0
    assert isinstance(metrics["num_objects"], int) and isinstance(metrics["num_images"], int)


def test_oracle_dataset_is_perfect(oracle_result, synthetic_samples):
    metrics = oracle_result.to_metrics_dict()
    check_metrics_shape(metrics)
    for p in ("box", "center_point", "random_point", "points_3"):
        assert metrics[p] == {"miou": 1.0, "dice": 1.0}
    assert metrics["interactive"] == {"miou_at_clicks": {k: 1.0 for k in ("1", "2", "3", "5", "9")},
                                      "noc85": 1.0, "noc90": 1.0}
    assert metrics["num_images"] == 3
    assert metrics["num_objects"] == sum(len(s.masks) for s in synthetic_samples)
    assert "NoC@85" in format_table(metrics)


def test_report_files(oracle_result, tmp_path):
    paths = oracle_result.write(tmp_path / "eval")
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["best_worst.png", "metrics.json", "per_image.csv"]
    assert json.loads(paths["metrics.json"].read_text()) == oracle_result.to_metrics_dict()
    with open(paths["per_image.csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == oracle_result.image_names and len(rows) == 3
    assert {"num_objects", "box_iou", "box_dice", "center_point_iou", "points_3_dice", "noc85", "noc90"} <= set(rows[0])
    assert float(rows[0]["box_iou"]) == 1.0
    with Image.open(paths["best_worst.png"]) as im:
        im.verify()
    with Image.open(paths["best_worst.png"]) as im:
        assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100


def test_evaluate_dataset_checks_inputs(synthetic_samples):
    oracle = OraclePredictor(synthetic_samples)
    with pytest.raises(ValueError, match="max_images"):
        evaluate_dataset(oracle, synthetic_samples, max_images=0, progress=False)
    with pytest.raises(TypeError, match="SAM2Base, or a predictor"):
        evaluate_dataset(object(), synthetic_samples, progress=False)
    with pytest.raises(TypeError, match="Sample"):
        evaluate_dataset(oracle, [np.zeros((4, 4, 3), np.uint8)], progress=False)
    result = evaluate_dataset(oracle, synthetic_samples, max_images=1, progress=False)
    assert result.to_metrics_dict()["num_images"] == 1


def test_batched_decoding_matches_predict(synthetic_samples):
    """SamPredictor prompts decoded together give what SamPredictor.predict gives one by one."""
    torch.manual_seed(0)
    predictor = SamPredictor(build_sam("vit_small"))
    sample = synthetic_samples[0]
    predictor.set_image(sample.image)
    prompts = [protocol_prompts(gt, np.random.default_rng(k)) for k, gt in enumerate(sample.masks)]
    for name in ("center_point", "box", "points_3"):
        batch = [p[name] for p in prompts]
        together = predict_prompts(predictor, batch, max_batch=2)
        for prompt, pred in zip(batch, together):
            alone = predict_prompt(predictor, prompt)
            assert pred.score == pytest.approx(alone.score, abs=1e-4)
            np.testing.assert_allclose(pred.low_res, alone.low_res, atol=1e-3)
            assert mask_iou(pred.mask, alone.mask) > 0.99
    mask_inputs = [predict_prompt(predictor, p["center_point"]).low_res for p in prompts]
    two = [Prompt(np.concatenate([p["center_point"].points, p["random_point"].points]), np.array([1, 0]))
           for p in prompts]
    together = predict_prompts(predictor, two, mask_inputs, multimask=False)
    for prompt, mask_input, pred in zip(two, mask_inputs, together):
        alone = predict_prompt(predictor, prompt, mask_input, multimask=False)
        np.testing.assert_allclose(pred.low_res, alone.low_res, atol=1e-3)


def test_real_model_keeps_training_mode(synthetic_samples):
    torch.manual_seed(0)
    model = build_sam("vit_small").train()
    one = synthetic_samples[:1]
    result = evaluate_dataset(model, one, progress=False)
    assert model.training
    check_metrics_shape(result.to_metrics_dict())
    assert evaluate_dataset(model, one, progress=False).to_metrics_dict() == result.to_metrics_dict()


# ---------------------------------------------------------------- command line


@pytest.fixture
def cli(monkeypatch, capsys):
    """Run ``samforge ...`` in-process, with ``evaluate`` registered even before cli/main.py lists it."""
    if evaluate_cli not in cli_main.SUBCOMMANDS:
        monkeypatch.setattr(cli_main, "SUBCOMMANDS", (*cli_main.SUBCOMMANDS, evaluate_cli))

    def run(*argv: str) -> tuple[int, str, str]:
        code = cli_main.main([str(a) for a in argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def test_cli_end_to_end_random_weights(cli, tmp_path):
    out = tmp_path / "eval"
    code, stdout, _ = cli("evaluate", "--model-type", "vit_small", "--data", "synthetic:2:64", "--out", out)
    assert code == 0
    assert "RANDOM" in stdout and str(out.resolve()) in stdout and "mIoU" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["best_worst.png", "metrics.json", "per_image.csv"]
    metrics = json.loads((out / "metrics.json").read_text())
    check_metrics_shape(metrics)
    assert metrics["num_images"] == 2


def test_cli_samforge_checkpoint_without_model_type(cli, tmp_path):
    torch.manual_seed(1)
    ckpt = tmp_path / "last.pt"
    torch.save({"model": build_sam("vit_small").state_dict(), "sam_config": SAM_CONFIGS["vit_small"].to_dict()}, ckpt)
    out = tmp_path / "eval"
    code, stdout, _ = cli("evaluate", "--checkpoint", ckpt, "--data", "synthetic:1:64", "--max-images", "1",
                          "--out", out)
    assert code == 0 and "RANDOM" not in stdout
    assert json.loads((out / "metrics.json").read_text())["num_images"] == 1


def test_cli_coco_with_images_folder(cli, tmp_path, synthetic_samples):
    """A COCO JSON whose images live elsewhere (``--images``); a missing image is reported, not fatal."""
    from samforge.utils import save_png

    (tmp_path / "imgs").mkdir()
    save_png(synthetic_samples[0].image, tmp_path / "imgs" / "a.png")
    square = [10, 10, 40, 10, 40, 40, 10, 40]
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "height": 64, "width": 64},
                   {"id": 2, "file_name": "missing.png", "height": 64, "width": 64}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [square], "area": 900,
                         "bbox": [10, 10, 30, 30], "iscrowd": 0},
                        {"id": 2, "image_id": 2, "category_id": 1, "segmentation": [square], "area": 900,
                         "bbox": [10, 10, 30, 30], "iscrowd": 0}],
        "categories": [{"id": 1, "name": "thing"}],
    }
    ann = tmp_path / "ann" / "instances.json"
    ann.parent.mkdir()
    ann.write_text(json.dumps(coco))
    out = tmp_path / "eval"
    code, stdout, _ = cli("evaluate", "--model-type", "vit_small", "--data", ann, "--images", tmp_path / "imgs",
                          "--out", out)
    assert code == 0 and "missing.png" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == 1 and metrics["num_objects"] == 1


@pytest.mark.parametrize("case", ["missing_checkpoint", "unknown_data", "no_model"])
def test_cli_bad_input_exits_2(cli, tmp_path, case):
    args = {
        "missing_checkpoint": ["--checkpoint", tmp_path / "missing.pth", "--model-type", "vit_small",
                               "--data", "synthetic:1:64"],
        "unknown_data": ["--model-type", "vit_small", "--data", tmp_path / "nowhere.xyz"],
        "no_model": ["--data", "synthetic:1:64"],
    }[case]
    code, _, err = cli("evaluate", *args, "--out", tmp_path / "eval")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("samforge evaluate: error:")
    assert not (tmp_path / "eval").exists()
