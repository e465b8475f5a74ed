"""The semi-automatic stage's proposal filter as a setting (issue #23): ``engine annotate --proposal-pred-iou
--proposal-stability`` (the strict 0.9 / 0.95 by default) decide which automatic masks are shown; proposals cached
under other thresholds are made again; bad thresholds are refused before anything is written."""

from __future__ import annotations

import contextlib
import json

import pytest
from test_engine_annotate import BASE, TruthSource, images, proposals, scenes, work  # noqa: F401 (fixtures)
from test_annotate_api import page_client

from samforge.cli.main import main
from samforge.engine.retrain_job import RetrainSettings
from samforge.engine.round_model import load_model_ref
from samforge.serve import create_app
from samforge.serve.engine_session import EngineSession

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def client_with(images, work):  # noqa: F811
    """``client_with(source, **thresholds)``: a semi-stage engine annotator on ``work`` with those filters."""
    with contextlib.ExitStack() as opened:
        def make(source, **thresholds):
            session = EngineSession(work, "semi", retrain=RetrainSettings(steps=1), proposal_source=source,
                                    say=lambda m: None, **thresholds)
            app = create_app(load_model_ref(BASE), images, work, ["cell"], model_name="vit_small", engine=session)
            return opened.enter_context(page_client(app))

        yield make


def test_lower_thresholds_show_more_and_a_change_recomputes(client_with, work):  # noqa: F811
    truth = scenes()[0].masks
    source = TruthSource()  # the true masks (0.95 / 0.97) and one mask at predicted IoU 0.5
    lenient = proposals(client_with(source, proposal_pred_iou=0.4, proposal_stability=0.9))
    assert len(lenient["proposals"]) == len(truth) + 1 and source.calls == 1
    doc = json.loads((work / "proposals" / "round-0" / "s0.json").read_text())
    assert doc["filters"] == {"pred_iou_thresh": 0.4, "stability_score_thresh": 0.9}
    strict = proposals(client_with(source))  # the paper's filter: the cached lenient ones are not reused
    assert not strict["cached"] and source.calls == 2 and len(strict["proposals"]) == len(truth)
    assert all(p["score"] >= 0.9 and p["stability_score"] >= 0.95 for p in strict["proposals"])
    assert proposals(client_with(source))["cached"] and source.calls == 2


def test_a_cache_written_before_the_setting_counts_as_strict(client_with, work):  # noqa: F811
    source = TruthSource()
    proposals(client_with(source))
    path = work / "proposals" / "round-0" / "s0.json"
    doc = json.loads(path.read_text())
    del doc["filters"]  # as an older samforge wrote it
    path.write_text(json.dumps(doc))
    assert proposals(client_with(source))["cached"] and source.calls == 1
    assert not proposals(client_with(source, proposal_stability=0.5))["cached"] and source.calls == 2


@pytest.mark.parametrize("name", ["proposal_pred_iou", "proposal_stability"])
@pytest.mark.parametrize("bad", [0, 1.2, "0.9", True])
def test_session_refuses_bad_thresholds(work, name, bad):  # noqa: F811
    with pytest.raises(ValueError, match=rf"{name} must be a number in \(0, 1\], got"):
        EngineSession(work, "semi", **{name: bad})


def test_cli_refuses_bad_thresholds_before_writing(images, tmp_path, capsys):  # noqa: F811
    for flag, value in (("--proposal-pred-iou", "0"), ("--proposal-stability", "1.5")):
        out = tmp_path / f"w{flag}"
        code = main(["engine", "annotate", str(images), "--out", str(out), "--base", "vit_small", "--stage", "semi",
                     flag, value])
        assert code == 2 and f"{flag} must be a number in (0, 1], got {float(value)}" in capsys.readouterr().err
        assert not out.exists()
