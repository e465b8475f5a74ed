"""SAM 2 training on clips: the loss's rules, prompt sampling, and the training forward on a shrunk SAM 2.1 tiny."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sam2_oracle import SMALL_OVERRIDES

from samforge.models.sam2 import build_sam2
from samforge.train.sam2_losses import MultiStepMultiMaskLoss
from samforge.train.sam2_step import Sam2PromptConfig, Sam2TrainingForward, sample_box_points, sample_error_points

pytestmark = pytest.mark.usefixtures("one_thread")
S = 256  # the shrunk model's input size


def disk_clip(num_frames: int, num_clips: int = 1, seed: int = 0) -> dict:
    """Clips of a bright disk moving right on a dark noisy background, the disk as the one object per clip."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:S, :S]
    frames = torch.zeros(num_frames, num_clips, 3, S, S)
    masks = torch.zeros(num_frames, num_clips, S, S, dtype=torch.bool)
    for b in range(num_clips):
        for t in range(num_frames):
            m = (xx - (80 + 12 * t + 20 * b)) ** 2 + (yy - 120) ** 2 < 40**2
            img = rng.normal(-1.0, 0.2, (3, S, S))
            img[:, m] = 1.5
            frames[t, b] = torch.from_numpy(img).float()
            masks[t, b] = torch.from_numpy(m)
    return {"frames": frames, "masks": masks, "obj_to_clip": torch.arange(num_clips), "names": ["disk"] * num_clips}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_sam2("sam2.1_hiera_t", device="cpu", mode="train", hydra_overrides_extra=list(SMALL_OVERRIDES))
    return m


def test_loss_picks_the_best_candidate_and_gates_absent_objects():
    loss = MultiStepMultiMaskLoss()
    target = torch.zeros(1, 2, 8, 8)
    target[0, 0, 2:6, 2:6] = 1  # object 0 present, object 1 absent
    good = target[0, 0] * 20 - 10
    logits = torch.stack([torch.stack([-good, good, torch.zeros(8, 8)]), torch.full((3, 8, 8), -10.0)])
    out = {"multistep_pred_multimasks": [logits], "multistep_pred_ious": [torch.tensor([[0.0, 1.0, 0.5], [0.2, 0.2, 0.2]])],
           "multistep_object_score_logits": [torch.tensor([[10.0], [-10.0]])]}
    res = loss([out], target)
    # the best candidate (1) is exact: its focal and dice are ~0; object 1 adds nothing to mask/dice/iou
    assert res["focal"] < 1e-6 and res["dice"] < 0.05
    # IoU head, all candidates supervised (L1): |0-0| + |1-1| + |0.5-0| over 3, for object 0 only, over 2 objects
    assert abs(float(res["iou"]) - (0.5 / 3) / 2) < 1e-6
    assert res["class"] < 1e-3  # both object scores are right
    worse = {**out, "multistep_object_score_logits": [torch.tensor([[-10.0], [10.0]])]}
    assert loss([worse], target)["class"] > 5
    two_steps = {k: v * 2 for k, v in out.items()}
    assert torch.allclose(loss([two_steps], target)["loss"], 2 * res["loss"])


def test_error_points_and_boxes():
    gen = torch.Generator().manual_seed(0)
    gt = torch.zeros(3, 20, 20, dtype=torch.bool)
    gt[:, 5:15, 5:15] = True
    pred = gt.clone()
    pred[0, 5:15, 5:10] = False  # object 0: a missed part -> a positive click there
    pred[1, 0:3, 0:3] = True  # object 1: a false positive -> a negative click there
    pts, labels = sample_error_points(gt, pred, gen)  # object 2 exact -> a background point
    assert labels.tolist() == [[1], [0], [0]]
    (x0, y0), (x1, y1), (x2, y2) = pts[:, 0].long().tolist()
    assert 5 <= x0 < 10 and 5 <= y0 < 15 and x1 < 3 and y1 < 3 and not gt[2, y2, x2]
    first, first_labels = sample_error_points(gt, None, gen)
    assert first_labels.eq(1).all() and all(gt[i, int(y), int(x)] for i, (x, y) in enumerate(first[:, 0].tolist()))
    box, box_labels = sample_box_points(gt, gen, noise=0.1, max_noise=20)
    assert box_labels.tolist() == [[2, 3]] * 3
    assert (box - torch.tensor([[5.0, 5.0], [14.0, 14.0]])).abs().max() <= 0.9 + 1e-6  # 10% of the 9-px side


def test_prompt_config_is_checked():
    with pytest.raises(ValueError, match="prob_point"):
        Sam2PromptConfig(prob_point=1.5)
    with pytest.raises(ValueError, match="num_frames_to_correct"):
        Sam2PromptConfig(num_frames_to_correct=1, num_init_cond_frames=2)


