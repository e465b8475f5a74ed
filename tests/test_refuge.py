"""REFUGE fundus data: the reader, multi-rater fusion, the synthetic fundus writer, soft targets through the
trainer's loss, and the REFUGE metrics as Medical-SAM2 reports them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from samforge.data.raters import RaterIndex, fuse_raters, parse_rater_rule
from samforge.data.readers import open_dataset
from samforge.data.refuge import RefugeDataset, split_options
from samforge.data.sample import Sample
from samforge.data.synthetic_fundus import SyntheticFundusDataset, make_fundus_case, write_fundus_layout
from samforge.evaluate.refuge_metrics import RefugeScores, agreement_click, threshold_iou_dice

pytestmark = pytest.mark.usefixtures("one_thread")

# three raters on a 1 x 4 strip: rater 1 marks pixels 0-1, rater 2 pixels 0-2, rater 3 pixel 0 only
STRIP = np.array([[[1, 1, 0, 0]], [[1, 1, 1, 0]], [[1, 0, 0, 0]]], dtype=bool)


def _write_case(folder: Path, name: str, disc: np.ndarray, cup: np.ndarray, image_hw: tuple[int, int] | None = None,
                cropped: bool = False) -> Path:
    """A REFUGE case folder: ``<name>.jpg`` and 0/255 PNG masks ``<name>_seg_{cup,disc}_K.png``."""
    case = folder / name
    case.mkdir(parents=True)
    h, w = image_hw or disc.shape[1:]
    tail = "_cropped" if cropped else ""
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(case / f"{name}{tail}.jpg")
    for structure, stack in (("disc", disc), ("cup", cup)):
        for k, m in enumerate(stack, start=1):
            Image.fromarray(m.astype(np.uint8) * 255).save(case / f"{name}_seg_{structure}_{k}{tail}.png")
    return case


def _rings(h: int = 16, w: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Three raters' disc (radius 5, 6, 7) and cup (radius 2, 3, 4) around the centre, 3 x H x W each."""
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot(yy - h / 2, xx - w / 2)
    return np.stack([r <= d for d in (5, 6, 7)]), np.stack([r <= c for c in (2, 3, 4)])


def _listing(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns) for p in root.rglob("*"))


# ---------------------------------------------------------------- rater fusion


def test_each_rater_rule_on_known_masks():
    mask, soft = fuse_raters(STRIP, "majority")
    assert mask.tolist() == [[True, True, False, False]] and soft is None  # 3/3, 2/3, 1/3, 0/3 agree
    mask, soft = fuse_raters(STRIP, 2)
    assert mask.tolist() == [[True, True, True, False]] and soft is None
    mask, soft = fuse_raters(STRIP, "mean")
    assert soft.dtype == np.float32 and np.allclose(soft, [[1, 2 / 3, 1 / 3, 0]])
    assert mask.tolist() == [[True, True, False, False]]  # prompts come from the majority
    assert fuse_raters(STRIP, "all", draw=2)[0].tolist() == [[True, False, False, False]]
    even = np.array([[[1, 0]], [[0, 0]]], dtype=bool)  # a tie (1 of 2) counts as foreground: mean >= 0.5
    assert fuse_raters(even, "majority")[0].tolist() == [[True, False]]


def test_rater_rules_reject_bad_input():
    assert parse_rater_rule("3") == 3 and parse_rater_rule(" Mean ") == "mean"
    for bad in ("median", "0", 0, -1, True, 1.5, ""):
        with pytest.raises(ValueError, match="rater"):
            parse_rater_rule(bad)
    with pytest.raises(ValueError, match="only 3 rater"):
        fuse_raters(STRIP, 4)
    with pytest.raises(ValueError, match="draw"):
        fuse_raters(STRIP, "all")  # which rater?
    with pytest.raises(ValueError, match="R x H x W bool"):
        fuse_raters(STRIP.astype(np.uint8), "majority")


def test_rater_index_gives_each_rater_a_sample_under_all():
    assert [RaterIndex([2, 3], "all")[i] for i in range(5)] == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]
    assert len(RaterIndex([2, 3], "majority")) == 2 and RaterIndex([2, 3], 1)[1] == (1, None)


