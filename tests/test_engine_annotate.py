"""The data engine's human loop (``samforge engine annotate`` / ``engine retrain``): proposals in the annotator
(strict filter, minus accepted objects, cached per round, accept / reject / accept all), the retrain job (failures
keep the model and say why, one at a time, a killed round resumes) and the hot swap (the next click uses the new
round's weights). Tiny random vit_small models and 96x128 synthetic scenes; proposals come from the scenes' true
masks through the app's proposal-source seam (a random model has no confident mask)."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from samforge.cli.engine_annotate import base_round, parse_base
from samforge.cli.main import main
from samforge.data.synthetic import make_scene
from samforge.engine import retrain_job
from samforge.engine.retrain_job import RetrainBusy, RetrainSettings, retrain_round, split_labelled, work_lock
from samforge.engine.round_model import load_model_ref
from samforge.engine.rounds import ModelRef, current_round, list_rounds, start_round
from samforge.predict.predictor import SamPredictor
from samforge.serve import create_app
from samforge.serve.engine_session import EngineSession
from samforge.serve.guard import TOKEN_HEADER
from samforge.serve.images import ImageFolder
from samforge.serve.labelled import labelled_samples
from samforge.serve.proposals import strict_source
from samforge.serve.store import AnnotationStore, mask_to_rle
from test_annotate_api import page_client

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]
TestClient = pytest.importorskip("fastapi.testclient").TestClient

HW = (96, 128)
NAMES = ("s0.png", "s1.png", "s2.png")
BASE = ModelRef("vit_small")
STEPS = 2


def scenes():
    return [make_scene(i, image_size=HW) for i in range(len(NAMES))]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("engine") / "images"
    folder.mkdir()
    for name, sc in zip(NAMES, scenes()):
        Image.fromarray(sc.image).save(folder / name)
    return folder


class TruthSource:
    """Proposals from the scenes' true masks (confident), plus one unconfident mask the strict filter must drop."""

    def __init__(self) -> None:
        self.by_image = {sc.image.tobytes(): sc.masks for sc in scenes()}
        self.calls = 0

    def __call__(self, model, image: np.ndarray) -> list[dict]:
        self.calls += 1
        masks = self.by_image[image.tobytes()]
        records = [{"segmentation": m, "predicted_iou": 0.95, "stability_score": 0.97, "area": int(m.sum()),
                    "bbox": [0, 0, 1, 1]} for m in masks]
        low = np.zeros(HW, bool)
        low[:10, :10] = True
        return records + [{"segmentation": low, "predicted_iou": 0.5, "stability_score": 0.99, "area": 100,
                           "bbox": [0, 0, 10, 10]}]


@pytest.fixture()
def work(tmp_path) -> Path:
    w = tmp_path / "work"
    assert base_round(w, BASE) == 0
    return w


@pytest.fixture()
def make_client(images, work):
    """``make(stage, source, steps)``: a client of an engine annotator on ``work``, closed after the test."""
    with contextlib.ExitStack() as opened:
        def make(stage: str = "semi", source=None, steps: int = STEPS) -> TestClient:
            session = EngineSession(work, stage, retrain=RetrainSettings(steps=steps),
                                    proposal_source=source or TruthSource(), say=lambda m: None)
            app = create_app(load_model_ref(BASE), images, work, ["cell", "other"], model_name="vit_small round 0",
                             engine=session)
            return opened.enter_context(page_client(app))

        yield make


def decode(rle: dict) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def proposals(client, name="s0.png") -> dict:
    r = client.post(f"/api/images/{name}/proposals", json={})
    assert r.status_code == 200, r.text
    return r.json()


def wait_retrain(client, timeout: float = 120) -> dict:
    client.app.state.annotator  # noqa: B018 - the app is up
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = client.get("/api/engine/retrain").json()
        if status["state"] != "running":
            return status
        time.sleep(0.05)
    pytest.fail(f"the retrain did not finish in {timeout} s: {status}")


def accept_truth(client, name: str, k: int) -> dict:
    truth = scenes()[NAMES.index(name)].masks[k]
    r = client.post(f"/api/images/{name}/objects", json={"label": "cell", "segmentation": mask_to_rle(truth)})
    assert r.status_code == 200, r.text
    return r.json()["object"]


