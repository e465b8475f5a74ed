"""Training building blocks: losses against hand-computed values, the multimask rule, the schedule,
the resumable sampler, batches, config loading."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from samforge.data.sampler import ResumableSampler
from samforge.data.synthetic_dataset import SyntheticDataset
from samforge.train.batches import TrainingSamples, collate_samples
from samforge.train.config import OptimConfig, load_config
from samforge.train.losses import SamLoss, dice_loss, mask_iou, sigmoid_focal_loss
from samforge.train.optim import build_scheduler, lr_factor
from samforge.train.time_budget import fit_steps


def test_focal_loss_by_hand():
    logits = torch.zeros(1, 2, 2)
    targets = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    # p = 0.5 everywhere: ce = ln 2, (1 - p_t)^2 = 1/4, alpha_t = 0.25 (positives) or 0.75 (negatives)
    expected = (2 * 0.25 + 2 * 0.75) * 0.25 * math.log(2) / 4
    assert sigmoid_focal_loss(logits, targets).item() == pytest.approx(expected, rel=1e-6)
    confident = torch.tensor([[[10.0, 10.0], [-10.0, -10.0]]])
    assert sigmoid_focal_loss(confident, targets).item() < 1e-8


def test_dice_loss_by_hand():
    logits = torch.zeros(1, 2, 2)
    targets = torch.ones(1, 2, 2)
    # prob 0.5: 1 - (2 * 2 + 1) / (2 + 4 + 1)
    assert dice_loss(logits, targets).item() == pytest.approx(2 / 7, rel=1e-6)


def test_mask_iou():
    logits = torch.tensor([[[1.0, 1.0, -1.0, -1.0]]]).view(1, 2, 2)
    targets = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    assert mask_iou(logits, targets).item() == pytest.approx(1 / 3)
    assert mask_iou(-torch.ones(1, 2, 2), torch.zeros(1, 2, 2)).item() == 1.0


def test_multimask_rule_backpropagates_only_the_best_mask():
    targets = torch.zeros(2, 4, 4)
    targets[:, :2] = 1
    good = torch.where(targets > 0, 8.0, -8.0)
    logits = torch.stack([torch.zeros(2, 4, 4), good, -good], dim=1).requires_grad_(True)
    iou_pred = torch.full((2, 3), 0.5, requires_grad=True)
    out = SamLoss()(logits, iou_pred, targets)
    assert out["best"].tolist() == [1, 1]
    out["loss"].backward()
    grad = logits.grad.abs().flatten(2).sum(-1)
    assert (grad[:, 1] > 0).all() and (grad[:, [0, 2]] == 0).all()
    # every candidate's IoU prediction (0.5) is supervised with its true IoU: 0 (nothing > 0), 1, 0
    assert out["iou_mse"].item() == pytest.approx(((0.5 - 0) ** 2 + (0.5 - 1) ** 2 + (0.5 - 0) ** 2) / 3, rel=1e-5)
    assert iou_pred.grad.abs().sum() > 0


def test_loss_weights_and_shapes():
    logits, targets = torch.randn(3, 1, 8, 8), torch.rand(3, 8, 8) > 0.5
    parts = SamLoss(focal_weight=20, dice_weight=1, iou_weight=0)(logits, torch.zeros(3, 1), targets)
    manual = 20 * sigmoid_focal_loss(logits[:, 0], targets.float()) + dice_loss(logits[:, 0], targets.float())
    assert parts["loss"].item() == pytest.approx(manual.mean().item(), rel=1e-5)
    with pytest.raises(ValueError, match="NxMxHxW"):
        SamLoss()(torch.zeros(3, 8, 8), torch.zeros(3, 1), targets)


def test_learned_uncertainty_weighting_by_hand():
    logits, targets = torch.randn(3, 1, 8, 8), torch.rand(3, 8, 8) > 0.5
    iou_pred = torch.full((3, 1), 0.3)
    fixed = SamLoss(focal_weight=2, dice_weight=1, iou_weight=1)(logits, iou_pred, targets)
    learned_fn = SamLoss(focal_weight=2, dice_weight=1, iou_weight=1, learned_weighting=True)
    learned = learned_fn(logits, iou_pred, targets)
    terms = torch.tensor([2 * fixed["focal"], fixed["dice"], fixed["iou_mse"]])
    # log-variances start at 0: weights exp(0) = 1, so the sum of the weighted terms
    assert learned["loss"].item() == pytest.approx(terms.sum().item(), rel=1e-5)
    learned["loss"].backward()  # d/ds (exp(-s) L + s) at s = 0 is 1 - L
    assert torch.allclose(learned_fn.weighting.log_vars.grad, 1 - terms, atol=1e-5)
    with torch.no_grad():
        learned_fn.weighting.log_vars.copy_(torch.tensor([0.5, -1.0, 2.0]))
    s = torch.tensor([0.5, -1.0, 2.0])
    expected = (torch.exp(-s) * terms + s).sum()
    assert learned_fn(logits, iou_pred, targets)["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert not list(SamLoss().parameters())  # off by default: nothing to learn


def test_warmup_then_cosine():
    cfg = OptimConfig(warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    assert lr_factor(0, 100, cfg) == pytest.approx(0.1)
    assert lr_factor(9, 100, cfg) == pytest.approx(1.0)
    assert lr_factor(10, 100, cfg) == pytest.approx(1.0)
    assert lr_factor(100, 100, cfg) == pytest.approx(0.1)
    assert lr_factor(55, 100, cfg) == pytest.approx(0.1 + 0.9 * 0.5, rel=1e-6)
    step_cfg = OptimConfig(warmup_steps=0, schedule="step", step_milestones=(0.5,), step_gamma=0.1)
    assert lr_factor(49, 100, step_cfg) == 1.0 and lr_factor(50, 100, step_cfg) == pytest.approx(0.1)


def test_fit_steps_arithmetic():
    assert fit_steps(10, 2.0, 100.0, 10_000) == 60  # 100 s left at 2 s a step: 50 more
    assert fit_steps(10, 2.5, 100.0, 10_000) == 50
    assert fit_steps(10, 2.0, 100.0, 30) == 30  # steps stays the upper bound
    assert fit_steps(10, 2.0, -5.0, 10_000) == 10  # already over budget: stop now
    with pytest.raises(ValueError, match="sec_per_step must be > 0"):
        fit_steps(10, 0.0, 100.0, 100)


def test_time_budget_fits_then_refits_when_the_pace_changes(monkeypatch):
    """A fake clock: 1 s a step, a 10-minute budget, then the machine slows to 2 s a step; the schedule is fitted
    after 10 steps, refitted at each validation (its measured cost counted), and a fitted schedule is kept."""
    import types

    from samforge.train import time_budget
    from samforge.train.optim import Schedule

    clock = [0.0]
    monkeypatch.setattr(time_budget, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    cfg = load_config(None, ["fit_steps_to_time=true", "max_minutes=10", "steps=100000", "val_every=50"])
    schedule = Schedule(cfg.steps, cfg.optim)
    budget = time_budget.TimeBudget(schedule, cfg, 0, 0.0, val_batches=4)
    assert [s for s in range(1, 60) if budget.due(s)] == [10]  # before the first fit, only step 10
    clock[0] = 10.0
    first = budget.fit(10, distributed=False)
    pace = 1.0 * time_budget.MARGIN
    val_estimate = 0.5 * 4 * pace  # no validation measured yet: half a step per validation batch
    assert first == 10 + int((600 - 10 - val_estimate) / (pace + val_estimate / 50))
    assert schedule.total_steps == first and schedule.fitted
    assert budget.due(50) and not budget.due(51)
    clock[0] = 50.0
    assert budget.fit(50, distributed=False) == 50 + int((600 - 50 - val_estimate) / (pace + val_estimate / 50))
    budget.validated(5.0)  # the validation at step 50 took 5 s; then 2 s a step
    clock[0] = 50.0 + 5.0 + 50 * 2.0
    slower = budget.fit(100, distributed=False)
    assert slower == 100 + int((600 - 155 - 5.0) / (2.0 * time_budget.MARGIN + 5.0 / 50)) and slower < first
    assert not time_budget.TimeBudget(schedule, cfg, 100, 0.0, val_batches=4).due(110)  # resumed: kept as fitted
    no_budget = load_config(None, ["fit_steps_to_time=true", "max_minutes=0"])  # no time limit: steps is the length
    assert not time_budget.TimeBudget(Schedule(100, no_budget.optim), no_budget, 0, 0.0, val_batches=4).due(10)


def test_a_changed_schedule_length_is_saved_and_resumed(tmp_path):
    cfg = OptimConfig(warmup_steps=2, schedule="cosine", min_lr_ratio=0.1, lr=1.0)
    params = [torch.nn.Parameter(torch.zeros(1))]
    scheduler = build_scheduler(torch.optim.AdamW(params, lr=1.0), 1000, cfg)
    schedule = scheduler.lr_lambdas[0]
    schedule.total_steps, schedule.fitted = 50, True
    for _ in range(25):
        scheduler.step()
    assert scheduler.get_last_lr()[0] == pytest.approx(lr_factor(25, 50, cfg))
    path = tmp_path / "scheduler.pt"
    torch.save(scheduler.state_dict(), path)
    fresh = build_scheduler(torch.optim.AdamW(params, lr=1.0), 1000, cfg)
    fresh.load_state_dict(torch.load(path, weights_only=True))  # plain values only
    assert fresh.lr_lambdas[0].total_steps == 50 and fresh.lr_lambdas[0].fitted
    fresh.step()
    assert fresh.get_last_lr()[0] == pytest.approx(lr_factor(26, 50, cfg))


def take(sampler, n):
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_sampler_resumes_and_splits_ranks():
    full = take(ResumableSampler(7, seed=3), 20)
    assert sorted(i for i, _ in full[:7]) == list(range(7))  # each epoch a permutation
    assert [i for i, _ in full[:7]] != [i for i, _ in full[7:14]]  # epochs differ
    assert take(ResumableSampler(7, seed=3, start=9), 11) == full[9:20]
    r0 = take(ResumableSampler(7, seed=3, rank=0, world_size=2), 5)
    r1 = take(ResumableSampler(7, seed=3, rank=1, world_size=2), 5)
    assert r0 == full[0:10:2] and r1 == full[1:10:2]
    with pytest.raises(ValueError, match="empty"):
        ResumableSampler(0)


def test_training_batches():
    samples = TrainingSamples(SyntheticDataset(3, image_size=(120, 200)), image_size=64, max_objects=2, seed=0)
    items = [samples[(i, i)] for i in range(3)]
    assert items[0]["image"].shape == (3, 64, 64) and items[0]["input_hw"] == (38, 64)
    assert (items[0]["image"][:, 38:] == 0).all()  # padding after normalization, as Sam.preprocess
    assert all(1 <= len(it["masks"]) <= 2 for it in items)
    assert samples[(1, 5)]["masks"].equal(samples[(1, 5)]["masks"])  # same key, same objects
    batch = collate_samples(items)
    assert batch["images"].shape == (3, 3, 64, 64)
    assert batch["masks"].shape[0] == batch["image_index"].shape[0] == sum(len(it["masks"]) for it in items)
    assert batch["masks"].dtype == torch.bool and not batch["masks"][:, 38:].any()


def test_prepare_image_matches_predictor_preprocessing():
    from samforge import SamPredictor, build_sam
    from samforge.train.batches import prepare_image

    image = np.random.default_rng(0).integers(0, 256, (90, 130, 3), dtype=np.uint8)
    sam = build_sam("vit_small")
    predictor = SamPredictor(sam)
    resized = torch.as_tensor(predictor.transform.apply_image(image)).permute(2, 0, 1)[None].float()
    ours, hw = prepare_image(image, 256)
    assert torch.allclose(ours, sam.preprocess(resized)[0], atol=1e-6) and hw == (177, 256)


def test_config_overrides_and_errors(tmp_path):
    cfg = load_config(None, ["steps=7", "optim.lr=0.001", "data.train=synthetic:5"])
    assert cfg.steps == 7 and cfg.optim.lr == 0.001 and cfg.data.train == "synthetic:5"
    path = tmp_path / "c.yaml"
    path.write_text("steps: 9\noptim:\n  warmup_steps: 3\n")
    cfg = load_config(path, ["steps=11"])
    assert cfg.steps == 11 and cfg.optim.warmup_steps == 3
    with pytest.raises(ValueError, match="nope"):
        load_config(None, ["nope=1"])
    with pytest.raises(ValueError, match="key=value"):
        load_config(None, ["steps"])
    with pytest.raises(ValueError, match="precision"):
        load_config(None, ["precision=fp8"])
    with pytest.raises(ValueError, match="steps"):
        load_config(None, ["steps=0"])
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")


def test_every_preset_loads():
    """Each preset's keys are known and its values pass the config's checks."""
    from samforge.train.config import preset_names

    names = preset_names()
    assert {"quickstart", "scratch_small", "finetune_small"} <= set(names)
    for name in names:
        assert load_config(name).steps > 0, name


@pytest.mark.parametrize("name", ["quickstart", "scratch_small"])
def test_from_scratch_presets_build_their_model_and_train_for_a_time(name):
    """The from-scratch presets name a model that builds and runs at its input size, and end their schedule
    within their minutes."""
    from samforge.models.build import build_sam
    from samforge.train.task import resolve_model_config

    cfg = load_config(name)
    _, sam_config = resolve_model_config(cfg)
    model = build_sam(sam_config)
    size = sam_config.image_size
    with torch.no_grad():
        embedding = model.image_encoder(torch.zeros(1, 3, size, size))
    assert embedding.shape[-2:] == (sam_config.image_embedding_size,) * 2
    assert cfg.fit_steps_to_time and cfg.max_minutes > 0