# ---------------------------------------------------------------- the reader


def test_reader_on_a_tiny_layout(tmp_path):
    disc, cup = _rings()
    for name in ("g0002", "g0001"):
        _write_case(tmp_path / "Training-400", name, disc, cup)
    _write_case(tmp_path / "Test-400", "T0001", disc, cup)
    before = _listing(tmp_path)
    ds = open_dataset(tmp_path)  # the layout is detected
    assert isinstance(ds, RefugeDataset) and len(ds) == 2 and ds.structures == ("disc", "cup")
    assert ds.names == [str(tmp_path / "Training-400" / n / f"{n}.jpg") for n in ("g0001", "g0002")]
    assert ds.case_names == ds.names and ds.bad_samples == []
    s = ds[0]
    assert s.masks.shape == (2, 16, 16) and s.soft_masks is None and s.image.shape == (16, 16, 3)
    assert np.array_equal(s.masks[0], disc[1]) and np.array_equal(s.masks[1], cup[1])  # the middle rater
    test = open_dataset(f"refuge:{tmp_path}:part=test")
    assert [Path(n).parent.name for n in test.names] == ["T0001"]
    assert len(open_dataset(f"refuge:{tmp_path}:part=all")) == 3
    assert len(open_dataset(tmp_path / "Training-400")) == 2  # a part folder given directly: its cases
    assert _listing(tmp_path) == before  # nothing written into the data folder


def test_reader_rater_options(tmp_path):
    disc, cup = _rings()
    _write_case(tmp_path / "Training-400", "g0001", disc, cup)
    one = open_dataset(f"refuge:{tmp_path}:rater=3")[0]
    assert np.array_equal(one.masks[1], cup[2])
    mean = open_dataset(f"refuge:{tmp_path}:rater=mean")[0]
    assert np.allclose(mean.soft_masks[1], cup.mean(0)) and np.array_equal(mean.masks[1], cup.mean(0) >= 0.5)
    every = open_dataset(f"refuge:{tmp_path}:part=training:rater=all")
    assert len(every) == 3 and every.names[2].endswith("g0001.jpg[rater=3]")
    assert len(set(every.case_names)) == 1  # one case: a split keeps its raters together
    assert np.array_equal(every[0].masks[0], disc[0])


def test_disc_drawn_as_a_rim_is_completed_with_the_cup(tmp_path):
    disc, cup = _rings()
    _write_case(tmp_path / "Training-400", "g0001", disc & ~cup, cup)  # rim annotations
    s = open_dataset(tmp_path)[0]
    assert np.array_equal(s.masks[0], disc[1]) and (s.masks[1] <= s.masks[0]).all()


def test_medsam2_cropped_variant_and_binarisation(tmp_path):
    disc, cup = _rings()
    case = _write_case(tmp_path / "Training-400", "V0001", disc, cup, cropped=True)
    grey = np.where(cup[0], 128, 127).astype(np.uint8)  # >= 128 is foreground (ToTensor() >= 0.5)
    Image.fromarray(grey).save(case / "V0001_seg_cup_1_cropped.png")
    s = RefugeDataset(tmp_path, rater=1)[0]
    assert np.array_equal(s.masks[1], cup[0])


