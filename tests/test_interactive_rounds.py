"""The cheap interactive rounds of a training step (samforge.train.step.training_losses): the shared image side, the
rounds without gradient, the objects that leave the rounds early, and each recipe's round schedule."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import samforge.train.step as step_module
from samforge.data.prompts import correction_click
from samforge.data.recipes import RECIPES, loss_rounds, recipe_settings, round_schedule, round_survivors
from samforge.models.build import build_sam
from samforge.models.configs import SAM_CONFIGS
from samforge.train.config import PromptConfig, load_config
from samforge.train.losses import SamLoss
from samforge.train.step import initial_prompts, training_losses

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = {"image_size": 64, "patch_size": 8, "encoder_embed_dim": 32, "encoder_depth": 1, "encoder_num_heads": 2,
        "encoder_global_attn_indexes": (0,), "window_size": 4, "prompt_embed_dim": 32, "decoder_num_heads": 2,
        "decoder_mlp_dim": 64, "iou_head_hidden_dim": 32}


def settings(name: str, **changes) -> PromptConfig:
    return PromptConfig(recipe=name, **{**recipe_settings(name), **changes})


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_sam(dataclasses.replace(SAM_CONFIGS["vit_small"], **TINY))


def batch_of_four() -> dict:
    masks = torch.zeros(4, 64, 64, dtype=torch.bool)
    masks[0, 10:30, 10:40], masks[1, 35:60, 20:50], masks[2, 5:60, 50:62], masks[3, 40:50, 5:15] = True, True, True, True
    return {"images": torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)), "masks": masks,
            "image_index": torch.tensor([0, 0, 1, 1]), "input_hw": [(64, 64), (64, 64)], "names": ["a", "b"]}


def plain_round_losses(model, batch, cfg, loss_fn, rng, draw_like: PromptConfig | None = None) -> list[torch.Tensor]:
    """Every round's loss the plain way: the image positional encoding recomputed and the image embedding repeated
    per object in each round, every round with gradient (the step as it was before the rounds were made cheap).
    ``draw_like``: make the loss-round draw of these settings after the schedule, as the cheap step does, so
    that both steps click at the same places."""
    gts = batch["masks"]
    embeddings = model.image_encoder(batch["images"])[batch["image_index"]]
    targets = F.interpolate(gts.float()[:, None], model.prompt_encoder.mask_input_size, mode="area")[:, 0]
    gts_np = gts.numpy()
    coords, labels, boxes = initial_prompts(gts_np, cfg, rng, batch["input_hw"], batch["image_index"].numpy())
    rounds = round_schedule(cfg, rng)
    if draw_like is not None:
        loss_rounds(draw_like, rounds, rng)
    mask_input, pred_np, losses = None, None, []
    for r, new_click in enumerate(rounds):
        if r > 0 and new_click:
            clicks = [correction_click(p, g, rng) for p, g in zip(pred_np, gts_np)]
            coords = np.concatenate([coords, np.stack([c[0] for c in clicks])[:, None]], axis=1)
            labels = np.concatenate([labels, np.array([c[1] for c in clicks])[:, None]], axis=1)
        points = (torch.as_tensor(coords, dtype=torch.float), torch.as_tensor(labels, dtype=torch.int))
        sparse, dense = model.prompt_encoder(points=points, boxes=None, masks=mask_input)
        low_res, iou = model.mask_decoder(image_embeddings=embeddings, image_pe=model.prompt_encoder.get_dense_pe(),
                                          sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                          multimask_output=r == 0 and coords.shape[1] == 1)
        out = loss_fn(low_res, iou, targets)
        losses.append(out["loss"])
        chosen = out["best"] if cfg.next_mask == "lowest_loss" else iou.detach().argmax(dim=1)
        mask_input = low_res[torch.arange(len(gts)), chosen][:, None].detach()
        full = F.interpolate(mask_input, (64, 64), mode="bilinear", align_corners=False)
        pred_np = (full[:, 0] > 0).numpy()
    return losses


def grads(model) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def assert_same_grads(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and len(a) > 20
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-6, atol=1e-6, msg=name)


@pytest.mark.parametrize("seed", [0, 3])
def test_shared_image_side_gives_the_plain_rounds_loss_and_gradients(seed):
    model = tiny_model()
    cfg = settings("sam", box_prob=0.0)  # 11 rounds, all with a loss
    shared = training_losses(model, batch_of_four(), cfg, SamLoss(), np.random.default_rng(seed), "low_res")
    shared["loss"].backward()
    fast = grads(model)
    plain = torch.stack(plain_round_losses(model, batch_of_four(), cfg, SamLoss(), np.random.default_rng(seed))).mean()
    plain.backward()
    torch.testing.assert_close(shared["loss"], plain, rtol=1e-6, atol=1e-6)
    assert_same_grads(fast, grads(model))


def test_rounds_without_a_loss_leave_the_gradient_of_the_rounds_with_one_unchanged():
    model = tiny_model()
    cfg = settings("sam", box_prob=0.0, loss_rounds=3)
    rng = np.random.default_rng(7)
    out = training_losses(model, batch_of_four(), cfg, SamLoss(), rng, "low_res")
    out["loss"].backward()
    cheap = grads(model)
    # the same draws: the rounds' losses of the plain step, kept where loss_rounds chose them
    ref_rng = np.random.default_rng(7)
    initial_prompts(batch_of_four()["masks"].numpy(), cfg, ref_rng, [(64, 64)] * 2, np.array([0, 0, 1, 1]))
    rounds = round_schedule(cfg, ref_rng)
    chosen = loss_rounds(cfg, rounds, ref_rng)
    assert chosen.count(True) == 4 and chosen[0] and chosen[-1]
    losses = plain_round_losses(model, batch_of_four(), dataclasses.replace(cfg, loss_rounds=-1), SamLoss(),
                                np.random.default_rng(7), draw_like=cfg)
    assert len(losses) == len(rounds)
    torch.stack([loss for loss, keep in zip(losses, chosen) if keep]).mean().backward()
    assert_same_grads(cheap, grads(model))


def test_objects_above_the_target_iou_leave_the_later_rounds_and_only_they(monkeypatch):
    model = tiny_model()
    decoded: list[int] = []
    original = step_module._decode_once

    def recording(model, embeddings, points, boxes, mask_input, multimask, image_pe):
        decoded.append(len(embeddings))
        return original(model, embeddings, points, boxes, mask_input, multimask, image_pe)

    monkeypatch.setattr(step_module, "_decode_once", recording)
    fake = iter([[0.95, 0.10, 0.92, 0.30], [0.50, 0.91], [0.20]])  # what the loss reports as each object's IoU

    class ScriptedIou(SamLoss):
        def forward(self, logits, iou_pred, targets):
            out = super().forward(logits, iou_pred, targets)
            seen_targets.append(targets.clone())
            ious = torch.tensor(next(fake))
            out["true_iou"] = ious
            out["candidate_iou"] = ious[:, None].expand_as(out["candidate_iou"]).clone()
            return out

    seen_targets: list[torch.Tensor] = []
    cfg = settings("sam", box_prob=0.0, correction_rounds=2, mask_only_rounds=0, mask_only_random=False,
                   stop_iou=0.9)
    out = training_losses(model, batch_of_four(), cfg, ScriptedIou(), np.random.default_rng(2), "low_res")
    assert decoded == [4, 2, 1]  # objects 0 and 2 leave after round 1, object 3 (0.91) after round 2
    full = seen_targets[0]
    assert torch.equal(seen_targets[1], full[[1, 3]]) and torch.equal(seen_targets[2], full[[1]])
    # each object counts with its IoU in the last round it took part in
    assert out["miou_last_round"].item() == pytest.approx(np.mean([0.95, 0.20, 0.92, 0.91]))


@pytest.mark.parametrize("next_mask", ["lowest_loss", "most_confident"])
def test_the_next_round_gets_the_candidate_that_next_mask_names(monkeypatch, next_mask):
    """After a multimask first click, the next round's mask input is the lowest-loss candidate's logits or the
    most confident one's (the highest predicted IoU, as the SAM paper and the evaluation pick it)."""
    model = tiny_model()
    gts = batch_of_four()["masks"]
    h = model.prompt_encoder.mask_input_size[0]
    target = F.interpolate(gts.float()[:, None], (h, h), mode="area")[:, 0]
    # candidate 0: the object itself (lowest loss), 1: nothing, 2: everything; the model is most confident of 2
    first = torch.stack([target * 20 - 10, torch.full_like(target, -10.0), torch.full_like(target, 10.0)], dim=1)
    confidence = torch.tensor([[0.2, 0.1, 0.9]]).expand(4, 3).clone()
    seen: list = []
    original = step_module._decode_once

    def scripted(model, embeddings, points, boxes, mask_input, multimask, image_pe):
        seen.append(None if mask_input is None else mask_input.detach().clone())
        low_res, iou = original(model, embeddings, points, boxes, mask_input, multimask, image_pe)
        if len(seen) == 1:
            return low_res + (first - low_res).detach(), iou + (confidence - iou).detach()
        return low_res, iou

    monkeypatch.setattr(step_module, "_decode_once", scripted)
    cfg = settings("sam", box_prob=0.0, correction_rounds=1, mask_only_rounds=0, mask_only_random=False,
                   next_mask=next_mask)
    training_losses(model, batch_of_four(), cfg, SamLoss(), np.random.default_rng(0), "low_res")
    assert len(seen) == 2 and seen[0] is None
    expected = first[:, 0] if next_mask == "lowest_loss" else first[:, 2]
    torch.testing.assert_close(seen[1][:, 0], expected)