@pytest.mark.parametrize("num_frames", [1, 3])
def test_training_forward_backpropagates_into_the_parts_it_uses(model, num_frames):
    forward = Sam2TrainingForward(model, MultiStepMultiMaskLoss(),
                                  Sam2PromptConfig(prob_point=1.0, num_correction_points=2))
    model.zero_grad()
    out = forward(disk_clip(num_frames, num_clips=2), np.random.default_rng(0))
    assert set(out) == {"loss", "focal", "dice", "iou", "class", "miou_last_round"}
    assert torch.isfinite(out["loss"]) and out["loss"].requires_grad
    out["loss"].backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(n.startswith("image_encoder.") for n in grads)
    assert any(n.startswith("sam_mask_decoder.") for n in grads)
    used_memory = any(n.startswith("memory_attention.") for n in grads)
    assert used_memory == (num_frames > 1)  # a one-frame clip never reads memory


def test_mask_prompts_and_memory_path(model):
    """With mask prompts (prob_point 0) the prompted frame's mask is the output (SAM 2.1 sets
    use_mask_input_as_output_without_sam), so its loss is ~0, and later frames come from memory."""
    forward = Sam2TrainingForward(model, MultiStepMultiMaskLoss(),
                                  Sam2PromptConfig(prob_point=0.0, num_init_cond_frames=1, num_frames_to_correct=1))
    clip = disk_clip(4)
    out = forward(clip, np.random.default_rng(1))
    out["loss"].backward()
    assert model.memory_encoder.out_proj.weight.grad is not None


def test_gating_off_lets_the_mask_loss_reach_objects_called_absent():
    """An object-score head that calls every object absent (as a fresh model does for many): with the official
    gating the masks are NO_OBJ_SCORE and the mask-only loss gives the decoder's mask path no gradient; with
    ``gate_masks_in_training = False`` it does, and evaluation still gates."""
    torch.manual_seed(0)
    m = build_sam2("sam2.1_hiera_t", device="cpu", mode="train", hydra_overrides_extra=list(SMALL_OVERRIDES))
    with torch.no_grad():
        m.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(-50.0)  # "absent", whatever the features
    forward = Sam2TrainingForward(m, MultiStepMultiMaskLoss(class_weight=0.0),
                                  Sam2PromptConfig(prob_point=1.0, num_correction_points=1))
    clip = disk_clip(1)
    grads = {}
    for gate in (True, False):
        m.gate_masks_in_training = gate
        m.zero_grad()
        out = forward(clip, np.random.default_rng(0))
        assert out["focal"] > 0
        if out["loss"].requires_grad:
            out["loss"].backward()
        grads[gate] = sum(float(p.grad.abs().sum()) for p in m.sam_mask_decoder.output_hypernetworks_mlps.parameters()
                          if p.grad is not None)
    assert grads[True] == 0.0 and grads[False] > 0.0
    m.eval()  # inference is gated whatever the training switch says
    with torch.no_grad():
        batch = disk_clip(1)
        feats = m.forward_image(batch["frames"][0])
        _, vision, _, sizes = m._prepare_backbone_features(feats)
        h, w = sizes[-1]
        pix = vision[-1].permute(1, 2, 0).view(1, -1, h, w)
        high = [x.permute(1, 2, 0).view(1, x.size(2), *sz) for x, sz in zip(vision[:-1], sizes[:-1])]
        low = m._forward_sam_heads(pix, {"point_coords": torch.tensor([[[120.0, 100.0]]]),
                                         "point_labels": torch.tensor([[1]], dtype=torch.int32)},
                                   high_res_features=high)[0]
    assert torch.all(low == -1024.0)


def test_a_few_steps_fit_one_clip(model):
    """The loss goes down when a clip is trained on repeatedly (the forward is trainable end to end)."""
    torch.manual_seed(0)
    m = build_sam2("sam2.1_hiera_t", device="cpu", mode="train", hydra_overrides_extra=list(SMALL_OVERRIDES))
    forward = Sam2TrainingForward(m, MultiStepMultiMaskLoss(), Sam2PromptConfig(prob_point=1.0, num_correction_points=1))
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
    clip = disk_clip(2)
    losses = []
    for step in range(6):
        out = forward(clip, np.random.default_rng(step))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    assert min(losses[-2:]) < losses[0]


def test_bad_batches(model):
    forward = Sam2TrainingForward(model, MultiStepMultiMaskLoss())
    clip = disk_clip(2)
    with pytest.raises(ValueError, match="T x B x 3"):
        forward({**clip, "masks": clip["masks"][:1]}, np.random.default_rng(0))
    with pytest.raises(ValueError, match="no object"):
        forward({**clip, "masks": clip["masks"][:, :0], "obj_to_clip": torch.zeros(0, dtype=torch.long)},
                np.random.default_rng(0))
    with pytest.raises(ValueError, match="loss_resolution"):
        forward(clip, np.random.default_rng(0), loss_resolution="full")
    with pytest.raises(TypeError, match="SAM2Base"):
        Sam2TrainingForward(object(), MultiStepMultiMaskLoss())