def saved_samples(work: Path, images: Path, name: str) -> list:
    """Image ``name``'s first true object saved as a label in ``work`` (the annotator's store), read back as the
    retrain's samples."""
    store = AnnotationStore(work, ImageFolder(images), ["cell"])
    store.add_object(name, scenes()[NAMES.index(name)].masks[0], "cell")
    return labelled_samples(store)


# ------------------------------------------------------------------------------------------ proposals
def test_proposals_strict_cached_per_round_and_minus_accepted(make_client, work):
    source = TruthSource()
    client = make_client(source=source)
    cfg = client.get("/api/config").json()
    assert cfg["engine"]["round"] == 0 and cfg["engine"]["stage"] == "semi"
    first = proposals(client)
    truth = scenes()[0].masks
    assert first["round"] == 0 and not first["cached"] and source.calls == 1
    assert len(first["proposals"]) == len(truth)  # the unconfident mask is filtered out
    assert all(p["score"] >= 0.9 and p["stability_score"] >= 0.95 for p in first["proposals"])
    assert (work / "proposals" / "round-0" / "s0.json").is_file()
    again = proposals(client)
    assert again["cached"] and source.calls == 1 and again["proposals"] == first["proposals"]

    accept_truth(client, "s0.png", 0)  # the person clicked object 0: its proposal is no longer shown
    shown = [decode(p["mask"]) for p in proposals(client)["proposals"]]
    assert len(shown) == len(truth) - 1 and all(iou(m, truth[0]) <= 0.5 for m in shown)


def test_accept_reject_and_accept_all(make_client, work):
    client = make_client()
    listed = proposals(client)["proposals"]
    a, b = listed[0]["id"], listed[1]["id"]
    r = client.post(f"/api/images/s0.png/proposals/{a}/accept", json={"label": "other"})
    assert r.status_code == 200, r.text
    obj = r.json()["object"]
    assert obj["source"] == "proposal" and obj["label"] == "other" and obj["prompts"]["proposal"] == a
    assert r.json()["objects"] == 1
    # a proposal never replaces an accepted object: accepting it again is refused
    r = client.post(f"/api/images/s0.png/proposals/{a}/accept", json={"label": "cell"})
    assert r.status_code == 409 and "never replaces an accepted object" in r.json()["detail"]
    r = client.post(f"/api/images/s0.png/proposals/{b}/reject", json={})
    assert r.status_code == 200 and r.json() == {"rejected": b}
    ids = [p["id"] for p in proposals(client)["proposals"]]
    assert a not in ids and b not in ids and len(ids) == len(listed) - 2
    saved = json.loads((work / "proposals" / "rejected" / "s0.json").read_text())
    assert [p["id"] for p in saved["proposals"]] == [b]

    r = client.post("/api/images/s0.png/proposals/accept-all", json={"label": "cell"})
    assert r.status_code == 200, r.text
    assert [o["prompts"]["proposal"] for o in r.json()["accepted"]] == ids and r.json()["skipped"] == []
    doc = json.loads((work / "annotations" / "s0.json").read_text())
    assert len(doc["objects"]) == len(listed) - 1  # all but the rejected one
    assert proposals(client)["proposals"] == []

    # a fresh annotator on the same WORK: the decisions hold, nothing is computed again
    source = TruthSource()
    other = make_client(source=source)
    assert proposals(other)["proposals"] == [] and source.calls == 0


@pytest.mark.parametrize("path, body, status, said", [
    ("/api/images/s0.png/proposals/0-99/accept", {"label": "cell"}, 404, "no proposal"),
    ("/api/images/s0.png/proposals/nope/reject", {}, 404, "no proposal"),
    ("/api/images/s0.png/proposals/0-0/accept", {"label": "dog"}, 422, "label must be one of"),
    ("/api/images/s0.png/proposals/0-0/accept", {}, 422, "label: Field required"),
    ("/api/images/nope.png/proposals", {}, 404, "no image named"),
    ("/api/engine/retrain", {"steps": 0}, 422, "steps"),
    ("/api/engine/retrain", {"mode": "everything"}, 422, "mode"),
])
def test_bad_requests_say_what_was_expected(make_client, path, body, status, said):
    client = make_client()
    proposals(client)
    r = client.post(path, json=body)
    assert r.status_code == status and said in r.json()["detail"], r.text