def test_round_survivors_keep_exactly_the_objects_below_the_target_and_cap_after_the_first():
    ious = np.array([0.95, 0.2, 0.9, 0.89, 0.0])
    rng = np.random.default_rng(0)
    assert round_survivors(ious, settings("sam", stop_iou=0.9), False, rng).tolist() == [1, 3, 4]
    assert round_survivors(ious, settings("sam"), True, rng).tolist() == [0, 1, 2, 3, 4]  # off: all stay
    capped = {tuple(round_survivors(ious, settings("sam", stop_iou=0.9, round_objects=2), True, rng))
              for _ in range(30)}
    assert all(len(c) == 2 and set(c) <= {1, 3, 4} and list(c) == sorted(c) for c in capped) and len(capped) == 3
    assert round_survivors(ious, settings("sam", round_objects=2), False, rng).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match=r"one IoU per object \(1-D\), got shape \(1, 5\)"):
        round_survivors(ious[None], settings("sam"), False, rng)


# -- the schedules


@pytest.mark.parametrize("name, expected", [
    ("default", [True, True, True, False]),
    ("medsam", [True]),
    ("box_points", [True]),
    ("seed000", [True]),
])
def test_each_recipes_fixed_round_schedule_is_unchanged(name, expected):
    cfg = settings(name)
    for seed in range(5):
        rng, untouched = np.random.default_rng(seed), np.random.default_rng(seed)
        rounds = round_schedule(cfg, rng)
        assert rounds == expected
        assert loss_rounds(cfg, rounds, rng) == [True] * len(expected)  # every round back-propagates
        assert rng.random() == untouched.random()  # no draw: the rest of the step is as before


