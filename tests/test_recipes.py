"""Named prompt recipes (prompts.recipe): how each resolves into the config, the statistics of the prompts each
samples, the rounds a training step decodes, and the recipe's first prompt in evaluation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import samforge.train.step as step_module
from samforge.data.prompts import correction_click, jitter_box, mask_to_box, sample_points
from samforge.data.readers import open_dataset
from samforge.data.recipes import RECIPES, correction_clicks, first_prompts, recipe_settings, round_schedule
from samforge.evaluate import evaluate_dataset
from samforge.models.build import build_sam
from samforge.models.configs import SAM_CONFIGS
from samforge.train.config import PromptConfig, config_to_yaml, load_config
from samforge.train.losses import SamLoss
from samforge.train.step import initial_prompts, training_losses

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = {"image_size": 64, "patch_size": 8, "encoder_embed_dim": 32, "encoder_depth": 1, "encoder_num_heads": 2,
        "encoder_global_attn_indexes": (0,), "window_size": 4, "prompt_embed_dim": 32, "decoder_num_heads": 2,
        "decoder_mlp_dim": 64, "iou_head_hidden_dim": 32}
PROMPT_KEYS = [f.name for f in dataclasses.fields(PromptConfig) if f.name not in ("source", "recipe")]


def square(size: int = 200, lo: int = 50, hi: int = 150) -> np.ndarray:
    m = np.zeros((size, size), dtype=bool)
    m[lo:hi, lo:hi] = True
    return m


def ring(size: int = 96) -> np.ndarray:
    """A non-convex object (a ring), so that "inside the box" and "inside the object" differ."""
    yy, xx = np.mgrid[:size, :size]
    r2 = (xx - size / 2) ** 2 + (yy - size / 2) ** 2
    return (r2 < (size * 0.4) ** 2) & (r2 > (size * 0.2) ** 2)


def settings(name: str, **changes) -> PromptConfig:
    return PromptConfig(recipe=name, **{**recipe_settings(name), **changes})


# -- resolution into the config


def test_the_default_recipe_is_the_config_defaults_and_presets_are_unchanged():
    defaults = PromptConfig()
    assert set(RECIPES["default"]) == set(PROMPT_KEYS)
    assert all(set(r) == set(PROMPT_KEYS) for r in RECIPES.values())
    assert {k: getattr(defaults, k) for k in PROMPT_KEYS} == RECIPES["default"]
    # the values the trainer used before recipes existed
    cfg = load_config()
    assert (cfg.prompts.recipe, cfg.prompts.box_prob, cfg.prompts.box_noise, cfg.prompts.box_max_noise,
            cfg.prompts.correction_rounds, cfg.prompts.mask_only_rounds) == ("default", 0.5, 0.1, 20.0, 2, 1)
    quick = load_config("quickstart")  # a preset names its recipe
    assert (quick.prompts.recipe, quick.prompts.correction_rounds, quick.prompts.loss_rounds) == ("sam_fast", 5, 2)
    small = load_config("scratch_small", ["prompts.recipe=default", "prompts.correction_rounds=1"])
    # a recipe named on the command line replaces the preset's, and the line's own keys still override it
    assert (small.prompts.recipe, small.prompts.correction_rounds, small.prompts.mask_only_rounds) == ("default", 1, 1)


def _old_initial_prompts(gts, cfg, rng, input_hw, image_index):
    """The first prompts as the trainer drew them before recipes (box with probability box_prob, else a point)."""
    if rng.random() < cfg.box_prob:
        return None, None, np.stack([jitter_box(mask_to_box(gt), input_hw[i], rng, cfg.box_noise, cfg.box_max_noise)
                                     for gt, i in zip(gts, image_index)])
    coords = np.stack([sample_points(gt, 1, rng) for gt in gts])
    return coords, np.ones(coords.shape[:2], dtype=np.int64), None


def test_the_default_recipe_draws_the_same_prompts_and_rounds_as_before():
    gts = np.stack([square(64, 5, 30), square(64, 20, 60), ring(64)])
    cfg = load_config().prompts
    kinds = set()
    for seed in range(12):
        new_rng, old_rng = np.random.default_rng(seed), np.random.default_rng(seed)
        new = initial_prompts(gts, cfg, new_rng, [(64, 64), (60, 64)], np.array([0, 1, 1]))
        old = _old_initial_prompts(gts, cfg, old_rng, [(64, 64), (60, 64)], np.array([0, 1, 1]))
        for a, b in zip(new, old):
            assert (a is None and b is None) or np.array_equal(a, b)
        kinds.add(new[2] is None)
        assert round_schedule(cfg, new_rng) == [True, True, True, False]
        assert new_rng.random() == old_rng.random()  # the streams stay in step for the rest of the step
    assert kinds == {True, False}  # both the point and the box branch were compared


def test_a_recipe_is_applied_where_named_and_overridden_key_by_key(tmp_path):
    sam = load_config("quickstart", ["prompts.recipe=sam"])  # the command line's recipe overrides the preset's keys
    assert (sam.prompts.correction_rounds, sam.prompts.mask_only_rounds, sam.prompts.mask_only_random) == (8, 2, True)
    for overrides in (["prompts.recipe=sam", "prompts.correction_rounds=4"],
                      ["prompts.correction_rounds=4", "prompts.recipe=sam"]):  # the order does not matter
        cfg = load_config(None, overrides)
        assert (cfg.prompts.recipe, cfg.prompts.correction_rounds, cfg.prompts.mask_only_rounds) == ("sam", 4, 2)
    path = tmp_path / "med.yaml"
    path.write_text("prompts:\n  recipe: medsam\n  box_outward_max: 3\n")
    med = load_config(path, ["prompts.box_prob=0.9"])
    assert (med.prompts.box_jitter, med.prompts.box_outward_max, med.prompts.box_prob) == ("outward", 3.0, 0.9)
    assert (med.prompts.correction_rounds, med.prompts.mask_only_rounds) == (0, 0)
    text = config_to_yaml(med)  # what the run folder's config.yaml holds: the resolved settings
    for line in ("recipe: medsam", "box_jitter: outward", "box_outward_max: 3.0", "box_prob: 0.9",
                 "correction_rounds: 0"):
        assert line in text


@pytest.mark.parametrize("overrides, match", [
    (["prompts.recipe=sam2"], r"unknown recipe 'sam2'; known recipes: default, sam, medsam, box_points, seed000"),
    (["prompts.box_points=five"], r"prompts\.box_points"),
    (["prompts.mask_only_random=maybe"], r"prompts\.mask_only_random"),
    (["prompts.box_jitter=inward"], r"prompts.box_jitter must be one of \('gaussian', 'outward'\), got 'inward'"),
    (["prompts.min_points=3", "prompts.max_points=2"], r"1 <= min_points <= max_points, got 3 and 2"),
    (["prompts.negative_prob=1.5"], r"prompts.negative_prob must be in \[0, 1\], got 1.5"),
    (["model.type=sam2.1_hiera_t", "prompts.recipe=sam"], r"SAM 2 \(sam2.1_hiera_t\) samples its prompts as the"),
])
def test_bad_recipe_settings_are_named(overrides, match):
    with pytest.raises(ValueError, match=match):
        load_config(None, overrides)


# -- the prompts each recipe samples


def test_sam_box_noise_has_the_papers_std_and_cap():
    gts = np.stack([square()] * 50)  # a 100 px side: std 10 px, capped at 20
    cfg = settings("sam", box_prob=1.0)
    rng = np.random.default_rng(0)
    moves = np.concatenate([first_prompts(gts, cfg, rng, [(200, 200)] * 50)[2] - mask_to_box(gts[0])
                            for _ in range(20)])
    assert np.abs(moves).max() <= 20.0 and np.abs(moves).max() > 15.0
    assert 8.0 < moves.std() < 10.5 and abs(moves.mean()) < 1.0  # Gaussian std 10 px, a little less where capped


def test_medsam_moves_each_box_side_outward_by_0_to_5_px_and_never_clicks():
    gts = np.stack([square()] * 50)
    cfg = settings("medsam")
    rng = np.random.default_rng(1)
    draws = [first_prompts(gts, cfg, rng, [(200, 200)] * 50) for _ in range(10)]
    assert all(c is None and lab is None for c, lab, _ in draws)  # box only, no point
    moves = np.concatenate([b for _, _, b in draws]) - mask_to_box(gts[0])
    outward = moves * np.array([-1, -1, 1, 1])
    assert outward.min() == 0 and outward.max() == 5 and np.array_equal(outward, np.round(outward))
    assert set(np.unique(outward).tolist()) == {0, 1, 2, 3, 4, 5}  # uniform over the whole range
    assert round_schedule(cfg, rng) == [True]  # one round: no clicks, no mask-only round
    edge = np.stack([square(200, 0, 198)])  # clipped to the image, never inward
    box = first_prompts(edge, cfg, rng, [(200, 200)])[2][0]
    assert box[0] == 0 and box[1] == 0 and 197 <= box[2] <= 199


def test_box_points_gives_a_box_and_k_positive_points_inside_the_object():
    gts = np.stack([ring()] * 8)
    cfg = settings("box_points")
    coords, labels, boxes = first_prompts(gts, cfg, np.random.default_rng(2), [(96, 96)] * 8)
    assert boxes.shape == (8, 4) and coords.shape == (8, 5, 2) and (labels == 1).all()
    xy = coords.astype(int)
    assert gts[0][xy[..., 1], xy[..., 0]].all()
    assert load_config(None, ["prompts.recipe=box_points", "prompts.box_points=3"]).prompts.box_points == 3


def test_seed000_points_are_inside_negatives_outside_and_boxes_rare():
    gt = ring()
    cfg = settings("seed000")
    rng = np.random.default_rng(3)
    boxes = positives_per_object = negatives = objects = 0
    counts = set()
    for _ in range(400):
        coords, labels, box = first_prompts(gt[None].repeat(4, 0), cfg, rng, [(96, 96)] * 4)
        if box is not None:
            boxes += 1
            continue
        xy = coords.astype(int)
        inside = gt[xy[..., 1], xy[..., 0]]
        assert inside[labels == 1].all() and not inside[labels == 0].any()  # negatives outside the object
        for row in labels:
            counts.add(int((row == 1).sum()))
            negatives += int((row == 0).sum())
            objects += 1
        positives_per_object += int((labels == 1).sum())
    assert counts == {1, 2}
    assert 0.05 < boxes / 400 < 0.16  # a box instead with probability 0.1
    assert 0.24 < negatives / objects < 0.36  # a negative point with probability 0.3
    jittered = [first_prompts(gt[None], settings("seed000", box_prob=0.0, point_jitter=2.0),
                              np.random.default_rng(s), [(96, 96)])[0][0, 0] for s in range(50)]
    plain = [first_prompts(gt[None], settings("seed000", box_prob=0.0, point_jitter=0.0),
                           np.random.default_rng(s), [(96, 96)])[0][0, 0] for s in range(50)]
    shift = np.abs(np.array(jittered) - np.array(plain))
    assert shift.max() <= 2 and shift.max() > 0  # moved by up to 2 px


def test_sam_rounds_are_8_clicks_and_2_mask_only_one_at_a_random_place_and_one_at_the_end():
    cfg = settings("sam")
    places = set()
    for seed in range(40):
        rounds = round_schedule(cfg, np.random.default_rng(seed))
        assert len(rounds) == 11 and rounds.count(True) == 9 and rounds[0] and not rounds[-1]
        inner = [i for i, click in enumerate(rounds[:-1]) if not click]
        assert len(inner) == 1 and 1 <= inner[0] <= 8 and rounds[inner[0] + 1]  # among the click rounds
        places.add(inner[0])
    assert len(places) >= 5


def _errors(n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Predictions that miss a thick band of each square (false negatives) and add a thin sliver outside it
    (false positives), so the larger and the deeper error region are both the false negatives."""
    gts = np.stack([square(96, 20 + k, 70 + k) for k in range(n)])
    preds = gts.copy()
    preds[:, :, 45:] = False
    preds[:, 10:12, :] = True
    return preds, gts