@pytest.mark.parametrize("case", ["missing_mask", "rater_sizes", "no_image", "rater_beyond"])
def test_bad_cases_are_reported_with_the_path(tmp_path, case):
    disc, cup = _rings()
    good = _write_case(tmp_path / "Training-400", "g0001", disc, cup)
    bad = _write_case(tmp_path / "Training-400", "g0002", disc, cup)
    rater, expected = "majority", None
    if case == "missing_mask":
        (bad / "g0002_seg_disc_2.png").unlink()
        expected = (bad / "g0002_seg_disc_2.png", "missing mask")
    elif case == "rater_sizes":
        Image.fromarray(np.zeros((16, 20), np.uint8)).save(bad / "g0002_seg_cup_3.png")
        expected = (bad / "g0002_seg_cup_3.png", "mask size 20x16 (WxH) differs")
    elif case == "no_image":
        (bad / "g0002.jpg").unlink()
        expected = (bad, "no image: expected g0002/g0002.jpg")
    else:
        for k in (3, 2, 1):  # good gets a 4th rater
            (good / f"g0001_seg_cup_{k}.png").rename(good / f"g0001_seg_cup_{k + 1}.png")
            (good / f"g0001_seg_disc_{k}.png").rename(good / f"g0001_seg_disc_{k + 1}.png")
        (good / "g0001_seg_cup_1.png").write_bytes((bad / "g0002_seg_cup_1.png").read_bytes())
        (good / "g0001_seg_disc_1.png").write_bytes((bad / "g0002_seg_disc_1.png").read_bytes())
        rater, expected = 4, (bad, "rater=4 asked for, but this case has 3 raters")
    before = _listing(tmp_path)
    ds = RefugeDataset(tmp_path, rater=rater)
    assert len(ds) == 1 and len(ds.bad_samples) == 1
    assert ds.bad_samples[0].path == str(expected[0]) and expected[1] in ds.bad_samples[0].reason
    assert _listing(tmp_path) == before


def test_no_usable_case_and_bad_specs_raise(tmp_path):
    disc, cup = _rings()
    case = _write_case(tmp_path / "Training-400", "g0001", disc, cup)
    (case / "g0001.jpg").unlink()
    with pytest.raises(ValueError, match="(?s)no usable REFUGE cases.*no image"):
        open_dataset(tmp_path)
    with pytest.raises(ValueError, match="expected Test-400/"):
        RefugeDataset(tmp_path, part="test")
    with pytest.raises(ValueError, match="rater"):
        open_dataset(f"refuge:{tmp_path}:rater=best")
    with pytest.raises(ValueError, match="bad option 'fold=1'"):
        open_dataset(f"refuge:{tmp_path}:fold=1")
    with pytest.raises(FileNotFoundError, match="REFUGE folder not found"):
        open_dataset(f"refuge:{tmp_path / 'nowhere'}")
    empty = _write_case(tmp_path / "Test-400", "T0001", disc, np.zeros_like(cup))
    with pytest.raises(ValueError, match=f"{empty}: the cup mask is empty"):
        RefugeDataset(tmp_path, part="test")[0]
    assert split_options("C:/data:rater=2", ("rater",)) == ("C:/data", {"rater": "2"})


# ---------------------------------------------------------------- synthetic fundus


def test_synthetic_fundus_round_trip(tmp_path):
    write_fundus_layout(tmp_path, 2, (64, 80), seed=3)
    read = RefugeDataset(tmp_path, rater="all")
    served = open_dataset("synthetic-fundus:2:64x80:3:rater=all")
    assert isinstance(served, SyntheticFundusDataset) and len(read) == len(served) == 14
    assert [Path(n).name for n in read.names[:2]] == ["fundus00003.jpg[rater=1]", "fundus00003.jpg[rater=2]"]
    for i in (0, 6, 13):
        a, b = read[i], served[i]
        assert np.array_equal(a.masks, b.masks)  # PNG masks: exact
        assert np.abs(a.image.astype(int) - b.image.astype(int)).mean() < 3  # JPEG image: close
    case = make_fundus_case(3, (64, 80))
    raters_disagree = (case.cup.any(0) & ~case.cup.all(0)).sum()
    assert raters_disagree > 0 and (case.cup <= case.disc).all()  # disagreement at the boundary; cup in disc
    assert np.array_equal(case.image, make_fundus_case(3, (64, 80)).image)  # deterministic