def test_new_post_routes_are_guarded(make_client):
    client = make_client()
    bare = TestClient(client.app)
    for path in ("/api/images/s0.png/proposals", "/api/engine/retrain", "/api/images/s0.png/proposals/accept-all",
                 "/api/images/s0.png/proposals/0-0/reject"):
        r = bare.post(path, json={}, headers={"Content-Type": "application/json"})
        assert r.status_code == 403 and "X-Samforge-Token" in r.json()["detail"], path
        r = bare.post(path, json={}, headers={TOKEN_HEADER: client.app.state.token, "Origin": "http://evil.example"})
        assert r.status_code == 403 and "cross-origin" in r.json()["detail"], path


def test_assisted_stage_has_no_proposals(make_client):
    client = make_client(stage="assisted")
    r = client.post("/api/images/s0.png/proposals", json={})
    assert r.status_code == 400 and "semi" in r.json()["detail"]


def test_sam_and_sam2_proposals_from_the_strict_source():
    """Proposals work for SAM and SAM 2: the source runs SamAutomaticMaskGenerator / SAM2AutomaticMaskGenerator
    (thresholds lowered here, since a random model is never confident; the defaults stay strict)."""
    import torch
    from sam2_oracle import SMALL_OVERRIDES

    from samforge.models.sam2 import build_sam2

    torch.manual_seed(0)
    sam2 = build_sam2("sam2.1_hiera_t", None, device="cpu", hydra_overrides_extra=list(SMALL_OVERRIDES)).eval()
    source = strict_source(2, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    for model in (sam2, load_model_ref(BASE)):
        records = source(model, scenes()[0].image)
        assert len(records) > 0 and all(r["segmentation"]["size"] == list(HW) for r in records)
    assert strict_source(2)(load_model_ref(BASE), scenes()[0].image) == []  # the strict default: none confident
    with pytest.raises(ValueError, match="points_per_side"):
        strict_source(0)


# -------------------------------------------------------------------------------------------- retrain
def test_retrain_without_labels_fails_and_keeps_the_model(make_client, work):
    client = make_client()
    model = client.app.state.annotator.model
    r = client.post("/api/engine/retrain", json={})
    assert r.status_code == 202, r.text
    status = wait_retrain(client)
    assert status["state"] == "failed" and "no labelled image yet" in status["error"]
    assert client.app.state.annotator.model is model and current_round(work).index == 0
    assert client.get("/api/engine").json()["round"] == 0
    assert [r.index for r in list_rounds(work)] == [0]


def test_failed_retrain_keeps_model_says_why_and_leaves_no_round(make_client, work, monkeypatch):
    client = make_client()
    accept_truth(client, "s0.png", 0)
    model = client.app.state.annotator.model

    def broken(**kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(retrain_job, "run_retrain", broken)
    assert client.post("/api/engine/retrain", json={}).status_code == 202
    status = wait_retrain(client)
    assert status["state"] == "failed" and status["error"].startswith("out of memory")
    assert client.app.state.annotator.model is model and current_round(work).index == 0
    assert [r.index for r in list_rounds(work)] == [0]  # round 1 was moved aside, never current
    assert [p.name.split("-")[0] for p in (work / "rounds").iterdir() if not p.name.isdigit()] == ["1.failed"]


def test_two_retrains_at_once_run_one_and_the_next_click_uses_the_new_weights(make_client, work, images):
    client = make_client(steps=3)
    for k in range(2):
        accept_truth(client, "s0.png", k)
    accept_truth(client, "s1.png", 0)
    point = {"points": [{"x": 60, "y": 40, "label": 1}]}
    before = client.post("/api/images/s0.png/predict", json=point).json()

    first = client.post("/api/engine/retrain", json={})
    second = client.post("/api/engine/retrain", json={"steps": 5})
    assert first.status_code == 202 and first.json()["state"] == "running"
    assert second.status_code == 409 and "already running" in second.json()["detail"]
    status = wait_retrain(client)
    assert status["state"] == "done" and status["round"] == 1, status
    assert [r.index for r in list_rounds(work)] == [0, 1]
    done = current_round(work)
    assert done.index == 1 and set(done.images) == {"s0.png", "s1.png"} and (done.folder / "model.pt").is_file()
    assert done.metrics["steps_done"] == 3 and len(done.metrics["heldout_images"]) == 1
    assert {"miou_box", "miou_point", "noc85"} <= set(done.metrics["heldout_after"])
    engine = client.get("/api/engine").json()
    assert engine["round"] == 1 and engine["model"] == "vit_small round 1"

    # hot swap: the next click's mask is what a predictor on round 1's weights gives, not round 0's
    after = client.post("/api/images/s0.png/predict", json=point).json()
    predictor = SamPredictor(load_model_ref(done.model.resolved(done.folder)))
    predictor.set_image(np.asarray(Image.open(images / "s0.png").convert("RGB")))
    masks, scores, _ = predictor.predict(np.array([[60.0, 40.0]]), np.array([1]), multimask_output=True)
    best = int(np.argmax(scores))
    assert after["score"] == pytest.approx(float(scores[best]), abs=1e-4)
    assert (decode(after["mask"]) == masks[best]).mean() > 0.999
    assert after["score"] != pytest.approx(before["score"], abs=1e-6)


def test_cli_retrain_writes_the_next_round_and_a_running_annotator_switches(make_client, work, capsys):
    client = make_client(stage="assisted")
    accept_truth(client, "s2.png", 0)
    with work_lock(work):  # a retrain running elsewhere: refused in one line
        assert main(["engine", "retrain", str(work), "--steps", "2"]) == 2
    assert "already running" in capsys.readouterr().err
    assert main(["engine", "retrain", str(work), "--steps", "2"]) == 0
    assert "round 1 is WORK's current model" in capsys.readouterr().out
    r1 = current_round(work)
    assert r1.index == 1 and r1.images == ("s2.png",) and r1.metrics["heldout_images"] == []
    assert client.get("/api/engine").json()["round"] == 1  # the page's status poll picks the new round up
    assert client.app.state.annotator.model_name == "vit_small round 1"


def test_retrain_round_errors_lock_and_killed_round(work, images):
    with pytest.raises(ValueError, match="no complete round"):
        retrain_round(work.parent / "empty", [])
    with pytest.raises(ValueError, match="no labelled image yet"):
        retrain_round(work, [])
    with pytest.raises(TypeError, match="Sample"):
        retrain_round(work, ["s0.png"])
    lock = work_lock(work)
    lock.acquire()
    try:
        with pytest.raises(RetrainBusy, match="already running"):
            retrain_round(work, [])
    finally:
        lock.release()

    samples = saved_samples(work, images, "s1.png")
    assert [s.name for s in samples] == ["s1.png"] and samples[0].masks.shape == (1, *HW)
    # a killed retrain on other labels: its half-written round is moved aside, round 1 is made again
    start_round(work, ModelRef("vit_small", "model.pt"), ["s0.png"])
    said = []
    done = retrain_round(work, samples, RetrainSettings(steps=1), say=said.append)
    assert done.index == 1 and done.complete and any("killed" in s for s in said)
    # a killed retrain on the same labels is resumed in its folder
    start_round(work, ModelRef("vit_small", "model.pt"), ["s1.png"])
    said.clear()
    done = retrain_round(work, samples, RetrainSettings(steps=1), say=said.append)
    assert done.index == 2 and done.complete and any(s.startswith("resuming round 2") for s in said)


def test_split_and_settings_checks(tmp_path):
    assert split_labelled(["a"], 0.2, 0, tmp_path) == (["a"], [])
    train, val = split_labelled(["b", "a"], 0.2, 0, tmp_path)
    assert len(val) == 1 and sorted(train + val) == ["a", "b"]
    names = [f"n{i}" for i in range(10)]
    train, val = split_labelled(names, 0.2, 0, tmp_path)
    assert len(val) == 2 and not set(train) & set(val)
    assert split_labelled(names, 0.2, 0, tmp_path) == (train, val)  # seeded
    for bad, said in (({"mode": "partial"}, "one of full, decoder, lora"), ({"steps": 0}, "steps"),
                      ({"held_out": 1.0}, "held_out"), ({"lr": -1.0}, "lr"), ({"device": "gpu9"}, "device"),
                      ({"recipe": "clicky"}, "known recipes: default, sam")):
        with pytest.raises(ValueError, match=said):
            RetrainSettings(**bad)


def test_parse_base_and_base_round(tmp_path):
    assert parse_base("vit_b") == ModelRef("vit_b", None)
    assert parse_base("vit_b:sam_vit_b") == ModelRef("vit_b", "sam_vit_b")
    assert parse_base("sam2.1_hiera_t:sam2.1_hiera_tiny") == ModelRef("sam2.1_hiera_t", "sam2.1_hiera_tiny")
    assert parse_base("sam_vit_b") == ModelRef("vit_b", "sam_vit_b")  # an official name implies its type
    assert parse_base(str(tmp_path / "mine.pt")) == ModelRef(None, str(tmp_path / "mine.pt"))
    with pytest.raises(ValueError, match="checkpoint path after the colon"):
        parse_base("vit_b:")
    with pytest.raises(ValueError, match="adapter"):
        parse_base("vit_b", str(tmp_path / "missing.safetensors"))
    w = tmp_path / "w"
    with pytest.raises(ValueError, match="--base"):
        base_round(w, None)
    assert base_round(w, ModelRef("vit_small")) == 0 and base_round(w, None) == 0
    assert current_round(w).model == ModelRef("vit_small") and current_round(w).images == ()
    with pytest.raises(ValueError, match="another base model"):
        base_round(w, ModelRef("vit_b"))


def test_cli_engine_annotate_records_round0_and_serves_the_engine(images, tmp_path, monkeypatch, capsys):
    import samforge.serve.server as server

    served = []
    monkeypatch.setattr(server, "serve", lambda app, host, port, allow_remote=False: served.append((app, host)))
    w = tmp_path / "w"
    args = ["engine", "annotate", str(images), "--out", str(w), "--stage", "semi", "--labels", "cell,other"]
    assert main([*args, "--base", "vit_small"]) == 0
    app, host = served[-1]
    assert host == "127.0.0.1"
    with TestClient(app, base_url="http://127.0.0.1") as client:  # the Host header a loopback bind accepts
        cfg = client.get("/api/config").json()
        assert cfg["engine"]["round"] == 0 and cfg["engine"]["stage"] == "semi" and cfg["model"] == "vit_small round 0"
        assert cfg["labels"] == ["cell", "other"]
    assert current_round(w).model == ModelRef("vit_small") and current_round(w).index == 0
    assert json.loads((w / "engine.json").read_text())["images_dir"] == str(images.resolve())
    assert main(args) == 0 and len(served) == 2  # the next run goes on with WORK's round, no --base needed
    assert main([*args, "--base", "vit_b"]) == 2
    assert "another base model" in capsys.readouterr().err
    assert main(["engine", "annotate", str(images), "--out", str(tmp_path / "new")]) == 2
    assert "--base" in capsys.readouterr().err


def test_a_round_whose_model_cannot_load_keeps_the_current_model(make_client, work):
    from samforge.engine.rounds import finish_round

    client = make_client(stage="assisted")
    model = client.app.state.annotator.model
    start_round(work, ModelRef("vit_small", str(work / "missing.pt")), ["s0.png"])
    finish_round(work, 1, {"round": 1})
    engine = client.get("/api/engine").json()
    assert engine["round"] == 0 and "round 1's model could not be loaded" in engine["swap_error"]
    assert client.app.state.annotator.model is model
    assert client.get("/api/engine").json()["round"] == 0  # said once, not retried on every poll


def test_adapter_taken_directly_and_folded_into_the_next_round(images, tmp_path, monkeypatch):
    """``--adapter F`` on the base: the annotator's model is base + adapter (no merge step); a retrain folds the
    adapter into round 1's plain checkpoint."""
    import torch

    import samforge.serve.server as server
    from samforge.models.lora import LORA_KEY, LoraConfig, add_lora, has_lora
    from samforge.train.adapter_file import save_adapter, weights_fingerprint

    base = load_model_ref(BASE)
    fingerprint = weights_fingerprint(base)
    add_lora(base, LoraConfig(rank=2))
    with torch.no_grad():
        for name, p in base.named_parameters():
            if LORA_KEY in name:
                p.add_(0.01)  # adapters that change the output
    adapter = save_adapter(tmp_path / "a.safetensors", base, LoraConfig(rank=2), fingerprint, "vit_small")
    served = []
    monkeypatch.setattr(server, "serve", lambda app, host, port, allow_remote=False: served.append(app))
    w = tmp_path / "w"
    assert main(["engine", "annotate", str(images), "--out", str(w), "--base", "vit_small", "--adapter",
                 str(adapter)]) == 0
    model = served[0].state.annotator.model
    assert has_lora(model) and current_round(w).model.adapter == str(adapter.resolve())
    expected = base.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())

    done = retrain_round(w, saved_samples(w, images, "s0.png"), RetrainSettings(steps=1), say=lambda m: None)
    folded = load_model_ref(done.model.resolved(done.folder))
    assert done.model.adapter is None and not has_lora(folded)