def test_interior_clicks_choose_between_the_evaluations_click_and_a_uniform_one():
    preds, gts = _errors()
    interior = np.stack([correction_click(p, g)[0] for p, g in zip(preds, gts)])
    for p in (0.0, 1.0):
        xy, labels = correction_clicks(preds, gts, settings("sam_fast", interior_clicks=p), np.random.default_rng(0))
        assert xy.shape == (len(gts), 1, 2) and labels.shape == (len(gts), 1)
        fn = gts & ~preds
        assert all(fn[m, int(y), int(x)] for m, (x, y) in enumerate(xy[:, 0])) and (labels == 1).all()
        assert (xy[:, 0] == interior).all() == (p == 1.0)
    # a mix: about the stated share of clicks are the interior ones
    cfg = settings("sam_fast", interior_clicks=0.3)
    rng = np.random.default_rng(1)
    hits = sum(int((correction_clicks(preds, gts, cfg, rng)[0][:, 0] == interior).all(axis=1).sum()) for _ in range(100))
    assert 0.2 < hits / (100 * len(gts)) < 0.4
    # off, no number is drawn beyond the uniform clicks' own: runs from before the key stay the same
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    xy0, _ = correction_clicks(preds, gts, settings("sam_fast"), a)
    assert (xy0[:, 0] == np.stack([correction_click(p, g, b)[0] for p, g in zip(preds, gts)])).all()
    with pytest.raises(ValueError, match="two N x H x W masks"):
        correction_clicks(preds[0], gts[0], cfg, rng)