def test_synth_cli_writes_the_layout(tmp_path, capsys):
    from samforge.cli.main import main

    assert main(["synth", "--fundus", "2", "--fundus-test", "1", "--size", "64", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in (tmp_path / "Training-400").iterdir()) == ["fundus00000", "fundus00001"]
    assert len(list((tmp_path / "Test-400" / "fundus00002").glob("fundus00002_seg_*_*.png"))) == 14
    assert len(open_dataset(f"refuge:{tmp_path}:part=test")) == 1
    assert main(["synth", "--fundus", "1", "--size", "32", "--out", str(tmp_path / "small")]) == 2
    assert "--fundus needs --size >= 64 per side, got '32'" in capsys.readouterr().err


# ---------------------------------------------------------------- soft targets reach the loss


def test_soft_target_flows_through_batches_and_loss():
    from samforge.models.build import build_sam
    from samforge.train.batches import TrainingSamples, collate_samples
    from samforge.train.config import PromptConfig
    from samforge.train.losses import SamLoss
    from samforge.train.step import training_losses

    samples = TrainingSamples(open_dataset("synthetic-fundus:1:128:0:rater=mean"), image_size=256, max_objects=2)
    batch = collate_samples([samples[(0, 0)]])
    t = batch["targets"]
    assert t.dtype == torch.float32 and t.shape == batch["masks"].shape
    assert ((t > 0.05) & (t < 0.95)).any()  # soft at the raters' disagreement, not binarised
    seen = []

    class Recording(SamLoss):
        def forward(self, logits, iou_pred, targets):
            seen.append(targets)
            return super().forward(logits, iou_pred, targets)

    torch.manual_seed(0)
    training_losses(build_sam("vit_small"), batch, PromptConfig(), Recording(), np.random.default_rng(0))
    assert torch.equal(seen[0], t)


def test_sample_rejects_bad_soft_targets():
    image, masks = np.zeros((4, 4, 3), np.uint8), np.ones((1, 4, 4), bool)
    with pytest.raises(ValueError, match="soft_masks must be float32"):
        Sample(image, masks, "x", soft_masks=np.ones((1, 4, 4), np.float64))
    with pytest.raises(ValueError, match=r"soft_masks must lie in \[0, 1\]"):
        Sample(image, masks, "x", soft_masks=np.full((1, 4, 4), 1.5, np.float32))


# ---------------------------------------------------------------- metrics


def test_threshold_metrics_by_hand():
    pred = np.array([[1, 1, 0, 0]], dtype=bool)
    soft = np.array([[1.0, 0.6, 0.4, 0.0]], dtype=np.float32)  # target > t: 3 px at 0.1/0.3, 2 at 0.5, 1 at 0.7/0.9
    iou, dice = threshold_iou_dice(pred, soft)
    e6, e4 = 1e-6, 1e-4
    ious = [(2 + e6) / (3 + e6)] * 2 + [(2 + e6) / (2 + e6)] + [(1 + e6) / (2 + e6)] * 2
    dices = [(4 + e4) / (5 + e4)] * 2 + [(4 + e4) / (4 + e4)] + [(2 + e4) / (3 + e4)] * 2
    assert iou == pytest.approx(np.mean(ious), abs=1e-12) and dice == pytest.approx(np.mean(dices), abs=1e-12)
    empty = np.zeros((1, 4), bool)
    assert threshold_iou_dice(empty, empty) == (1.0, 1.0)  # Medical-SAM2's smoothing: empty vs empty is 1
    two = threshold_iou_dice(np.stack([pred, empty]), np.stack([soft, soft]))  # the mean over images
    empty_vs_soft = np.mean([e6 / (3 + e6)] * 2 + [e6 / (2 + e6)] + [e6 / (1 + e6)] * 2)  # about 0, not 1
    assert two[0] == pytest.approx((np.mean(ious) + empty_vs_soft) / 2, abs=1e-12)
    with pytest.raises(ValueError, match="same shape"):
        threshold_iou_dice(pred, soft[:, :3])
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        threshold_iou_dice(pred, soft * 2)


def test_refuge_scores_summary_by_hand():
    scores = RefugeScores(("disc", "cup"))
    disc = np.zeros((4, 4), bool)
    disc[:2] = True  # 8 px
    pred = np.zeros((4, 4), bool)
    pred[:1] = True  # 4 px inside
    scores.add("disc", pred, disc)
    scores.add("cup", disc, disc)
    s = scores.summary()
    assert s["disc"]["iou"] == 0.5 and s["disc"]["dice"] == pytest.approx(8 / 12)
    assert s["disc"]["iou_thr_avg"] == pytest.approx((4 + 1e-6) / (8 + 1e-6))  # binary: every threshold alike
    assert s["cup"] == {"dice": 1.0, "iou": 1.0, "dice_thr_avg": 1.0, "iou_thr_avg": 1.0}
    assert s["num_images"] == 1 and s["thresholds"] == [0.1, 0.3, 0.5, 0.7, 0.9]
    with pytest.raises(ValueError, match="structure"):
        scores.add("macula", pred, disc)
    point = agreement_click(np.array([[0.2, 1.0], [1.0, 0.5]], np.float32), np.random.default_rng(0))
    assert tuple(point[0]) in {(1.0, 0.0), (0.0, 1.0)}  # where the raters agree most


def test_evaluate_cli_reports_refuge_metrics(tmp_path):
    from samforge.cli.main import main

    out = tmp_path / "eval"
    code = main(["evaluate", "--model-type", "vit_small", "--data", "synthetic-fundus:2:64:0:rater=mean",
                 "--out", str(out)])
    assert code == 0
    refuge = json.loads((out / "metrics.json").read_text())["refuge"]
    assert refuge["num_images"] == 2 and set(refuge) >= {"disc", "cup", "thresholds", "prompt"}
    for s in ("disc", "cup"):
        assert set(refuge[s]) == {"dice", "iou", "dice_thr_avg", "iou_thr_avg"}
        assert all(0.0 <= v <= 1.0 for v in refuge[s].values())


def test_training_on_refuge_reports_each_structure_and_vis_every(tmp_path):
    from samforge.train.config import load_config
    from samforge.train.trainer import train

    write_fundus_layout(tmp_path / "refuge", 3, (64, 64), seed=0)
    tiny = ["model.type=vit_small",
            "model.arch={image_size: 64, patch_size: 8, encoder_embed_dim: 32, encoder_depth: 1, encoder_num_heads: 2,"
            " encoder_global_attn_indexes: [0], window_size: 4, prompt_embed_dim: 32, decoder_num_heads: 2,"
            " decoder_mlp_dim: 64, iou_head_hidden_dim: 32}",
            f"data.train=refuge:{tmp_path / 'refuge'}:rater=mean", "data.val=synthetic-fundus:2:64:1000",
            "data.num_workers=0", "batch_size=2", "precision=fp32", "val_images=2", "steps=3", "val_every=1",
            "vis_every=2", f"out={tmp_path / 'run'}"]
    train(load_config(None, tiny))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if r["split"] == "val"][-1]
    assert all(0.0 <= val[k] <= 1.0 for k in ("box_dice_disc", "box_dice_cup", "point_dice_disc", "point_dice_cup"))
    refuge = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())["refuge"]
    assert refuge["num_images"] == 2 and 0.0 <= refuge["cup"]["dice_thr_avg"] <= 1.0
    overlays = sorted(p.name for p in (tmp_path / "run" / "overlays").iterdir())
    assert overlays == ["val_step000002.png", "val_step000003.png"]  # every 2nd validation, and the last


