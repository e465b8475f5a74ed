"""The data engine simulation's quality bar (issue #23): the IoU the simulated person clicks to, the IoU at which a
proposal is accepted and the proposal filters are settings (the SAM paper's 0.85 / 0.85 / 0.9 / 0.95 by default),
checked, recorded with the run (a rerun with another bar is refused) and passed to the labelling and the automatic
stage."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_engine import SIM, record, run_engine

from samforge.data.readers import open_dataset
from samforge.data.sample import Sample
from samforge.data.synthetic import make_scene
from samforge.engine import ModelRef, annotate_objects
from samforge.engine.simulate import SimulateSettings, label_image, simulate
from samforge.models.build import build_sam
from samforge.predict.predictor import SamPredictor


@pytest.fixture(scope="module")
def labelled_scene():
    torch.manual_seed(0)
    scene = make_scene(3, image_size=(48, 64), num_objects=3)
    predictor = SamPredictor(build_sam("vit_small"))
    predictor.set_image(scene.image)
    return scene, Sample(scene.image, scene.masks, "scene"), predictor


def test_label_image_clicks_to_the_given_bar(labelled_scene):
    scene, sample, predictor = labelled_scene
    first = [t.ious[0] for t in annotate_objects(predictor, list(scene.masks), target_iou=1.0, max_clicks=1)]
    assert min(first) > 0, "a random model's first mask misses an object: pick another scene"
    lenient = label_image(predictor, sample, target_iou=min(first))  # every first mask is good enough
    assert lenient.clicks == [1, 1, 1] and lenient.hand_finished == 0
    assert not np.array_equal(lenient.masks, scene.masks)  # the model's masks, not the truth
    strict = label_image(predictor, sample)  # the paper's 0.85: never reached by random weights
    assert strict.hand_finished == 3 and np.array_equal(strict.masks, scene.masks)


def test_label_image_accepts_and_filters_at_the_given_thresholds(labelled_scene):
    scene, sample, predictor = labelled_scene
    near = scene.masks[1].copy()
    ys, xs = np.nonzero(near)
    near[ys[: len(ys) // 5], xs[: len(xs) // 5]] = False  # IoU 0.8 with object 1: under the paper's 0.85
    proposals = [record(near, 0.8, 0.9)]  # not confident enough for the strict filters
    assert label_image(predictor, sample, proposals).proposals_shown == 0
    shown = label_image(predictor, sample, proposals, pred_iou_thresh=0.75, stability_score_thresh=0.85)
    assert shown.proposals_shown == 1 and shown.from_proposals == 0  # shown, but rejected at IoU 0.85
    taken = label_image(predictor, sample, proposals, accept_iou=0.75, pred_iou_thresh=0.75,
                        stability_score_thresh=0.85)
    assert taken.from_proposals == 1 and taken.clicks[1] == 0 and np.array_equal(taken.masks[1], near)


@pytest.mark.parametrize("name", ["target_iou", "accept_iou", "proposal_pred_iou", "proposal_stability"])
@pytest.mark.parametrize("bad", [0, 1.5, -0.1, "0.9", True, float("nan")])
def test_settings_check_the_bar(name, bad):
    with pytest.raises(ValueError, match=f"{name} must be a number in \\(0, 1\\], got"):
        SimulateSettings(rounds=1, images_per_round=1, **{name: bad})


def test_bar_is_recorded_and_a_rerun_with_another_is_refused(tmp_path, capsys, monkeypatch):
    seen = []

    def quality(model, data, indices, points_per_side, pred_iou_thresh, stability_score_thresh):
        seen.append((pred_iou_thresh, stability_score_thresh))
        return {"pseudo_labels": 0, "precision@0.5": None, "precision@0.75": None, "recall@0.5": 0.0,
                "recall@0.75": 0.0, "per_image": 0.0}

    monkeypatch.setattr("samforge.engine.simulate.automatic_stage_quality", quality)
    work = tmp_path / "w"
    flags = ["--target-iou", "0.5", "--accept-iou", "0.6", "--proposal-pred-iou", "0.7", "--proposal-stability", "0.8"]
    code, out, err = run_engine(capsys, "simulate", *SIM, "--rounds", "1", *flags, "--out", work)
    assert code == 0, err
    summary = json.loads((work / "rounds.json").read_text())
    assert {k: summary["settings"][k] for k in ("target_iou", "accept_iou", "proposal_pred_iou",
                                                "proposal_stability")} == {
        "target_iou": 0.5, "accept_iou": 0.6, "proposal_pred_iou": 0.7, "proposal_stability": 0.8}
    assert seen and set(seen) == {(0.7, 0.8)}  # the automatic stage ran with the run's filters
    code, _, err = run_engine(capsys, "simulate", *SIM, "--rounds", "1", "--out", work)  # the paper's bar now
    assert code == 2 and "target_iou" in err and "differ" in err
    code, _, err = run_engine(capsys, "simulate", *SIM, "--rounds", "1", "--target-iou", "0", "--out", tmp_path / "x")
    assert code == 2 and "target_iou must be a number in (0, 1], got 0.0" in err


def test_a_run_recorded_before_the_bar_existed_continues_with_the_paper_bar(tmp_path):
    data = open_dataset("synthetic:4:64")
    settings = SimulateSettings(rounds=1, images_per_round=1, held_out=1, retrain_steps=1, points_per_side=4)
    work = tmp_path / "w"
    simulate(data, "synthetic:4:64", work, ModelRef("vit_small"), settings, log=lambda s: None)
    recorded = json.loads((work / "simulate.json").read_text())
    for key in ("target_iou", "accept_iou", "proposal_pred_iou", "proposal_stability"):
        del recorded[key]  # as a run of an older samforge wrote it
    (work / "simulate.json").write_text(json.dumps(recorded))
    more = SimulateSettings(rounds=2, images_per_round=1, held_out=1, retrain_steps=1, points_per_side=4)
    table = simulate(data, "synthetic:4:64", work, ModelRef("vit_small"), more, log=lambda s: None)
    assert [m["round"] for m in table] == [0, 1, 2]


def test_heldout_clicks_are_the_evaluation_noc_at_the_paper_bar(tmp_path):
    """At IoU 0.85 the held-out clicks per object are the evaluation's NoC@85 on the same images (one click rule);
    a lower bar needs no more clicks."""
    from samforge.engine.simulate import heldout_clicks, heldout_miou

    data = open_dataset("synthetic:3:64")
    torch.manual_seed(1)
    model = build_sam("vit_small")
    noc85 = heldout_miou(model, data, [0, 1, 2])["heldout_noc85"]
    assert heldout_clicks(model, data, [0, 1, 2], 0.85) == pytest.approx(noc85)
    first = [t.ious[0] for i in range(3) for t in annotate_objects(_set(model, data[i]), list(data[i].masks),
                                                                   target_iou=1.0, max_clicks=1)]
    lowest = min(first)
    if lowest > 0:  # every first mask reaches the lowest first IoU: one click each
        assert heldout_clicks(model, data, [0, 1, 2], lowest) == 1.0
    assert heldout_clicks(model, data, [0, 1, 2], 0.05) <= heldout_clicks(model, data, [0, 1, 2], 0.85)


def _set(model, sample):
    predictor = SamPredictor(model)
    predictor.set_image(sample.image)
    return predictor
