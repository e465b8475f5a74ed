"""``evaluate_dataset`` on a SAM 2 image model gives the same results as on the official SAM 2 predictor
holding the same weights (a shrunk SAM 2.1 tiny), every protocol and every interactive click."""

from __future__ import annotations

import pytest
from sam2.sam2_image_predictor import SAM2ImagePredictor as OfficialPredictor
from sam2_oracle import SMALL_OVERRIDES, make_sam2_pair

from samforge.data.synthetic_dataset import SyntheticDataset
from samforge.evaluate import evaluate_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


def test_sam2_evaluation_matches_the_official_predictor():
    official, ours = make_sam2_pair("sam2.1_hiera_t", seed=3, overrides=SMALL_OVERRIDES)
    ours.train()
    predictor = OfficialPredictor(official)
    s = official.image_size
    predictor._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
    data = SyntheticDataset(2, image_size=(120, 160), seed=40)
    result = evaluate_dataset(ours, data, seed=1, progress=False)
    assert ours.training  # given back in the mode it came in
    expected = evaluate_dataset(predictor, data, seed=1, progress=False)
    got, want = result.to_metrics_dict(), expected.to_metrics_dict()
    assert got["num_objects"] == want["num_objects"] >= 4
    for protocol in ("box", "center_point", "random_point", "points_3"):
        for metric in ("miou", "dice"):
            assert got[protocol][metric] == pytest.approx(want[protocol][metric], abs=1e-6), (protocol, metric)
    assert got["interactive"]["miou_at_clicks"] == pytest.approx(want["interactive"]["miou_at_clicks"], abs=1e-6)
    assert got["interactive"]["noc85"] == want["interactive"]["noc85"]
    for a, b in zip(result.objects, expected.objects):
        assert a.click_ious == pytest.approx(b.click_ious, abs=1e-6)