def test_finetune_vis_flag_checks_its_value(tmp_path, capsys):
    from samforge.cli.main import main

    code = main(["finetune", "--base", "vit_small:none.pth", "--data", "synthetic-fundus:2:64", "--mode", "full",
                 "--vis", "-1", "--out", str(tmp_path / "run")])
    assert code == 2 and "--vis must be an integer >= 0 (overlays every N validations), got -1" in capsys.readouterr().err


# ---------------------------------------------------------------- the MedSAM2 REFUGE workflow, one command

SAM2_TINY = ["++model.image_size=64", "++model.image_encoder.trunk.embed_dim=16",
             "++model.image_encoder.neck.backbone_channel_list=[128,64,32,16]"]
SAM_TINY = {"image_size": 64, "patch_size": 8, "encoder_embed_dim": 32, "encoder_depth": 1, "encoder_num_heads": 2,
            "encoder_global_attn_indexes": (0,), "window_size": 4, "prompt_embed_dim": 32, "decoder_num_heads": 2,
            "decoder_mlp_dim": 64, "iou_head_hidden_dim": 32}
FINETUNE_COMMON = ["--mode", "full", "--vis", "2", "steps=2", "val_every=1", "batch_size=2", "val_images=2",
                   "data.num_workers=0", "precision=fp32", "optim.warmup_steps=1"]