def test_sam_fast_has_fewer_rounds_of_the_same_kinds_and_backpropagates_three():
    sam, fast = settings("sam"), settings("sam_fast")
    cheap_keys = ("loss_rounds", "stop_iou", "round_objects")
    assert [RECIPES["sam"][k] for k in cheap_keys] == [-1, 0.0, 0]  # the paper's recipe: every round, every object
    assert [RECIPES["sam_fast"][k] for k in cheap_keys] == [2, 0.9, 8]
    same = {k: v for k, v in RECIPES["sam"].items() if k not in (*cheap_keys, "correction_rounds", "mask_only_rounds")}
    assert {k: RECIPES["sam_fast"][k] for k in same} == same  # the same first prompts and multimask rule
    inner, picked = set(), set()
    for seed in range(30):
        assert loss_rounds(sam, round_schedule(sam, np.random.default_rng(seed)), np.random.default_rng(0)) == \
            [True] * 11
        rounds = round_schedule(fast, np.random.default_rng(seed))
        assert len(rounds) == 7 and rounds.count(True) == 6 and rounds[0] and rounds[-1]  # first + 5 clicks
        inner.add(rounds.index(False))  # the one mask-only round, just before a click round
        chosen = loss_rounds(fast, rounds, np.random.default_rng(seed))
        assert chosen.count(True) == 3 and chosen[0] and chosen[-1]
        picked.add(chosen.index(True, 1))
    assert inner == {1, 2, 3, 4, 5} and len(picked) >= 4  # both drawn among the rounds between


@pytest.mark.parametrize("overrides, match", [
    (["prompts.stop_iou=1.5"], r"prompts.stop_iou must be a finite number in \[0, 1\], got 1.5"),
    (["prompts.loss_rounds=-2"], r"prompts.loss_rounds must be a finite number >= -1, got -2"),
    (["prompts.round_objects=-1"], r"prompts.round_objects must be a finite number >= 0, got -1"),
    (["prompts.loss_rounds=two"], r"prompts\.loss_rounds"),
    (["prompts.next_mask=best"],
     r"prompts.next_mask must be one of \('lowest_loss', 'most_confident'\), got 'best'"),
])
def test_bad_cheap_round_settings_are_named(overrides, match):
    with pytest.raises(ValueError, match=match):
        load_config(None, overrides)