def test_interior_clicks_out_of_range_is_named():
    with pytest.raises(ValueError, match=r"prompts.interior_clicks must be a finite number in \[0, 1\], got 1.5"):
        load_config(None, ["prompts.interior_clicks=1.5"])


def test_a_sam_training_step_decodes_its_rounds_with_clicks_only_where_due(monkeypatch):
    torch.manual_seed(0)
    model = build_sam(dataclasses.replace(SAM_CONFIGS["vit_small"], **TINY))
    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[0, 10:30, 10:40], masks[1, 35:60, 20:50] = True, True
    batch = {"images": torch.randn(1, 3, 64, 64), "masks": masks, "image_index": torch.zeros(2, dtype=torch.long),
             "input_hw": [(64, 64)], "names": ["a"]}
    seen = []
    original = step_module._decode_once

    def recording(model, embeddings, points, boxes, mask_input, multimask, image_pe):
        seen.append((0 if points is None else points[0].shape[1], boxes is not None, mask_input is not None, multimask))
        return original(model, embeddings, points, boxes, mask_input, multimask, image_pe)

    monkeypatch.setattr(step_module, "_decode_once", recording)
    cfg = settings("sam", box_prob=0.0)
    rng = np.random.default_rng(5)
    out = training_losses(model, batch, cfg, SamLoss(), rng, "low_res")
    assert torch.isfinite(out["loss"])
    assert len(seen) == 11
    points = [n for n, *_ in seen]
    assert points[0] == 1 and points[-1] == 9 and points[-2] == 9  # 1 click, then 8 more; the end is mask-only
    assert sorted(set(points)) == list(range(1, 10))  # one round repeats its points: the random mask-only round
    assert seen[0][3] and not any(m for *_, m in seen[1:])  # the single first click asks for 3 masks
    assert not seen[0][2] and all(mask for _, _, mask, _ in seen[1:])  # previous logits fed back from round 2 on


# -- evaluation with a recipe's first prompt


def test_evaluate_adds_the_recipes_first_prompt_and_keeps_the_other_protocols():
    torch.manual_seed(0)
    model = build_sam(dataclasses.replace(SAM_CONFIGS["vit_small"], **TINY))
    data = open_dataset("synthetic:2:64")
    plain = evaluate_dataset(model, data, progress=False).to_metrics_dict()
    med = evaluate_dataset(model, data, progress=False, recipe="medsam").to_metrics_dict()
    assert "recipe" not in plain and set(med["recipe"]) == {"miou", "dice"}
    for key in ("box", "center_point", "random_point", "points_3", "interactive"):
        assert med[key] == plain[key]
    with pytest.raises(ValueError, match="known recipes: default, sam, medsam"):
        evaluate_dataset(model, data, progress=False, recipe="nope")
