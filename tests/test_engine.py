"""The data engine's foundation: round bookkeeping, the proposal filter, the simulated annotator's rules and
``samforge engine auto``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from samforge.cli.main import main
from samforge.data.readers import open_dataset
from samforge.data.sample import Sample
from samforge.data.synthetic import make_scene
from samforge.engine import IncompleteRoundError, ModelRef, annotate_objects, current_round, filter_proposals
from samforge.engine import finish_round, judge_proposals, list_rounds, pending_round, start_round
from samforge.engine.auto_report import auto_report
from samforge.engine.pseudo_label_quality import iou_matrix, match_count, pseudo_label_scores
from samforge.engine.retrain import retrain_decoder, run_retrain
from samforge.engine.round_model import load_model_ref
from samforge.engine.simulate import SimulateSettings, label_image, simulate
from samforge.evaluate.interactive import click_loops
from samforge.models.build import build_sam
from samforge.models.lora import LORA_KEY, LoraConfig, add_lora
from samforge.predict.predictor import SamPredictor
from samforge.train.adapter_file import save_adapter, weights_fingerprint

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools"),  # numpy 2 note inside decode
    pytest.mark.usefixtures("one_thread"),
]


def box_mask(y0: int, x0: int, y1: int, x1: int, h: int = 32, w: int = 32) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def record(mask: np.ndarray, iou: float, stability: float, rle: bool = False) -> dict:
    seg = mask
    if rle:
        enc = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        seg = {"size": list(enc["size"]), "counts": enc["counts"].decode("ascii")}
    return {"segmentation": seg, "predicted_iou": iou, "stability_score": stability, "area": int(mask.sum())}


# ---------------------------------------------------------------- proposals


def test_proposals_keep_only_confident_and_stable_records():
    a, b, c, d = box_mask(0, 0, 8, 8), box_mask(10, 10, 20, 20), box_mask(0, 20, 8, 30), box_mask(24, 0, 30, 8)
    records = [record(a, 0.95, 0.97), record(b, 0.89, 0.99), record(c, 0.99, 0.94), record(d, 0.9, 0.95, rle=True)]
    kept = filter_proposals(records)
    assert kept == [records[0], records[3]]  # b: IoU below 0.9; c: stability below 0.95; d: both exactly at
    assert filter_proposals(records, pred_iou_thresh=0.85, stability_score_thresh=0.9) == records
    assert filter_proposals(records, pred_iou_thresh=0.96) == []


def test_proposals_overlapping_an_accepted_object_are_dropped():
    obj = box_mask(0, 0, 10, 10)  # 100 pixels
    same = record(box_mask(0, 0, 10, 9), 0.99, 0.99)  # IoU 0.9 with obj
    half = record(box_mask(0, 0, 10, 5), 0.99, 0.99)  # IoU exactly 0.5: kept (dropped only above)
    more = record(box_mask(0, 0, 10, 6), 0.99, 0.99)  # IoU 0.6
    apart = record(box_mask(20, 20, 30, 30), 0.99, 0.99, rle=True)
    records = [same, half, more, apart]
    assert filter_proposals(records, accepted=[obj]) == [half, apart]
    enc = mask_utils.encode(np.asfortranarray(obj.astype(np.uint8)))  # an accepted object given as an RLE
    assert filter_proposals(records, accepted=[{"size": enc["size"], "counts": enc["counts"].decode()}]) == [half,
                                                                                                           apart]
    assert filter_proposals(records, accepted=[obj], overlap_iou_thresh=0.95) == records
    assert filter_proposals(records, accepted=[]) == records


@pytest.mark.parametrize("call, error, said", [
    (lambda: filter_proposals("records"), TypeError, "records must be a list"),
    (lambda: filter_proposals([{"segmentation": box_mask(0, 0, 2, 2)}]), ValueError, "'predicted_iou'"),
    (lambda: filter_proposals([record(box_mask(0, 0, 2, 2), "high", 0.99)]), TypeError, "must be a number"),
    (lambda: filter_proposals([record(box_mask(0, 0, 2, 2), float("nan"), 0.99)]), ValueError, "finite"),
    (lambda: filter_proposals([], pred_iou_thresh=1.5), ValueError, "pred_iou_thresh must be in"),
    (lambda: filter_proposals([], accepted=box_mask(0, 0, 2, 2)), TypeError, "accepted must be a list"),
    (lambda: filter_proposals([record(box_mask(0, 0, 2, 2), 0.99, 0.99)], accepted=[box_mask(0, 0, 2, 2, 16, 16)]),
     ValueError, "one image size"),
    (lambda: filter_proposals([record(np.zeros(4, bool), 0.99, 0.99)]), ValueError,
     r"records\[0\]\['segmentation'\] must be an HxW"),
    (lambda: filter_proposals([record(np.zeros((4, 4)), 0.9, 0.99)], [np.zeros((4, 4), bool)]), ValueError, "0/1"),
])
def test_proposal_filter_rejects_bad_input(call, error, said):
    with pytest.raises(error, match=said):
        call()


# ---------------------------------------------------------------- rounds


def test_rounds_start_finish_and_current(tmp_path):
    work = tmp_path / "work"
    assert list_rounds(work) == [] and current_round(work) is None and pending_round(work) is None
    base = ModelRef("vit_b", "sam_vit_b")
    r0 = start_round(work, base, [])
    assert r0.index == 0 and not r0.complete and r0.problems == ("metrics.json missing",)
    assert current_round(work) is None and pending_round(work) == r0
    finish_round(work, 0, {"miou": 0.5})
    assert current_round(work).index == 0 and current_round(work).metrics == {"miou": 0.5}
    r1 = start_round(work, ModelRef("vit_b", "model.pt"), ["a.png", "b.png"])
    assert r1.folder == work / "rounds" / "1"
    assert json.loads((r1.folder / "snapshot.json").read_text()) == {"images": ["a.png", "b.png"]}
    (r1.folder / "model.pt").write_bytes(b"weights")
    finish_round(work, 1, {"miou": 0.7, "clicks_per_object": 3.5})
    now = current_round(work)
    assert now.index == 1 and now.images == ("a.png", "b.png") and now.metrics["clicks_per_object"] == 3.5
    assert now.model.resolved(now.folder).checkpoint == str((r1.folder / "model.pt").resolve())
    assert ModelRef("vit_b", "sam_vit_b").resolved(now.folder).checkpoint == "sam_vit_b"  # a name, not a file there
    with pytest.raises(ValueError, match="not overwritten"):
        finish_round(work, 1, {"miou": 0.0})
    assert [r.index for r in list_rounds(work)] == [0, 1]
    assert not any(p.name.startswith(".") for p in r1.folder.iterdir())  # no temporaries left


def test_a_half_written_round_is_reported_resumed_never_current(tmp_path):
    work = tmp_path / "work"
    start_round(work, ModelRef("vit_small"), [])
    finish_round(work, 0, {})
    model = ModelRef("vit_small", "ckpt.pt")
    half = start_round(work, model, ["x.png"])  # killed before its metrics were written
    assert current_round(work).index == 0  # the pending round is not the current model
    assert pending_round(work).index == 1 and "metrics.json missing" in pending_round(work).describe()
    assert start_round(work, model, ["x.png"]) == half  # the same round again: resumed, not a round 2
    with pytest.raises(IncompleteRoundError, match=r"round 1 .*incomplete: metrics.json missing"):
        start_round(work, model, ["x.png", "y.png"])
    (half.folder / "model.json").unlink()  # killed between its first two files
    assert pending_round(work).problems == ("model.json missing", "metrics.json missing")
    assert start_round(work, model, ["x.png"]) == half  # resumed: the missing file written
    (half.folder / "snapshot.json").write_text("{not json")
    found = pending_round(work)
    assert any("snapshot.json is not valid JSON" in p for p in found.problems)
    with pytest.raises(IncompleteRoundError, match="cannot be finished: snapshot.json"):
        finish_round(work, 1, {"miou": 0.6})
    (half.folder / "snapshot.json").unlink()
    (half.folder / "model.json").write_text(json.dumps({"checkpoint": None}))
    assert {"snapshot.json missing", "model.json: ModelRef needs a model_type or a checkpoint (or both), got "
            "neither"} <= set(pending_round(work).problems)
    assert current_round(work).index == 0


@pytest.mark.parametrize("call, error, said", [
    (lambda w: start_round(w, {"model_type": "vit_b"}, []), TypeError, "model must be a ModelRef"),
    (lambda w: start_round(w, ModelRef("vit_b"), "a.png"), TypeError, "images must be a list"),
    (lambda w: start_round(w, ModelRef("vit_b"), ["a.png", "a.png"]), ValueError, "distinct.*a.png"),
    (lambda w: start_round(w, ModelRef("vit_b"), [""]), ValueError, "non-empty str"),
    (lambda w: ModelRef(), ValueError, "model_type or a checkpoint"),
    (lambda w: ModelRef("vit_b", checkpoint=3), TypeError, "ModelRef.checkpoint"),
    (lambda w: finish_round(w, 0, {}), FileNotFoundError, "round 0 .* not found"),
    (lambda w: finish_round(w, -1, {}), ValueError, "round number"),
    (lambda w: finish_round(w, 0, {"miou": float("nan")}), ValueError, "finite"),
    (lambda w: list_rounds(w / "file.txt"), ValueError, "expected a folder, got a file"),
])
def test_round_bookkeeping_rejects_bad_input(tmp_path, call, error, said):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(error, match=said):
        call(tmp_path)


def test_round_model_is_built_from_the_round_folder(tmp_path):
    torch.manual_seed(1)
    base = build_sam("vit_small")
    work = tmp_path / "work"
    r0 = start_round(work, ModelRef("vit_small", "model.pt", "adapter.safetensors"), ["a.png"])
    torch.save(base.state_dict(), r0.folder / "model.pt")
    fingerprint = weights_fingerprint(base)
    config = LoraConfig(rank=2)
    add_lora(base, config)
    with torch.no_grad():
        for name, p in base.named_parameters():
            if LORA_KEY in name:
                p.add_(0.01)  # adapters that change the output
    save_adapter(r0.folder / "adapter.safetensors", base, config, fingerprint, "vit_small")
    finish_round(work, 0, {})
    now = current_round(work)
    loaded = load_model_ref(now.model.resolved(now.folder))
    expected = base.state_dict()
    assert loaded.state_dict().keys() == expected.keys()
    assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())
    torch.manual_seed(3)
    fresh = build_sam("vit_small")
    random = load_model_ref(ModelRef("vit_small"), seed=3)
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in random.state_dict().items())
    with pytest.raises(TypeError, match="ref must be a ModelRef"):
        load_model_ref({"model_type": "vit_small"})
    with pytest.raises(ValueError, match="device must be a torch device"):
        load_model_ref(ModelRef("vit_small"), device="gpu7")


# ---------------------------------------------------------------- simulated annotator


class FractionPredictor:
    """After n clicks predicts the first ``fractions[n - 1]`` of the object's pixels (raster order) of the object
    under the first click: IoU after n clicks is that fraction."""

    def __init__(self, gts: list[np.ndarray], fractions: list[float]) -> None:
        self.gts, self.fractions = gts, fractions

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        pass

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None, multimask_output=True,
                return_logits=False):
        x, y = np.asarray(point_coords[0]).astype(int)
        gt = next(g for g in self.gts if g[y, x])
        ys, xs = np.nonzero(gt)
        keep = round(self.fractions[min(len(point_coords), len(self.fractions)) - 1] * len(ys))
        mask = np.zeros_like(gt)
        mask[ys[:keep], xs[:keep]] = True
        return mask[None], np.array([0.5]), np.zeros((1, 8, 8))


def test_annotator_clicks_are_the_noc_protocol_clicks():
    gts = [box_mask(2, 2, 12, 12), box_mask(16, 16, 26, 26)]
    fake = FractionPredictor(gts, [0.5, 0.6, 0.7, 0.8, 0.84, 0.86, 0.9, 0.95])
    traces = annotate_objects(fake, gts)
    noc_traces = click_loops(fake, gts)  # the evaluation's protocol, its own stopping rule
    for t, ref in zip(traces, noc_traces):
        assert len(t.ious) == ref.noc(0.85) == 6  # clicks stop at the first IoU >= 0.85
        assert [p.tolist() for p in t.points] == [p.tolist() for p in ref.points[:6]] and t.labels == ref.labels[:6]
    never = annotate_objects(FractionPredictor(gts, [0.5]), gts)
    assert [len(t.ious) for t in never] == [20, 20]  # at most 20 clicks


def test_annotator_clicks_match_noc_on_a_real_model():
    torch.manual_seed(0)
    predictor = SamPredictor(build_sam("vit_small").eval())
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    gts = [box_mask(4, 4, 20, 30, 48, 64), box_mask(25, 35, 45, 60, 48, 64)]
    image[gts[0]] = (250, 20, 20)
    predictor.set_image(image)
    traces = annotate_objects(predictor, gts, target_iou=0.3, max_clicks=6)
    noc_traces = click_loops(predictor, gts, max_clicks=6, stop_at=None)
    for t, ref in zip(traces, noc_traces):
        k = ref.noc(0.3, max_clicks=6)
        assert len(t.ious) == k and t.ious == pytest.approx(ref.ious[:k])
        assert [p.tolist() for p in t.points] == [p.tolist() for p in ref.points[:k]]


def test_proposals_accepted_when_they_match_a_true_object():
    gts = [box_mask(0, 0, 10, 10), box_mask(20, 20, 30, 30)]
    good = record(box_mask(0, 0, 10, 9), 0.99, 0.99)  # IoU 0.9 with object 0
    twin = record(box_mask(0, 0, 10, 10), 0.99, 0.99, rle=True)  # object 0 again: already claimed
    poor = record(box_mask(20, 20, 30, 28), 0.99, 0.99)  # IoU 0.8 with object 1
    verdicts = judge_proposals([good, twin, poor, box_mask(20, 20, 30, 30)], gts)
    assert [(v.accepted, v.object_index) for v in verdicts] == [(True, 0), (False, None), (False, None), (True, 1)]
    assert verdicts[0].iou == pytest.approx(0.9) and verdicts[2].iou == pytest.approx(0.8)
    assert judge_proposals([poor], gts, accept_iou=0.8)[0].accepted
    with pytest.raises(ValueError, match="both must be of the image's size"):
        judge_proposals([box_mask(0, 0, 2, 2, 16, 16)], gts)
    with pytest.raises(ValueError, match="accept_iou must be a number in"):
        judge_proposals([good], gts, accept_iou=0)
    with pytest.raises(ValueError, match="empty"):
        judge_proposals([good], [np.zeros((32, 32), dtype=bool)])


# ---------------------------------------------------------------- samforge engine auto

AUTO_LOOSE = ("--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
              "--box-nms-thresh", "1.0")  # random weights: keep every mask, no suppression
ANN_KEYS = {"id", "image_id", "category_id", "segmentation", "area", "bbox", "iscrowd", "predicted_iou",
            "stability_score", "score", "point_coords", "crop_box"}


def run_engine(capsys, *argv) -> tuple[int, str, str]:
    code = main(["engine", *(str(a) for a in argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def auto_images(tmp_path_factory) -> Path:
    images = tmp_path_factory.mktemp("engine_auto") / "images"
    images.mkdir()
    for seed, stem in enumerate("abc"):
        Image.fromarray(make_scene(seed, image_size=(48, 64)).image).save(images / f"{stem}.png")
    return images


@pytest.fixture(scope="module")
def loose_run(auto_images):
    work = auto_images.parent / "loose"
    code = main(["engine", "auto", str(auto_images), "--out", str(work), "--model-type", "vit_small", *AUTO_LOOSE])
    return {"code": code, "work": work, "coco": json.loads((work / "auto" / "base" / "annotations.json").read_text())}


def test_engine_auto_writes_coco_pseudo_labels(loose_run):
    assert loose_run["code"] == 0
    coco, out = loose_run["coco"], loose_run["work"] / "auto" / "base"
    assert [im["file_name"] for im in coco["images"]] == ["a.png", "b.png", "c.png"]
    assert all((im["height"], im["width"]) == (48, 64) for im in coco["images"])
    per_image = [json.loads((out / "masks" / f"{s}.json").read_text()) for s in "abc"]
    assert len(coco["annotations"]) == sum(map(len, per_image)) > 0
    for ann in coco["annotations"]:
        assert set(ann) == ANN_KEYS and ann["score"] == ann["predicted_iou"]
        assert mask_utils.decode({"size": ann["segmentation"]["size"],
                                  "counts": ann["segmentation"]["counts"].encode()}).sum() == ann["area"]
    assert coco["info"]["model"] == {"model_type": "vit_small", "checkpoint": None, "adapter": None}
    report = json.loads((out / "report.json").read_text())
    assert report["masks_per_image"] == {f"{s}.png": len(r) for s, r in zip("abc", per_image)}
    assert report["images"] == 3 and report["pseudo_labels"] == len(coco["annotations"])
    for key in ("predicted_iou", "stability_score"):
        hist = report["histograms"][key]
        assert len(hist["edges"]) == 21 and sum(hist["counts"]) == len(coco["annotations"])
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["a.png", "b.png", "c.png"]


def test_auto_report_counts_and_rejects_bad_input():
    coco = {"images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
            "annotations": [{"image_id": 1, "predicted_iou": 0.95, "stability_score": 0.97},
                            {"image_id": 1, "predicted_iou": 1.02, "stability_score": 0.5},
                            {"image_id": 1, "predicted_iou": 0.12, "stability_score": 0.96}]}
    report = auto_report(coco, bins=4)
    assert report["masks_per_image"] == {"a.png": 3, "b.png": 0}
    assert report["histograms"]["predicted_iou"] == {"edges": [0.0, 0.25, 0.5, 0.75, 1.0], "counts": [1, 0, 0, 2]}
    assert report["histograms"]["stability_score"]["counts"] == [0, 0, 1, 2]
    with pytest.raises(ValueError, match=r"annotations\[0\] lacks \['stability_score'\]"):
        auto_report({"images": coco["images"], "annotations": [{"image_id": 1, "predicted_iou": 0.9}]})
    with pytest.raises(ValueError, match="has image_id 7, not an image's id"):
        auto_report({"images": coco["images"], "annotations": [{**coco["annotations"][0], "image_id": 7}]})
    with pytest.raises(ValueError, match="COCO instances"):
        auto_report([])


def test_engine_auto_filters_apply(loose_run, tmp_path, capsys, auto_images):
    anns = loose_run["coco"]["annotations"]
    t = float(np.median([a["predicted_iou"] for a in anns]))
    s = float(np.median([a["stability_score"] for a in anns]))
    code, out, _ = run_engine(capsys, "auto", auto_images, "--out", tmp_path / "w", "--model-type", "vit_small",
                              *AUTO_LOOSE[:2], "--pred-iou-thresh", t, "--stability-score-thresh", s,
                              "--box-nms-thresh", "1.0")
    assert code == 0
    strict = json.loads((tmp_path / "w" / "auto" / "base" / "annotations.json").read_text())["annotations"]
    expected = sorted((a["image_id"], a["predicted_iou"]) for a in anns
                      if a["predicted_iou"] >= t and a["stability_score"] >= s)
    assert 0 < len(strict) < len(anns) and sorted((a["image_id"], a["predicted_iou"]) for a in strict) == expected
    assert all(a["predicted_iou"] >= t and a["stability_score"] >= s for a in strict)
    code, out, _ = run_engine(capsys, "auto", auto_images, "--out", tmp_path / "w", "--model-type", "vit_small",
                              *AUTO_LOOSE[:2], "--pred-iou-thresh", t, "--stability-score-thresh", s,
                              "--box-nms-thresh", "1.0")
    assert code == 0 and "3 already done, 0 to segment" in out  # a rerun resumes


def test_engine_auto_uses_the_current_round_and_skips_labelled_images(auto_images, tmp_path, capsys):
    work = tmp_path / "work"
    start_round(work, ModelRef("vit_small"), ["a.png"])
    code, _, err = run_engine(capsys, "auto", auto_images, "--out", work, *AUTO_LOOSE)
    assert code == 2 and "has no complete round" in err  # round 0 lacks its metrics: never taken
    finish_round(work, 0, {})
    code, out, _ = run_engine(capsys, "auto", auto_images, "--out", work, *AUTO_LOOSE)
    assert code == 0 and "1 labelled" in out
    coco = json.loads((work / "auto" / "round-0" / "annotations.json").read_text())
    assert [im["file_name"] for im in coco["images"]] == ["b.png", "c.png"]
    code, _, err = run_engine(capsys, "auto", auto_images, "--out", work, "--model-type", "vit_b")
    assert code == 2 and "has round 0, whose model the automatic stage uses; drop --model-type" in err
    code, out, _ = run_engine(capsys, "status", work)
    assert code == 0 and "round 0" in out and "complete" in out and "current round: 0" in out


def test_engine_auto_bad_input_exits_2(auto_images, tmp_path, capsys):
    code, _, err = run_engine(capsys, "auto", auto_images, "--out", tmp_path / "w")
    assert code == 2 and "give the model with --model-type" in err
    code, _, err = run_engine(capsys, "auto", auto_images, "--out", tmp_path / "w", "--model-type", "vit_small",
                              "--pred-iou-thresh", "1.5")
    assert code == 2 and "--pred-iou-thresh must be a number in [0.0, 1.0], got 1.5" in err
    code, _, err = run_engine(capsys, "auto", tmp_path / "missing", "--out", tmp_path / "w", "--model-type",
                              "vit_small")
    assert code == 2 and "images folder not found" in err


# ---------------------------------------------------------------- engine simulate

SIM = ["--data", "synthetic:6:64", "--images-per-round", "2", "--model-type", "vit_small", "--held-out", "2",
       "--retrain-steps", "2", "--lr", "1e-3", "--retrain-val-share", "0", "--points-per-side", "4"]
ROUND_KEYS = {"round": int, "stage": str, "images": int, "objects": int, "clicks_per_object": float,
              "clicked_objects": int, "hand_finished": int, "accepted_proposals": int, "proposals_shown": int, "accepted_share": float,
              "seconds_per_image": float, "annotate_seconds": float, "retrain_seconds": float,
              "retrain_images": int, "retrain_val_images": int, "retrain_steps_done": int, "retrain_kept_step": int,
              "retrain_loss_first": float, "retrain_loss_last": float, "retrain_val_losses": list,
              "retrain_mode": str, "retrain_trainable": int,
              "heldout_miou_box": float, "heldout_miou_point": float, "heldout_miou_at_clicks": dict,
              "heldout_noc85": float, "heldout_clicks_per_object": float, "eval_seconds": float, "auto": dict,
              "auto_seconds": float}
MEASURED = {"heldout_miou_box", "heldout_miou_point", "heldout_miou_at_clicks", "heldout_noc85",
            "heldout_clicks_per_object", "eval_seconds", "auto", "auto_seconds"}
# (MEASURED: each round's measurements on the held-out images, the base's (round 0) too)
AUTO_KEYS = {"pseudo_labels", "objects", "per_image", "precision@0.5", "recall@0.5", "precision@0.75", "recall@0.75"}


def decoder_weights(path: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in torch.load(path, weights_only=True)["model"].items() if k.startswith("mask_decoder.")}


@pytest.fixture(scope="module")
def sim_run(tmp_path_factory) -> dict:
    """One round, then a rerun asking for two: the second run continues after round 1."""
    work = tmp_path_factory.mktemp("engine_sim") / "work"
    assert main(["engine", "simulate", *SIM, "--rounds", "1", "--out", str(work)]) == 0
    first = {f: (work / "rounds" / "1" / f).read_bytes() for f in ("metrics.json", "model.pt")}
    assert main(["engine", "simulate", *SIM, "--rounds", "2", "--out", str(work)]) == 0
    return {"work": work, "round1": first}


def test_simulate_writes_rounds_json_and_png(sim_run):
    work = sim_run["work"]
    summary = json.loads((work / "rounds.json").read_text())
    assert summary["data"] == "synthetic:6:64" and summary["held_out"] == ["synthetic:4", "synthetic:5"]
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2] and [r["stage"] for r in rounds] == ["base", "assisted", "semi"]
    for r in rounds[1:]:
        assert set(r) == set(ROUND_KEYS)
        for key, kind in ROUND_KEYS.items():
            assert isinstance(r[key], kind) or (kind is float and isinstance(r[key], int)), (key, r[key])
        assert r["images"] == 2 and r["objects"] >= 2
        assert 1.0 <= r["clicks_per_object"] <= 20.0 and 0.0 <= r["heldout_miou_box"] <= 1.0
        assert r["accepted_share"] == r["accepted_proposals"] / r["objects"]
    assert set(rounds[0]) == {"round", "stage", *MEASURED}
    for r in rounds:
        assert set(r["auto"]) == AUTO_KEYS and r["auto"]["objects"] == sum(
            len(open_dataset("synthetic:6:64")[i].masks) for i in (4, 5))
        assert set(r["heldout_miou_at_clicks"]) == {"1", "2", "3", "5", "9"}
    for r in rounds[1:]:  # no validation share: every labelled image trains, every step is kept
        assert r["retrain_val_images"] == 0 and r["retrain_images"] == 2 * r["round"]
        assert r["retrain_kept_step"] == r["retrain_steps_done"] == 2 and r["retrain_val_losses"] == []
    assert set(summary["seconds"]) == {"annotate_seconds", "retrain_seconds", "eval_seconds", "auto_seconds", "total"}
    assert (work / "rounds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [r.metrics for r in list_rounds(work)] == rounds  # rounds.json sums up the rounds' own metrics
    assert list_rounds(work)[2].images == ("synthetic:0", "synthetic:1", "synthetic:2", "synthetic:3")
    assert len(list((work / "labels").glob("*.npz"))) == 4


def test_simulate_retrain_changes_the_decoder_only(sim_run):
    work = sim_run["work"]
    base = load_model_ref(ModelRef("vit_small"), seed=0).state_dict()
    one = torch.load(work / "rounds" / "1" / "model.pt", weights_only=True)["model"]
    two = decoder_weights(work / "rounds" / "2" / "model.pt")
    assert any(not torch.equal(one[k], base[k]) for k in two)  # round 1 retrained the base's decoder
    assert any(not torch.equal(two[k], one[k]) for k in two)  # round 2 retrained round 1's
    assert all(torch.equal(one[k], base[k]) for k in base if k.startswith("image_encoder."))  # the encoder is frozen
    model = load_model_ref(current_round(work).model.resolved(current_round(work).folder))
    assert all(torch.equal(v, two[k]) for k, v in model.state_dict().items() if k in two)


def test_simulate_resumes_after_the_last_complete_round(sim_run, capsys):
    work = sim_run["work"]
    for name, data in sim_run["round1"].items():  # the rerun asking for 2 rounds left round 1 as it was
        assert (work / "rounds" / "1" / name).read_bytes() == data
    (work / "rounds" / "2" / "metrics.json").unlink()  # a kill before round 2 finished
    code, out, _ = run_engine(capsys, "simulate", *SIM, "--rounds", "2", "--out", work)
    assert code == 0 and "round 2 (semi)" in out and "round 1" not in out and "round 0" not in out
    assert [r.index for r in list_rounds(work) if r.complete] == [0, 1, 2]
    code, out, _ = run_engine(capsys, "simulate", *SIM, "--rounds", "2", "--out", work)
    assert code == 0 and "round 2 (" not in out  # all done: nothing rerun
    code, _, err = run_engine(capsys, "simulate", *SIM[:-2], "--points-per-side", "8", "--rounds", "2", "--out", work)
    assert code == 2 and "points_per_side differ" in err


def test_label_image_counts_accepted_proposals():
    scene = make_scene(3, image_size=(48, 64), num_objects=3)
    sample = Sample(scene.image, scene.masks, "scene")
    predictor = SamPredictor(build_sam("vit_small"))
    predictor.set_image(scene.image)
    proposals = [record(scene.masks[1], 0.99, 0.99),  # the true object 1: accepted
                 record(box_mask(0, 0, 3, 3, 48, 64), 0.99, 0.99),  # matches nothing: shown, rejected
                 record(scene.masks[2], 0.5, 0.99)]  # not confident: never shown
    labels = label_image(predictor, sample, proposals)
    assert labels.from_proposals == 1 and labels.proposals_shown == 2
    assert labels.clicks[1] == 0 and labels.clicks[0] >= 1 and labels.clicks[2] >= 1
    assert np.array_equal(labels.masks[1], scene.masks[1]) and labels.masks.shape == scene.masks.shape
    plain = label_image(predictor, sample)  # assisted stage: every object clicked
    assert plain.from_proposals == 0 and plain.proposals_shown == 0 and min(plain.clicks) >= 1
    # random weights never reach IoU 0.85 in 20 clicks: each clicked object is finished by hand (its true mask)
    assert plain.hand_finished == 3 and labels.hand_finished == 2 and plain.clicks == [20, 20, 20]
    assert np.array_equal(plain.masks, scene.masks)


def test_simulate_counts_accepted_proposals_per_round(tmp_path, monkeypatch):
    data = open_dataset("synthetic:5:64")
    truth = {data[i].image.tobytes(): data[i].masks for i in range(len(data))}

    class TruthProposals:  # a generator proposing every true object but the first, confidently
        def __init__(self, model, **kwargs) -> None:
            pass

        def generate(self, image: np.ndarray) -> list[dict]:
            return [record(m, 0.99, 0.99) for m in truth[image.tobytes()][1:]]

    monkeypatch.setattr("samforge.engine.simulate.SamAutomaticMaskGenerator", TruthProposals)
    settings = SimulateSettings(rounds=1, images_per_round=2, held_out=1, semi_from=1, retrain_steps=1)
    (r0, r1) = simulate(data, "synthetic:5:64", tmp_path / "w", ModelRef("vit_small"), settings, log=lambda s: None)
    objects = sum(len(data[i].masks) for i in range(2))
    assert r1["stage"] == "semi" and r1["objects"] == objects
    assert r1["accepted_proposals"] == objects - 2 and r1["clicked_objects"] == 2
    assert r1["accepted_share"] == (objects - 2) / objects


def test_simulate_bad_input_exits_2(tmp_path, capsys):
    for flags, said in ((["--rounds", "0"], "rounds must be an int >= 1, got 0"),
                        (["--rounds", "1", "--images-per-round", "0"], "images_per_round must be an int >= 1, got 0"),
                        (["--rounds", "3", "--images-per-round", "2"], "data has 6 images, but 3 rounds x 2 images + "
                                                                         "2 held out need 8")):
        code, _, err = run_engine(capsys, "simulate", *SIM, *flags, "--out", tmp_path / "w")
        assert code == 2 and said in err, err
    images = tmp_path / "no_truth"
    (images / "images").mkdir(parents=True)
    Image.fromarray(make_scene(0, image_size=(32, 32)).image).save(images / "images" / "a.png")
    code, _, err = run_engine(capsys, "simulate", *SIM, "--rounds", "1", "--data", images, "--out", tmp_path / "w")
    assert code == 2 and "the simulation needs images with ground-truth masks" in err, err
    code, _, err = run_engine(capsys, "simulate", "--rounds", "1", "--images-per-round", "1", "--out", tmp_path / "w")
    assert code == 2 and "give the base model with --model-type and/or --checkpoint" in err
    assert not (tmp_path / "w").exists()  # bad input leaves no folder behind
    with pytest.raises(ValueError, match="ground-truth masks"):
        simulate([Sample(np.zeros((32, 32, 3), np.uint8), np.zeros((0, 32, 32), bool), "empty")] * 3, "list",
                 tmp_path / "x", ModelRef("vit_small"), SimulateSettings(rounds=1, images_per_round=1, held_out=1))


def test_retrain_decoder_keeps_the_recorded_objective_and_rejects_bad_input(tmp_path):
    scene = make_scene(1, image_size=(64, 64), num_objects=2)
    samples = [Sample(scene.image, scene.masks, "s")]
    model = build_sam("vit_small")
    config = {"loss": {"focal": 0.5, "dice": 1.0, "iou": 1.0, "resolution": "low_res"},
              "prompts": {"source": "stored", "correction_rounds": 0, "mask_only_rounds": 0}}
    losses = retrain_decoder(model, samples, 1, tmp_path / "cache", train_config=config)
    assert len(losses) == 1 and np.isfinite(losses[0]) and not model.training
    for kwargs, error, said in (({"steps": 0}, ValueError, "steps must be an int >= 1"),
                                ({"train_config": ["loss"]}, TypeError, "train_config must be a dict"),
                                ({"train_config": {"loss": 3}}, ValueError, r"train_config\['loss'\] must be a dict")):
        with pytest.raises(error, match=said):
            retrain_decoder(model, samples, **{"steps": 1, "cache_dir": tmp_path / "cache", **kwargs})
    with pytest.raises(TypeError, match="must be a samforge Sam"):
        retrain_decoder(torch.nn.Linear(2, 2), samples, 1, tmp_path / "cache")
    with pytest.raises(ValueError, match="non-empty list of Sample"):
        retrain_decoder(model, [], 1, tmp_path / "cache")


def test_pseudo_label_scores_match_one_to_one():
    a, b, c = box_mask(0, 0, 10, 10), box_mask(20, 20, 30, 30), box_mask(0, 20, 8, 30)
    half = box_mask(0, 0, 10, 6)  # IoU 0.6 with a
    # image 1: a found exactly, a found again (a duplicate: the object is already claimed), half of b's neighbour;
    # image 2: nothing proposed for its one object
    images = [([a, a.copy(), half, c], [a, b]), ([], [c])]
    scores = pseudo_label_scores(images)
    assert scores["pseudo_labels"] == 4 and scores["objects"] == 3
    assert scores["precision@0.5"] == 1 / 4 and scores["recall@0.5"] == 1 / 3  # c is not a true object of image 1
    assert match_count([half], [a], 0.5) == 1 and match_count([half], [a], 0.75) == 0
    assert match_count([a, half], [a], 0.5) == 1  # one true object matches one pseudo-label
    assert iou_matrix(np.stack([a, half]), np.stack([a]))[:, 0].tolist() == pytest.approx([1.0, 0.6])
    empty = pseudo_label_scores([([], [a])])
    assert empty["precision@0.75"] is None and empty["recall@0.75"] == 0.0
    with pytest.raises(ValueError, match="threshold must be a number in"):
        match_count([a], [a], 0.0)
    with pytest.raises(ValueError, match="both must be of the image's size"):
        match_count([a], [box_mask(0, 0, 2, 2, 16, 16)], 0.5)
    with pytest.raises(ValueError, match=r"images\[0\] must be a \(pseudo-labels, true masks\) pair"):
        pseudo_label_scores([(a,)])
    with pytest.raises(ValueError, match="K x H x W bool"):
        match_count([a.astype(np.uint8)], [a], 0.5)


def test_run_retrain_keeps_the_weights_that_validate_best(tmp_path):
    data = open_dataset("synthetic:3:64")
    train, val = [data[0], data[1]], [data[2]]
    model = build_sam("vit_small")
    before = {k: v.clone() for k, v in model.mask_decoder.state_dict().items()}
    result = run_retrain(model, train, 4, tmp_path / "cache", lr=3e-2, recipe="medsam", val_samples=val, val_every=2)
    assert [s for s, _ in result.val_losses] == [0, 2, 4] and result.steps_done == 4
    best_step, best_loss = min(result.val_losses, key=lambda t: t[1])
    assert result.kept_step == best_step
    after = model.mask_decoder.state_dict()
    unchanged = all(torch.equal(before[k], after[k]) for k in before)
    assert unchanged == (best_step == 0)
    # the kept weights are the ones that scored: validating them again gives the recorded loss
    again = run_retrain(model, train, 1, tmp_path / "cache", lr=1e-12, recipe="medsam", val_samples=val)
    assert again.val_losses[0][1] == pytest.approx(best_loss, rel=1e-5)


def test_run_retrain_budget_and_schedule_settings(tmp_path):
    data = open_dataset("synthetic:2:64")
    model = build_sam("vit_small")
    capped = run_retrain(model, [data[0]], 50, tmp_path / "cache", max_seconds=1e-9)
    assert capped.steps_done == 1 and capped.kept_step == 1 and capped.val_losses == []  # the budget stops it
    full = run_retrain(model, list(data), 3, tmp_path / "cache", warmup_steps=2, min_lr_ratio=0.1, recipe="medsam")
    assert full.steps_done == 3 and full.seconds > 0
    for kwargs, said in (({"warmup_steps": -1}, "warmup_steps must be an int >= 0"),
                         ({"min_lr_ratio": 0.0}, "min_lr_ratio must be a number > 0.0 and <= 1.0"),
                         ({"max_seconds": 0}, "max_seconds must be a number > 0.0"),
                         ({"val_every": 0}, "val_every must be an int >= 1"),
                         ({"recipe": "nope"}, "unknown recipe 'nope'"),
                         ({"val_samples": [3]}, "val_samples must be a list of Sample")):
        with pytest.raises(ValueError, match=said):
            run_retrain(model, [data[0]], 1, tmp_path / "cache", **kwargs)
    with pytest.raises(ValueError, match="retrain_val_share must be a number in"):
        SimulateSettings(rounds=1, images_per_round=1, retrain_val_share=1.0)