def _check_refuge_run(run: Path, data: Path, printed: str) -> None:
    """What the workflow leaves: a held-out split of the data's cases, per-structure Dice at each validation, the
    REFUGE block (Dice/IoU and the threshold-averaged form per structure) in eval/metrics.json, overlays."""
    split = json.loads((run / "split.json").read_text())
    assert split["data"] == f"refuge:{data}" and len(split["val_cases"]) == 1 and len(split["train_cases"]) == 4
    assert all(c.startswith("Training-400/fundus") for c in split["val_cases"] + split["train_cases"])
    assert f"validating on 1 held-out cases of refuge:{data}" in printed
    val = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines() if '"val"' in r]
    assert len(val) == 2
    for row in val:
        for prompt in ("box", "point"):
            parts = [row[f"{prompt}_dice_{s}"] for s in ("disc", "cup")]
            assert all(0.0 <= v <= 1.0 for v in parts)
            assert np.mean(parts) == pytest.approx(row[f"{prompt}_dice"], abs=2e-6)  # one disc, one cup per image
    refuge = json.loads((run / "eval" / "metrics.json").read_text())["refuge"]
    assert refuge["num_images"] == 1 and refuge["thresholds"] == [0.1, 0.3, 0.5, 0.7, 0.9]
    for s in ("disc", "cup"):
        assert set(refuge[s]) == {"dice", "iou", "dice_thr_avg", "iou_thr_avg"}
        assert all(0.0 <= v <= 1.0 for v in refuge[s].values())
    assert "structure     Dice     IoU  Dice@thr  IoU@thr" in printed
    assert sorted(p.name for p in (run / "overlays").iterdir()) == ["val_step000002.png"]  # every 2nd validation


def test_medsam2_refuge_workflow_with_a_sam2_base(tmp_path, capsys):
    from samforge.cli.main import main
    from samforge.models.sam2.build import build_sam2

    data = tmp_path / "REFUGE"
    assert main(["synth", "--fundus", "5", "--size", "64", "--out", str(data)]) == 0
    torch.manual_seed(0)
    ckpt = tmp_path / "sam2_tiny.pt"
    torch.save({"model": build_sam2("sam2.1_hiera_t", None, device="cpu", hydra_overrides_extra=SAM2_TINY)
                .state_dict()}, ckpt)
    overrides = "model.overrides=[" + ",".join(f"'{o}'" for o in SAM2_TINY) + "]"
    code = main(["finetune", "--base", f"sam2.1_hiera_t:{ckpt}", "--data", f"refuge:{data}",
                 "--out", str(tmp_path / "run"), *FINETUNE_COMMON, overrides, "sam2_prompts.num_correction_points=1"])
    assert code == 0
    _check_refuge_run(tmp_path / "run", data, capsys.readouterr().out)


def test_medsam2_refuge_workflow_with_a_sam_base(tmp_path, capsys):
    from samforge.cli.main import main
    from samforge.models.build import build_sam
    from samforge.models.configs import SAM_CONFIGS

    data = tmp_path / "REFUGE"
    assert main(["synth", "--fundus", "5", "--size", "64", "--out", str(data)]) == 0
    torch.manual_seed(0)
    ckpt = tmp_path / "sam_tiny.pth"
    torch.save(build_sam(dataclasses.replace(SAM_CONFIGS["vit_small"], **SAM_TINY)).state_dict(), ckpt)
    arch = "model.arch={" + ", ".join(f"{k}: {list(v) if isinstance(v, tuple) else v}" for k, v in SAM_TINY.items())
    code = main(["finetune", "--base", f"vit_small:{ckpt}", "--data", f"refuge:{data}",
                 "--out", str(tmp_path / "run"), *FINETUNE_COMMON, arch + "}"])
    assert code == 0
    _check_refuge_run(tmp_path / "run", data, capsys.readouterr().out)