def test_finetune_modes_and_lora_on_hiera(tmp_path):
    from samforge.models.lora import has_lora, merge_lora
    from samforge.train.adapter_file import load_adapter, save_adapter, weights_fingerprint
    from samforge.train.config import FinetuneConfig
    from samforge.train.finetune import apply_finetune

    def fresh():
        torch.manual_seed(0)
        return build_sam2("sam2.1_hiera_t", device="cpu", mode="eval", hydra_overrides_extra=list(SMALL_OVERRIDES))

    clip = disk_clip(1)
    image = clip["frames"][0]

    def masks(m):
        with torch.no_grad():
            feats = m.forward_image(image)["backbone_fpn"]
        return feats

    m = fresh()
    plan = apply_finetune(m, FinetuneConfig(mode="decoder"))
    trainable = {n.split(".")[0] for n, p in m.named_parameters() if p.requires_grad}
    assert "image_encoder" not in trainable and "sam_prompt_encoder" not in trainable
    assert {"sam_mask_decoder", "memory_attention", "memory_encoder"} <= trainable
    m = fresh()
    apply_finetune(m, FinetuneConfig(mode="decoder", freeze_memory=True))
    assert not any(p.requires_grad for n, p in m.named_parameters() if n.startswith(("memory_", "maskmem_tpos")))

    base = fresh()
    fingerprint = weights_fingerprint(base)
    before = masks(base)
    plan = apply_finetune(base, FinetuneConfig(mode="lora", rank=2, alpha=2))
    assert has_lora(base) and plan.trainable < plan.total
    n_blocks = len(base.image_encoder.trunk.blocks)
    assert sum(1 for n, p in base.named_parameters() if "lora_A" in n) == 2 * n_blocks  # Q and V of every block
    assert all(torch.equal(a, b) for a, b in zip(before, masks(base)))  # B = 0: unchanged at the start
    with torch.no_grad():
        for n, p in base.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    adapted = masks(base)
    assert not all(torch.equal(a, b) for a, b in zip(before, adapted))
    path = save_adapter(tmp_path / "a.safetensors", base, plan.lora, fingerprint, "sam2.1_hiera_t", plan.trained_prefixes)
    other = fresh()
    load_adapter(other, path)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(adapted, masks(other)))
    merged = masks(merge_lora(other))
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(adapted, merged))


def test_all_frames_prompted_with_masks_still_backpropagates(model):
    """Mask prompts on every frame of a 2-frame clip (both are conditioning frames): SAM 2.1 outputs the masks as
    they are, so no mask loss has a gradient; the step must still be a valid backward (zero update)."""
    forward = Sam2TrainingForward(model, MultiStepMultiMaskLoss(), Sam2PromptConfig(
        prob_point=0.0, num_init_cond_frames=2, rand_init_cond_frames=False, num_frames_to_correct=2))
    out = forward(disk_clip(2), np.random.default_rng(0))
    assert out["loss"].requires_grad
    out["loss"].backward()


def test_learned_weighting_combines_the_sam2_loss_terms(model):
    from samforge.train.config import load_config
    from samforge.train.task import Sam2Task

    target = torch.zeros(1, 2, 8, 8)
    target[0, 0, 2:6, 2:6] = 1
    out = {"multistep_pred_multimasks": [torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))],
           "multistep_pred_ious": [torch.tensor([[0.3, 0.6, 0.1], [0.2, 0.2, 0.2]])],
           "multistep_object_score_logits": [torch.tensor([[1.0], [0.5]])]}
    fixed, learned = MultiStepMultiMaskLoss(), MultiStepMultiMaskLoss(learned_weighting=True)
    assert learned.learned_terms == ("focal", "dice", "iou", "class") and fixed.weighting is None
    ref = fixed([out], target)
    assert torch.allclose(learned([out], target)["loss"], ref["loss"])  # log-variances start at 0: weight 1
    with torch.no_grad():
        learned.weighting.log_vars.copy_(torch.tensor([1.0, 0.0, -1.0, 0.5]))
    res = learned([out], target)
    terms = torch.stack([20 * ref["focal"], ref["dice"], ref["iou"], ref["class"]])
    s = learned.weighting.log_vars.detach()
    assert torch.allclose(res["loss"], (torch.exp(-s) * terms + s).sum())
    res["loss"].backward()
    assert learned.weighting.log_vars.grad.abs().sum() > 0  # the weights learn
    no_class = MultiStepMultiMaskLoss(class_weight=0.0, learned_weighting=True)
    assert no_class.learned_terms == ("focal", "dice", "iou")
    with pytest.raises(ValueError, match="learned_weighting needs at least one loss term"):
        MultiStepMultiMaskLoss(0.0, 0.0, 0.0, 0.0, learned_weighting=True)
    # the trainer's SAM 2 task builds it from loss.learned_weighting, so its weights reach the optimizer
    cfg = load_config(None, ["model.type=sam2.1_hiera_t", "loss.learned_weighting=true"])
    forward = Sam2Task(cfg).training_forward(model, "fp32", None, torch.device("cpu"))
    assert forward.loss_fn.weighting is not None
    assert any(p is forward.loss_fn.weighting.log_vars for p in forward.parameters())
