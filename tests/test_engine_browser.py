"""``samforge engine annotate --stage semi`` in headless Chromium (Debian's /usr/bin/chromium driven by
Playwright): the page opens an image with the model's proposals drawn, the person accepts one (y) and rejects one
(x), presses Retrain, and the model version shown changes to the new round, whose proposals then load. A tiny random
vit_small; proposals come from the scenes' true masks through the app's proposal-source seam (a random model has no
confident mask). Fails, not skips, without Chromium or Playwright (see tests/test_annotate_browser.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from samforge.cli.engine_annotate import base_round
from samforge.data.synthetic import make_scene
from samforge.engine.retrain_job import RetrainSettings
from samforge.engine.round_model import load_model_ref
from samforge.engine.rounds import ModelRef, current_round
from samforge.serve import ServerThread, create_app
from samforge.serve.engine_session import EngineSession
from test_annotate_browser import page  # noqa: F401 - the fixture: Chromium on served[0], the image embedded

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::DeprecationWarning")]

HW = (96, 128)
BASE = ModelRef("vit_small")


class TruthSource:
    """The scenes' true masks as confident proposals; counts its calls."""

    def __init__(self, scenes) -> None:
        self.by_image = {sc.image.tobytes(): sc.masks for sc in scenes}
        self.calls = 0

    def __call__(self, model, image: np.ndarray) -> list[dict]:
        self.calls += 1
        return [{"segmentation": m, "predicted_iou": 0.95, "stability_score": 0.97, "area": int(m.sum()),
                 "bbox": [0, 0, 1, 1]} for m in self.by_image[image.tobytes()]]


@pytest.fixture()
def served(tmp_path):
    scenes = [make_scene(s, image_size=HW) for s in (3, 4)]
    images = tmp_path / "images"
    images.mkdir()
    for i, sc in enumerate(scenes):
        Image.fromarray(sc.image).save(images / f"s{i}.png")
    work = tmp_path / "work"
    base_round(work, BASE)
    source = TruthSource(scenes)
    session = EngineSession(work, "semi", retrain=RetrainSettings(steps=2), proposal_source=source,
                            say=lambda m: None)
    app = create_app(load_model_ref(BASE), images, work, ["cell"], model_name="vit_small round 0", engine=session)
    server = ServerThread(app)
    server.start()
    yield server.url, work, scenes, source
    server.stop()


def drawn(page) -> np.ndarray:
    """The overlay canvas's painted pixels (alpha > 0), at the image's size."""
    alpha = page.evaluate("""() => {
        const c = document.getElementById('overlay');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const out = [];
        for (let i = 3; i < d.length; i += 4) out.push(d[i] > 0 ? 1 : 0);
        return out;
    }""")
    return np.array(alpha, dtype=bool).reshape(HW)


def test_semi_page_proposals_accept_reject_retrain_and_round_changes(page, served):
    url, work, scenes, source = served
    page.wait_for_function("document.body.dataset.proposalState === 'ready'")
    truth = scenes[0].masks
    n = len(truth)
    assert page.evaluate("S.proposals.length") == n and page.inner_text("#round") == "round 0"
    union = truth.any(axis=0)
    painted = drawn(page)
    assert (painted & union).sum() / (painted | union).sum() > 0.98, "the proposals are not what the overlay shows"

    first = page.evaluate("S.proposals[0].pid")
    page.keyboard.press("y")  # accept the first proposal
    page.wait_for_function(f"S.objects.length === 1 && S.proposals.length === {n - 1}")
    second = page.evaluate("S.proposals[0].pid")
    page.keyboard.press("x")  # reject the next one
    page.wait_for_function(f"S.proposals.length === {n - 2}")
    doc = json.loads((work / "annotations" / "s0.json").read_text())
    assert [(o["source"], o["prompts"]["proposal"]) for o in doc["objects"]] == [("proposal", first)]
    page.wait_for_function("document.getElementById('status').textContent === 'proposal rejected'")
    rejected = json.loads((work / "proposals" / "rejected" / "s0.json").read_text())
    assert [p["id"] for p in rejected["proposals"]] == [second]

    # the retrain mode: the server's default shown, the person's pick sent with the request
    assert page.input_value("#retrain-mode") == "decoder"
    page.select_option("#retrain-mode", "full")
    page.click("#retrain")
    page.wait_for_function("document.body.dataset.round === '1'")
    assert page.inner_text("#round") == "round 1" and "round 1" in page.inner_text("#model")
    assert current_round(work).index == 1 and current_round(work).images == ("s0.png",)
    page.wait_for_function("document.body.dataset.retrainState === 'done'")
    round_metrics = json.loads((work / "rounds" / "1" / "metrics.json").read_text())
    assert round_metrics["mode"] == "full" and round_metrics["trainable_parameters"] > 0
    assert page.input_value("#retrain-mode") == "full"  # a poll does not undo the person's pick
    # the new round's proposals load for the open image, without the accepted and the rejected one
    page.wait_for_function(f"document.body.dataset.proposalState === 'ready' && S.proposals.length === {n - 2} "
                           "&& S.proposals.every(p => p.pid.startsWith('1-'))")
    assert (work / "proposals" / "round-1" / "s0.json").is_file() and source.calls == 2
    page.keyboard.press("Y")  # accept all that is left
    page.wait_for_function(f"S.proposals.length === 0 && S.objects.length === {n - 1}")
    doc = json.loads((work / "annotations" / "s0.json").read_text())
    taken = [o["prompts"]["proposal"] for o in doc["objects"]]
    assert taken[0] == first and len(taken) == n - 1 and all(t.startswith("1-") for t in taken[1:])
